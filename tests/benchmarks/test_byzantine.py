"""The Byzantine benchmark's pieces: its matrix and run configs, the claim that its plain FedAvg is Flower's FedAvg,
the in-process Grid, the attackers of tests/byzantine_app, and the report on hand-made rows."""

import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from benchmarks.byzantine import (
    CORE,
    COUNT_WEIGHTED,
    FEDMD,
    HONEST,
    SETTINGS,
    WEIGHT_ATTACKS,
    LocalGrid,
    conditions,
    fused_config,
    report,
    run_config,
)
from common.config import parse_run_config
from common.data import builtin_task
from common.models import initial_model, to_record
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_INCOMING,
    METRICS,
    MODEL,
    NUM_EXAMPLES,
    SERVER_ROUND,
    TRAIN_SUPERVISED,
)
from server_app.round import Reply
from server_app.strategies.kit.averaging import Robustness, grouped_average
from tests.byzantine_app import byzantine, pyproject
from tests.server_app.helpers import trained, values, weights


def test_the_matrix_runs_the_most_telling_cells_first_and_each_once():
    found = conditions()
    assert len(found) == len(set(found))
    # The honest runs of every FedAvg setting; then 2, then 1 attacker against no defence, the defaults, the median.
    assert found[: len(SETTINGS)] == [(HONEST, 0, s) for s in SETTINGS]
    core = found[len(SETTINGS) : found.index((HONEST, 0, FEDMD))]
    assert [k for _, k, _ in core] == sorted((k for _, k, _ in core), reverse=True)
    assert {s for _, _, s in core} == set(CORE) and {a for a, _, _ in core} == set(WEIGHT_ATTACKS)
    # FedMD against extreme logits, then the other aggregators; honest weights claiming many examples meet only
    # the settings that weigh replies by their counts.
    assert found[found.index((HONEST, 0, FEDMD)) + 1 :][:2] == [
        ("extreme_logits", 2, FEDMD),
        ("extreme_logits", 1, FEDMD),
    ]
    assert {s for a, _, s in found if a == "lying_counts"} == set(COUNT_WEIGHTED)
    weights = {(a, k, s) for a, k, s in found if a in WEIGHT_ATTACKS}
    assert weights == {
        (a, k, s)
        for a in WEIGHT_ATTACKS
        for k in (1, 2)
        for s in SETTINGS
        if a != "lying_counts" or s in COUNT_WEIGHTED
    }


def test_run_configs_are_valid_and_plain_fedavg_turns_both_defences_off():
    plain = parse_run_config(fused_config(run_config("digits", "plain FedAvg", 43, 3, 2)))
    assert (plain.strategy, plain.seed, plain.num_student_rounds, plain.local_epochs) == ("fedavg", 43, 3, 2)
    assert plain.fraction_train == 1.0 and plain.max_weight_share == 1.0 and plain.clip_median_multiple == 0.0
    defaults = parse_run_config(fused_config(run_config("mnist5k", "fedkd defaults", 42, 3, 2)))
    assert (defaults.aggregator, defaults.max_weight_share, defaults.clip_median_multiple) == ("mean", 0.5, 3.0)
    bulyan = parse_run_config(fused_config(run_config("digits", "bulyan", 42, 3, 2)))
    assert (bulyan.aggregator, bulyan.aggregator_malicious) == ("bulyan", 1)
    fedmd = fused_config(run_config("digits", FEDMD, 42, 3, 2))
    assert fedmd["strategy"] == "fedmd" and fedmd["fedmd.digest-epochs"] == 2


def test_plain_fedavg_settings_aggregate_as_flowers_fedavg(task_identity):
    """What lets the benchmark call fedkd's `max-weight-share = 1`, `clip-median-multiple = 0` Flower's FedAvg."""
    cfg = parse_run_config(fused_config(run_config("digits", "plain FedAvg", 42, 3, 2)))
    claims = [(0.5, 10), (2.0, 30), (900.0, 10**6)]
    replies = [Reply(n, n, trained([v, -v], count)) for n, (v, count) in enumerate(claims)]
    ours, counts = grouped_average({"mlp-32": weights(0, 0)}, replies, lambda node: "mlp-32", Robustness.of(cfg))
    messages = [Message(r.content, dst_node_id=r.node, message_type=MessageType.TRAIN) for r in replies]
    flowers, _ = FedAvg().aggregate_train(1, messages)
    np.testing.assert_allclose(values(ours["mlp-32"]), values(flowers), rtol=1e-6)
    assert counts["clipped-updates"] == 0


