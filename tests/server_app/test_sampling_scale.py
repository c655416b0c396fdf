"""A large federation through the round loop and the ServerApp's task: nodes identified as they are sampled, groups
of architectures that appear mid-run, the task from a first batch when the server has no test set, and the sampled
final evaluation's counts and standard error, against a Grid of nodes that answer at once."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from common.data import builtin_task
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE,
    METRICS,
    MODEL,
    NAME,
    NODE,
    NUM_EXAMPLES,
    QUERY_IDENTIFY,
    TRAIN_SUPERVISED,
)
from common.task import INPUT_SHAPE, NUM_CLASSES
from server_app.loop import RoundLoop
from server_app.outputs import RunDirectory
from server_app.records import RoundRecord
from server_app.round import Phase
from server_app.sampling import NodeSampler
from server_app.settings import parse
from server_app.strategies import STRATEGIES
from server_app.task import run_task

STUDENT = Phase("student", 5)


class Federation:
    """Nodes that answer at once, each with a name, an architecture, a data report and evaluation counts: identify
    replies report them, training replies send the model back unchanged, evaluate replies send the counts."""

    def __init__(
        self,
        models: dict[int, str],
        shapes: dict[int, list[int]] | None = None,
        counts: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        self.models, self.shapes, self.counts = models, shapes or {}, counts or {}
        self.sent: dict[str, Message] = {}
        # (message type, destination) of every message, in the order pushed.
        self.log: list[tuple[str, int]] = []

    def get_node_ids(self):
        return list(self.models)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = f"m{len(self.sent)}"
            self.sent[message_id] = message
            self.log.append((message.metadata.message_type, message.metadata.dst_node_id))
            ids.append(message_id)
        return ids

    def pull_messages(self, ids):
        return [Message(self.answer(self.sent[i]), reply_to=self.sent[i]) for i in ids]

    def answer(self, message: Message) -> RecordDict:
        node, kind = message.metadata.dst_node_id, message.metadata.message_type
        if kind == QUERY_IDENTIFY:
            report = {INPUT_SHAPE: self.shapes.get(node, [64]), NUM_CLASSES: 10}
            return RecordDict({NODE: ConfigRecord({NAME: f"partition-{node}", MODEL: self.models[node], **report})})
        if kind == TRAIN_SUPERVISED:
            metrics = MetricRecord({NUM_EXAMPLES: 10})
            return RecordDict({ARRAYS: message.content[ARRAYS], METRICS: metrics})
        assert kind == EVALUATE
        correct, examples = self.counts[node]
        counts = {EVAL_CORRECT: correct, EVAL_EXAMPLES: examples, EVAL_LOSS_SUM: 1.0 * examples}
        return RecordDict({METRICS: MetricRecord(counts)})

    def asked(self, kind: str) -> list[int]:
        """The nodes sent messages of `kind`, in order."""
        return [node for k, node in self.log if k == kind]


def loop_of(grid: Federation, raw: dict, tmp_path=None, identify_all_max_nodes: int = 4) -> RoundLoop:
    """A RoundLoop of FedAvg over `grid` under the run config `raw`, its sampler identifying lazily above
    `identify_all_max_nodes` nodes; with `tmp_path`, a run directory holding one record of the student phase."""
    cfg, settings = parse({"strategy": "fedavg", "round-timeout": 5, **raw})
    sampler = NodeSampler(cfg.seed, cfg.round_timeout, cfg.model, identify_all_max_nodes)
    strategy = STRATEGIES["fedavg"](cfg, settings, sampler, builtin_task(cfg.dataset))
    run_dir = None
    if tmp_path is not None:
        run_dir = RunDirectory(tmp_path, "fedavg-digits")
        run_dir.append(record())
    return RoundLoop(grid, cfg, {}, strategy, sampler, run_dir)


def record() -> RoundRecord:
    """A student round's record, before its phase's final evaluation completes it."""
    return RoundRecord(
        phase="student",
        round=1,
        accuracy=None,
        loss=None,
        accuracy_by_model={},
        federated_accuracy=None,
        federated_loss=None,
        train_loss=None,
        bytes_down=0,
        bytes_up=0,
        seconds=0.1,
        exchange_seconds=0.1,
        client_seconds=None,
        replies=1,
        clipped=0,
        failures=0,
        failed=[],
        sampled=[],
    )


def test_a_group_that_first_appears_mid_run_starts_from_its_seeded_weights(task_identity):
    # Twelve nodes, all mlp-32 but node 9, an mlp-16; three sampled a round, identified as they are drawn.
    grid = Federation({n: "mlp-16" if n == 9 else "mlp-32" for n in range(1, 13)})
    loop = loop_of(grid, {"fraction-train": 0.25, "min-train-nodes": 3, "seed": 4})
    strategy, sampler = loop.strategy, loop.sampler
    # Before round 1 the sampler knows no node: the phase starts from no model at all.
    globals_ = strategy.initial(STUDENT, sampler.nodes(grid, 3), None)
    assert globals_ == {}
    appeared = {}
    for server_round in range(1, 6):
        before = len(grid.sent)
        result, trace = loop.run_round(STUDENT, server_round, globals_, None)
        for name in result.globals.keys() - globals_.keys():
            appeared[name] = server_round
        # Every sampled node was identified before its model was sent, and got its own group's model.
        sent = list(grid.sent.values())[before:]
        kinds = [m.metadata.message_type for m in sent]
        assert kinds == sorted(kinds, key=lambda kind: kind != QUERY_IDENTIFY)
        models = {
            m.metadata.dst_node_id: m.content[CONFIG][MODEL] for m in sent if m.metadata.message_type != QUERY_IDENTIFY
        }
        assert models == {n: grid.models[n] for n in trace.sampled}
        globals_ = result.globals
    # The mlp-16 group came with node 9, after round 1 (seed 4), and started from the weights `initial` would have
    # given it before round 1.
    assert appeared["mlp-32"] == 1 and appeared["mlp-16"] > 1
    first = next(
        m for m in grid.sent.values() if m.metadata.dst_node_id == 9 and m.metadata.message_type != QUERY_IDENTIFY
    )
    seeded = strategy.initial_weights("mlp-16")
    assert all(np.array_equal(first.content[ARRAYS][k].numpy(), seeded[k].numpy()) for k in seeded)
    assert set(globals_) == {"mlp-32", "mlp-16"}
    # Only sampled nodes were ever asked who they are, each once.
    sampled = set(grid.asked(TRAIN_SUPERVISED))
    assert sorted(grid.asked(QUERY_IDENTIFY)) == sorted(sampled) and len(sampled) < 12


def test_without_a_test_set_a_first_batch_defines_the_task_and_later_misfits_are_refused(task_identity):
    # 40 nodes; four hold examples of shape (7,), the others (5,).
    misfits = {3, 22, 35, 40}
    grid = Federation(
        {n: "mlp-32" for n in range(1, 41)}, shapes={n: [7] if n in misfits else [5] for n in range(1, 41)}
    )
    cfg, _ = parse({"dataset": "own/data", "server-test": "none", "fraction-train": 0.1, "min-train-nodes": 3})
    sampler = NodeSampler(cfg.seed, 5, cfg.model, identify_all_max_nodes=10)
    task = run_task(cfg, None, sampler, grid)
    # One batch of max(0.1 x 40, 3) = 4 nodes was asked, no other node.
    assert len(grid.asked(QUERY_IDENTIFY)) == 4 and set(sampler.asked) == set(grid.asked(QUERY_IDENTIFY))
    assert (task.input_shape, task.num_classes) == ((5,), 10)
    # The batch (seed 42) held one misfit, outvoted by three, and refused once the task was fixed.
    assert sampler.refused.keys() == {3} and misfits & set(sampler.asked) == {3}
    samples = [sampler.sample(grid, 0.1, 3).nodes for _ in range(30)]
    # The misfits drawn were refused as they were identified, and none was ever sampled.
    assert set(sampler.refused) == misfits & set(sampler.asked) != set()
    assert not misfits & {n for sample in samples for n in sample}


def test_without_a_test_set_batches_go_on_until_enough_nodes_report_readable_data(task_identity):
    # Only three of 40 nodes can read their data (the others report none): batches of 4 until two of them have.
    readable = {5, 17, 30}
    grid = Federation(
        {n: "mlp-32" for n in range(1, 41)}, shapes={n: [5] if n in readable else [] for n in range(1, 41)}
    )
    cfg, _ = parse({"dataset": "own/data", "server-test": "none", "fraction-train": 0.1, "min-train-nodes": 2})
    sampler = NodeSampler(cfg.seed, 5, cfg.model, identify_all_max_nodes=10)
    task = run_task(cfg, None, sampler, grid)
    asked = grid.asked(QUERY_IDENTIFY)
    assert task.input_shape == (5,) and len(readable & set(asked)) >= 2
    # Whole batches of 4, and not one more than it took.
    assert len(asked) % 4 == 0 and len(readable & set(asked[:-4])) < 2
    assert len(set(asked)) == len(asked)


def by_hand(counts: list[tuple[int, int]], population: int) -> tuple[float, float]:
    """The federated accuracy and its standard error over `counts`, written out as docs/outputs.md gives them."""
    m = len(counts)
    accuracy = sum(c for c, _ in counts) / sum(n for _, n in counts)
    mean_examples = sum(n for _, n in counts) / m
    spread = sum((c - accuracy * n) ** 2 for c, n in counts) / (m - 1)
    return accuracy, math.sqrt((1 - m / population) * spread / (m * mean_examples**2))


@pytest.mark.parametrize(
    "fraction, minimum, limit, evaluated",
    [(0.5, 1, 4, 5), (0.2, 4, 4, 4), (0.5, 1, 10, 5), (1.0, 1, 10, 10), (0.1, 20, 10, 10)],
)
def test_the_final_evaluation_samples_nodes_and_records_their_count_and_standard_error(
    task_identity, tmp_path, fraction, minimum, limit, evaluated
):
    # Ten nodes of different sizes and accuracies; identified whole up to `limit` nodes, else as drawn.
    counts = {n: (3 * n % 11, 10 + n) for n in range(1, 11)}
    grid = Federation({n: "mlp-32" for n in counts}, counts=counts)
    raw = {"fraction-evaluate": fraction, "min-evaluate-nodes": minimum}
    loop = loop_of(grid, raw, tmp_path, identify_all_max_nodes=limit)
    loop.final_evaluation(STUDENT, {"mlp-32": loop.strategy.initial_weights("mlp-32")})
    scored = grid.asked(EVALUATE)
    assert len(scored) == evaluated
    last = loop.run_dir.history[-1]
    assert (last.evaluation_nodes, last.evaluation_population, last.evaluation_failures) == (evaluated, 10, 0)
    accuracy, se = by_hand([counts[n] for n in scored], 10)
    assert last.federated_accuracy == pytest.approx(accuracy)
    assert last.federated_accuracy_se == pytest.approx(se)
    # A sample of fewer than all nodes has some standard error; all ten scored have none.
    assert (last.federated_accuracy_se > 0) == (evaluated < 10)
    # Nodes are identified only as far as the evaluation draws them in a large federation.
    assert len(grid.asked(QUERY_IDENTIFY)) == (10 if limit >= 10 else evaluated)
