"""Every registered strategy, `flwr run` on Flower's simulation engine with a tiny config."""

import json
import math
from functools import partial

import pytest
import torch

from deploy.simulation import flwr_run, run_directory, simulation_superlink
from server_app.strategies import STRATEGIES
from tests.runs import ACTORS, run_all

pytestmark = pytest.mark.e2e

NODES = 4
TINY = {
    "num-student-rounds": 2,
    "fraction-train": 0.75,
    "local-epochs": 2,
    "partitioner": "iid",
    "output-dir": None,
}
# Every registered strategy runs here, with the settings it is tested under, except those whose runs lie in
# tests/test_end_to_end.py, two-stage (its main run) and fedavg (the misbehaving clients' run), and FedAvgM and
# FedAdam: FedAvg's exchange with Flower's server optimiser applied to the average, which
# tests/server_app/strategies tests per architecture, through a checkpoint and against torch's optimisers.
ELSEWHERE = {"two-stage", "fedavg", "fedavgm", "fedadam"}
SETTINGS = {
    "fedmd": {"models": "mlp-32,cnn", "fedmd.logits-dtype": "float16", "fedmd.public-samples-per-round": 100},
    "feddf": {"models": "mlp-32,cnn", "feddf.distill-steps": 40},
    "fedprox": {"models": "mlp-32,cnn", "fedprox.proximal-mu": 0.1},
    "fedgen": {"models": "mlp-32,cnn"},
    "feddf-datafree": {"models": "mlp-32,cnn", "feddf-datafree.distill-steps": 30},
}
CASES = {
    **{name: {"strategy": name, **SETTINGS.get(name, {})} for name in STRATEGIES if name not in ELSEWHERE},
    "ensemble-teacher": {
        "strategy": "two-stage",
        "two-stage.ensemble-teacher": True,
        "two-stage.num-teacher-rounds": 2,
        "two-stage.distill-steps": 40,
        "two-stage.distill-learning-rate": 0.01,
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directory and history of every case, all on one simulation SuperLink, several at once (tests/runs.py)."""
    directories = {name: tmp_path_factory.mktemp(name) for name in CASES}
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as env:
        finished = run_all(
            {
                name: partial(
                    flwr_run, env, {**TINY, **case, "output-dir": str(directories[name])}, NODES, actors=ACTORS
                )
                for name, case in CASES.items()
            }
        )
    out = {}
    for name, done in finished.items():
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        run_dir = run_directory(directories[name])
        out[name] = run_dir, json.loads((run_dir / "history.json").read_text())
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_every_strategy_learns_and_records_complete_outputs(runs, name):
    run_dir, history = runs[name]
    student = [r for r in history if r["phase"] == "student"]
    assert [r["round"] for r in student] == [1, 2]
    assert all(r["replies"] == 3 and r["failures"] == 0 and r["bytes_down"] > 0 and r["bytes_up"] > 0 for r in student)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["strategy"] == CASES[name]["strategy"]
    assert summary["bytes_total"] == sum(r["bytes_down"] + r["bytes_up"] for r in history)
    # 10 classes: chance is 0.1; every architecture learned.
    assert min(summary["student_accuracy_by_model"].values()) > 0.3
    assert summary["student_accuracy"] == pytest.approx(
        sum(student[-1]["accuracy_by_model"].values()) / len(student[-1]["accuracy_by_model"])
    )
    assert (run_dir / "history.png").stat().st_size > 10_000


@pytest.mark.parametrize("name", ["feddf", "feddf-datafree", "fedmd", "fedprox", "fedgen"])
def test_heterogeneous_runs_report_every_architecture(runs, name):
    run_dir, history = runs[name]
    assert set(history[-1]["accuracy_by_model"]) == {"mlp-32", "cnn"}
    saved = sorted(p.name for p in run_dir.glob("*.pt") if p.name != "checkpoint.pt")
    # FedMD's models never leave the nodes; the others keep one global model per architecture.
    assert saved == ([] if name == "fedmd" else ["student-cnn.pt", "student-mlp-32.pt"])
    if name == "feddf":
        assert sum(t.numel() for t in torch.load(run_dir / "student-cnn.pt", weights_only=True).values()) == 6_090


def as_sent(message):
    """`message` with the task the loop adds to every message it sends."""
    from common.data import builtin_task
    from common.protocol import CONFIG

    message.content[CONFIG].update(builtin_task("digits").to_config())
    return message


def test_fedmd_sends_logits_not_weights_and_float16_halves_them(runs, task_identity):
    from flwr.app import ConfigRecord, Message, RecordDict

    from common.protocol import CONFIG
    from server_app.transport import record_bytes

    bare = Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=0, message_type="train")
    task_bytes = record_bytes(as_sent(bare).content) - record_bytes(RecordDict({CONFIG: ConfigRecord()}))
    _, history = runs["fedmd"]
    for r in history:
        # Up: 3 nodes x (float16 logits on 100 public samples + on the 360 server-test inputs), 2 bytes each.
        payload = 3 * (100 + 360) * 10 * 2
        assert payload < r["bytes_up"] < payload * 1.1
        # Down: the float16 consensus to 3 nodes with its query, each message carrying the task.
        down = r["bytes_down"] - 3 * task_bytes
        assert 3 * 100 * 10 * 2 < down < 3 * 100 * 10 * 2 * 1.5


def test_server_side_distillation_runs_to_its_strategy_budget(runs):
    # Both patiences (50 and 20 validations) outlast these budgets, so every group uses all its steps.
    for name, budget in (("feddf", 40), ("feddf-datafree", 30), ("ensemble-teacher", 40)):
        steps = [r["metrics"]["distill-steps"] for r in runs[name][1] if r["phase"] == "student"]
        assert steps == [budget] * 2, (name, steps)


def test_history_shows_server_distillation_never_worsening_its_validation_score(runs):
    for name in ("feddf", "feddf-datafree", "ensemble-teacher"):
        student = [r for r in runs[name][1] if r["phase"] == "student"]
        scores = [(r["metrics"]["distill-validation-start"], r["metrics"]["distill-validation-best"]) for r in student]
        assert len(scores) == 2 and all(0 <= best <= start for start, best in scores), (name, scores)
    # FedDF and two-stage score by the error on labelled public samples: a rate.
    for name in ("feddf", "ensemble-teacher"):
        assert all(r["metrics"]["distill-validation-start"] <= 1 for r in runs[name][1] if r["phase"] == "student")


def test_the_ensemble_teacher_phase_sends_the_teacher_once_and_no_student_weights_up(runs):
    _, history = runs["ensemble-teacher"]
    student = [r for r in history if r["phase"] == "student"]
    teacher_round_up = history[0]["bytes_up"]  # 3 teacher models
    # Phase 2 replies are logits on the public data (180 x 10 float32), far smaller than models.
    assert all(r["bytes_up"] < teacher_round_up / 4 for r in student)
    # The teacher goes to each node reached in phase 2 exactly once; the rest is queries and the
    # final evaluation of the student (4 nodes x 2,410 float32 parameters).
    teacher_bytes = history[0]["bytes_up"] / 3
    reached = {name for r in student for name in r["sampled"]}
    down = sum(r["bytes_down"] for r in student)
    assert len(reached) * teacher_bytes < down < len(reached) * teacher_bytes + 60_000


def test_feddf_datafree_checks_each_server_step_with_the_nodes_that_did_not_train(runs, task_identity):
    from common.models import build_model, to_record
    from server_app.strategies.kit.evaluation import evaluate_message
    from server_app.transport import record_bytes

    _, history = runs["feddf-datafree"]
    _, feddf = runs["feddf"]
    student = [r for r in history if r["phase"] == "student"]
    assert all(set(r["metrics"]["distill-kept"]) == {"mlp-32", "cnn"} for r in student)
    assert all(isinstance(kept, bool) for r in student for kept in r["metrics"]["distill-kept"].values())
    assert all("distill-kept" not in r["metrics"] for r in feddf)
    # The same nodes as FedDF's first round get their model to train; then each group's FedAvg and distilled
    # models go to the group's node that did not train (3 of 4 train), or, for the other group, to its nodes
    # that did. Partitions alternate mlp-32 and cnn.
    assert student[0]["sampled"] == feddf[0]["sampled"]
    arch = {f"partition-{i}": ("mlp-32", "cnn")[i % 2] for i in range(NODES)}
    (held_out,) = set(arch) - set(student[0]["sampled"])
    judges = [n for n in arch if n == held_out or (arch[n] != arch[held_out] and n in student[0]["sampled"])]
    check = sum(
        2 * record_bytes(as_sent(evaluate_message(0, arch[n], to_record(build_model(arch[n], "digits")))).content)
        for n in judges
    )
    assert student[0]["bytes_down"] - feddf[0]["bytes_down"] == check


def test_the_strategies_that_train_a_generator_record_its_loss_every_round(runs):
    for name in ("feddf-datafree", "fedgen"):
        losses = [r["metrics"]["generator-loss"] for r in runs[name][1] if r["phase"] == "student"]
        # Negative log-likelihood plus the diversity loss exp(-x) (feddf-datafree), or weighted cross-entropy
        # plus it (fedgen): positive, and for a 10-class task below the NLL of a uniform guess plus 1.
        assert len(losses) == 2 and all(0 < loss < math.log(10) + 1 for loss in losses), (name, losses)
    assert all("generator-loss" not in r["metrics"] for r in runs["feddf"][1])


def test_fedgen_sends_each_node_the_generator_for_its_feature_width_from_round_two(runs):
    from common.feature_generator import HIDDEN, NOISE_DIM
    from common.models import build_model, count_params

    _, history = runs["fedgen"]
    # Partitions alternate mlp-32 (feature width 32) and cnn (width 128); 10 classes on digits.
    width = {"mlp-32": 32, "cnn": 128}
    arch = {f"partition-{i}": ("mlp-32", "cnn")[i % 2] for i in range(NODES)}
    params = {name: count_params(build_model(name, "digits")) for name in width}
    generator = {name: (NOISE_DIM + 10) * HIDDEN + HIDDEN + (HIDDEN + 1) * w for name, w in width.items()}

    def arrays_down(r, with_generator):
        """float32 bytes sent: each sampled node's model (and generator part); the last round's evaluation."""
        train = sum(4 * (params[arch[n]] + (generator[arch[n]] if with_generator else 0)) for n in r["sampled"])
        return train + (4 * sum(params[a] for a in arch.values()) if r.get("evaluation_replies") else 0)

    first, second = (r for r in history if r["phase"] == "student")
    # Beyond the arrays, each message (3 to train, and 4 to evaluate after the last round) carries names and config.
    assert 0 < first["bytes_down"] - arrays_down(first, False) < 3 * 2_000
    assert second["evaluation_replies"] == NODES
    assert 0 < second["bytes_down"] - arrays_down(second, True) < 7 * 2_000