def _answer(message: Message, context: Context) -> Message:
    """A node that counts the messages it has seen in its state, and fails where the message says so."""
    if message.content[CONFIG]["fail"]:
        raise RuntimeError("broken node")
    seen = context.state["seen"]["n"] + 1 if "seen" in context.state else 1
    context.state["seen"] = ConfigRecord({"n": seen})
    partition = int(context.node_config["partition-id"])
    return Message(RecordDict({METRICS: MetricRecord({"partition": partition, "seen": seen})}), reply_to=message)


def test_the_local_grid_serves_each_node_from_its_own_context_as_flower_would(task_identity):
    grid = LocalGrid(_answer, {}, nodes=3)
    assert grid.get_node_ids() == [1000, 1001, 1002]
    sent = [
        Message(RecordDict({CONFIG: ConfigRecord({"fail": node == 1002})}), dst_node_id=node, message_type="query.x")
        for node in (1000, 1001, 1002, 1000)
    ]
    ids = grid.push_messages(sent)
    replies = grid.pull_messages(ids)
    assert [r.metadata.reply_to_message_id for r in replies] == ids
    ok = [r.content[METRICS] for r in replies if not r.has_error()]
    # Partition i on node 1000 + i; a node's context, and its state, last across messages.
    assert [(m["partition"], m["seen"]) for m in ok] == [(0, 1), (1, 1), (0, 2)]
    assert replies[2].has_error() and "RuntimeError: broken node" in replies[2].error.reason
    # The node read a copy, as from the wire: the server's message is not the node's.
    assert replies[0].content is not sent[0].content


def _train_message(model: ArrayRecord) -> Message:
    # What the ServerApp sends with every message: the task, besides the round and the model.
    task = builtin_task("digits").to_config()
    config = ConfigRecord({SERVER_ROUND: 1, EVALUATE_INCOMING: False, MODEL: "mlp-32", **task})
    message = Message(RecordDict({ARRAYS: model, CONFIG: config}), dst_node_id=1, message_type=TRAIN_SUPERVISED)
    message.metadata.__dict__["_message_id"] = "m"
    return message


def _context(partition: int, run_config: dict) -> Context:
    node_config = {"partition-id": partition, "num-partitions": 10}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)


@pytest.fixture(scope="module")
def run_config_():
    return fused_config({"strategy": "fedavg", "local-epochs": 1})


@pytest.fixture(scope="module")
def sent():
    return to_record(initial_model("mlp-32", "digits", 42))


def _arrays(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content[ARRAYS].items()}


@pytest.fixture(scope="module")
def honest(run_config_, sent):
    """fedkd's replies of partitions 0 and 1 to the same train message: what the attackers start from."""
    # As conftest's task_identity does for one test: Flower builds messages only inside a task.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 7
    return {p: _arrays(byzantine.fedkd_app(_train_message(sent), _context(p, run_config_))) for p in (0, 1)}


def test_the_first_k_partitions_attack_and_the_others_answer_as_fedkd(task_identity, run_config_, sent, honest):
    attacker = byzantine.scaled_2(_train_message(sent), _context(1, run_config_))
    # Partition 1 trains as it honestly does, and sends 100 times its update.
    for key, got in _arrays(attacker).items():
        step = honest[1][key] - sent[key].numpy()
        np.testing.assert_allclose(got, sent[key].numpy() + 100 * step, rtol=1e-4, atol=1e-4)
    # With one attacker, partition 1 is honest.
    bystander = _arrays(byzantine.scaled_1(_train_message(sent), _context(1, run_config_)))
    assert all(np.array_equal(a, honest[1][k]) for k, a in bystander.items())


def test_each_attack_changes_what_it_says_it_does(task_identity, run_config_, sent, honest):
    most = parse_run_config(run_config_).max_num_examples
    flipped = byzantine.sign_flip_1(_train_message(sent), _context(0, run_config_))
    for key, got in _arrays(flipped).items():
        np.testing.assert_allclose(got, 2 * sent[key].numpy() - honest[0][key], rtol=1e-4, atol=1e-5)
    huge = byzantine.huge_1(_train_message(sent), _context(0, run_config_))
    assert all((a == np.float32(1e30)).all() and a.dtype == np.float32 for a in _arrays(huge).values())
    lying = byzantine.lying_counts_1(_train_message(sent), _context(0, run_config_))
    assert lying.content[METRICS][NUM_EXAMPLES] == most
    assert all(np.array_equal(a, honest[0][k]) for k, a in _arrays(lying).items())
    labels = byzantine.label_flip_1(_train_message(sent), _context(0, run_config_))
    assert labels.content[METRICS][NUM_EXAMPLES] == most
    assert not np.array_equal(_arrays(labels)["0.weight"], honest[0]["0.weight"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_extreme_logits_are_the_dtypes_largest_on_class_0_and_finite(dtype):
    logits = byzantine.extreme(np.ones((4, 10), dtype=dtype))
    assert logits.dtype == np.dtype(dtype) and np.isfinite(logits).all()
    assert (logits[:, 0] == np.finfo(dtype).max).all() and (logits[:, 1:] == 0).all()


def test_each_variant_names_its_clientapp_in_fedkds_pyproject():
    text = pyproject("huge", 2)
    assert 'clientapp = "byzantine:huge_2"' in text and 'serverapp = "server_app.app:app"' in text
    assert "[tool.flwr.app.config]" in text


def _row(attack: str, attackers: int, setting: str, seed: int, accuracy: float | None, **fields) -> dict:
    return {
        "dataset": "digits",
        "rounds": 3,
        "local_epochs": 2,
        "attack": attack,
        "attackers": attackers,
        "setting": setting,
        "seed": seed,
        "status": "complete",
        "reason": None,
        "accuracy": accuracy,
        "finite_model": True,
        "median_round_seconds": 1.0,
        "median_server_seconds": 0.1,
        "load_average": 4.0,
        **fields,
    }


def test_report_marks_aborted_runs_count_blind_cells_missing_seeds_and_points_against_plain_fedavg(tmp_path):
    rows = [
        _row(HONEST, 0, "plain FedAvg", 42, 0.80),
        _row(HONEST, 0, "plain FedAvg", 43, 0.90),
        _row(HONEST, 0, "median", 42, 0.70),
        _row(HONEST, 0, "median", 43, 0.60),
        _row("huge", 2, "plain FedAvg", 42, 0.1, status="aborted", finite_model=None),
        _row("huge", 2, "plain FedAvg", 43, 0.1, status="aborted", finite_model=None),
        _row("huge", 2, "fedkd defaults", 42, 0.85),
        _row("sign_flip", 1, "median", 42, 0.5, finite_model=False),
        _row(HONEST, 0, FEDMD, 42, 0.4),
        _row("extreme_logits", 2, FEDMD, 42, 0.3),
    ]
    path = tmp_path / "byzantine.json"
    path.write_text(json.dumps(rows))
    (tmp_path / "aggregation.json").write_text(
        json.dumps([{"dataset": "digits", "setting": "median", "params": 2410, "cpu_seconds": 0.0231}])
    )
    lines = report(path).splitlines()
    table = lines[lines.index("### digits, 3 rounds of 2 local epochs, seeds 42, 43: accuracy under attack") + 2 :]
    # Mean (std) over seeds; a run that aborted has no accuracy; a cell short of the table's seeds counts them.
    assert table[2].startswith("| honest | 0 | 0.850 (0.071) | - | 0.650 (0.071) |")
    assert table[5] == "| sign_flip | 1 | - | - | 0.500 (0.000) n1 [1] | - | - | - | - |"
    assert table[8] == "| huge | 2 | aborted a2 | 0.850 (0.000) [1] | - | - | - | - | - |"
    assert "| lying_counts | 1 | - | - | = honest | = honest | = honest | - | = honest |" in lines
    # With no attacker: points against plain FedAvg's honest mean, and the aggregation's CPU milliseconds.
    assert "| median | 0.650 (0.071) | -20.0 | 23.1 |" in lines
    assert "| plain FedAvg | 0.850 (0.071) | +0.0 | - |" in lines
    assert "| none | 0.400 (0.000) [1] |" in lines and "| 2 | 0.300 (0.000) [1] |" in lines
