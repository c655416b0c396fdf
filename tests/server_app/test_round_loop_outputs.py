"""The round loop's history.json and summary.json, byte for byte, from a stubbed two-phase run.

The files in fixtures/ were first written by this run before the records were typed; any change to the
writers' field names, order or values shows up here. Since the round loop (loop.py) replaced rounds.py, a method's
own metrics (`distill-*`) sit in a record's `metrics` map, and the final evaluation's federated scores come from its
replies' counts (so `evaluation_replies` counts them); history.json was regenerated for exactly that. The
summaries gained the run's task (`input_shape`, `num_classes`) when it came to be learned from the data, and each
phase's final evaluation its node counts and standard error (`evaluation_nodes`, `evaluation_population`,
`federated_accuracy_se`; the summary's `*_evaluation_nodes`, `*_federated_accuracy_se`) when it came to be sampled.
"""

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.config import parse_run_config
from common.data import builtin_task
from common.protocol import (
    CONFIG,
    DP_EPSILON,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    TRAIN_SUPERVISED,
)
from server_app import app, loop
from server_app.loop import RoundLoop
from server_app.outputs import RunDirectory
from server_app.round import Ask, Phase, RoundInput, RoundResult
from server_app.sampling import NodeSampler
from server_app.strategies.contract import NoSettings, Strategy
from tests.server_app.helpers import exchanged

FIXTURES = Path(__file__).parent / "fixtures"
# One model name: summary.json's params_by_model is built from a set, whose order varies between processes.
CFG = parse_run_config({"num-student-rounds": 2, "model": "mlp-32", "fraction-train": 1.0})
NODES = (1, 2, 3)


class StubStrategy(Strategy):
    """Two phases of two rounds, three nodes sampled, node 3 silent in round 2; the metrics and scores made up."""

    def __init__(self, sampler) -> None:
        super().__init__(CFG, NoSettings(), sampler, builtin_task(CFG.dataset))
        self.accuracy = itertools.count(0.5, 0.1)

    def phases(self):
        return Phase("teacher", 2, teacher=True), Phase("student", 2)

    def score(self, globals_, test) -> dict:
        return {"mlp-32": (1.0, next(self.accuracy))}

    def teacher_model(self) -> str:
        return "mlp-32"

    def round(self, r: RoundInput):
        # Node 3 is sampled every round, and asked only in round 2, where it does not answer.
        asked = [node for node in r.sampled if node != 3 or r.server_round == 2]
        config = ConfigRecord({SERVER_ROUND: r.server_round})
        messages = [Message(RecordDict({CONFIG: config}), dst_node_id=n, message_type=TRAIN_SUPERVISED) for n in asked]
        yield Ask(messages, [lambda content: None] * len(messages))
        metrics = {
            "train-loss": 0.7 / r.server_round,
            "client-seconds": 0.03,
            "federated-accuracy": 0.6,
            "federated-loss": 1.1,
        }
        if r.phase.teacher:
            metrics["clipped-updates"] = 1
        else:
            metrics.update({"distill-steps": 40.0, "distill-validation-start": 0.3, "distill-validation-best": 0.25})
        # The student phase scores its own models (as FedMD does), the teacher phase the previous round's.
        return RoundResult(r.globals, metrics, scores_previous=r.phase.teacher)


class StubLoop(RoundLoop):
    """The loop, its exchanges answered here: round r's weighs 1000 r bytes down and 900 up, node 3 never answers;
    the final evaluation's 500 down and 400 up, every node scoring 13 of 20 right."""

    def __init__(self, strategy, sampler, run, epsilon=None) -> None:
        super().__init__(SimpleNamespace(get_node_ids=lambda: list(NODES)), CFG, {}, strategy, sampler, run)
        # Exchange k of the run -> node -> the ε its reply reports.
        self.epsilon, self.step = epsilon or {}, 0

    def send(self, messages):
        if messages[0].metadata.message_type == EVALUATE:
            counts = {EVAL_EXAMPLES: 20, EVAL_CORRECT: 13, EVAL_LOSS_SUM: 20.0}
            return exchanged(
                messages,
                lambda m: RecordDict({METRICS: MetricRecord(counts)}),
                bytes_down=500,
                bytes_up=400,
                seconds=0.05,
            )
        self.step += 1
        reported = self.epsilon.get(self.step, {})

        def answer(m):
            node = m.metadata.dst_node_id
            if node == 3:
                return None
            metrics = {NUM_EXAMPLES: 10, **({DP_EPSILON: reported[node]} if node in reported else {})}
            return RecordDict({METRICS: MetricRecord(metrics)})

        server_round = messages[0].content[CONFIG][SERVER_ROUND]
        return exchanged(messages, answer, bytes_down=1000 * server_round, bytes_up=900, seconds=0.1)


def sampler() -> NodeSampler:
    s = NodeSampler(seed=1, timeout=1)
    s.names = {n: f"partition-{n}" for n in NODES}
    s.models = {n: "mlp-32" for n in NODES}
    return s


def run_stub(tmp_path, monkeypatch, test="test set", epsilon=None, phases=None):
    """The run directory and strategy after the stubbed run, on a clock that ticks 0.1 s per reading."""
    clock = SimpleNamespace(perf_counter=itertools.count(100.0, 0.1).__next__)
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(app, "time", clock)
    nodes = sampler()
    strategy, run = StubStrategy(nodes), RunDirectory(tmp_path, "two-stage-digits")
    stub = StubLoop(strategy, nodes, run, epsilon)
    globals_ = {"mlp-32": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})}
    for phase in phases or strategy.phases():
        globals_ = stub.run_phase(phase, globals_, test)
    return run, strategy


@pytest.fixture
def stubbed_run(tmp_path, monkeypatch, task_identity):
    return run_stub(tmp_path, monkeypatch)


def written(run: RunDirectory, name: str) -> str:
    """The file with its run directory replaced by a placeholder."""
    return (run.path / name).read_text().replace(str(run.path), "RUN_DIR")


def test_history_json_is_written_as_before(stubbed_run):
    run, _ = stubbed_run
    assert written(run, "history.json") == (FIXTURES / "history.json").read_text()


def test_summary_json_is_written_as_before(stubbed_run):
    run, strategy = stubbed_run
    run.write_summary(app._summary(CFG, {}, strategy, run, 100.0, {}))
    assert written(run, "summary.json") == (FIXTURES / "summary.json").read_text()


def test_an_aborted_summary_is_written_as_before(stubbed_run):
    run, strategy = stubbed_run
    run.write_summary(app._summary(CFG, {}, strategy, run, 100.0, {}, reason="student round 2: too few replies"))
    assert written(run, "summary.json") == (FIXTURES / "summary-aborted.json").read_text()


def test_fused_evaluation_scores_land_on_the_round_whose_models_they_scored(stubbed_run):
    run, _ = stubbed_run
    teacher = [r for r in run.history if r.phase == "teacher"]
    # Round 2's replies scored round 1's models (0.6); the phase's final evaluation scored round 2's (39 / 60).
    assert [r.federated_accuracy for r in teacher] == [0.6, 0.65]
    assert [r.federated_loss for r in teacher] == [1.1, 1.0]
    # The student phase's replies score its own round's models: each round keeps its own (0.6), then the
    # final evaluation replaces round 2's.
    student = [r for r in run.history if r.phase == "student"]
    assert [r.federated_accuracy for r in student] == [0.6, 0.65]
    # The method's own metrics are under `metrics`, the common ones in their fields.
    assert [r.metrics for r in teacher] == [None, None] and [r.clipped for r in teacher] == [1, 1]
    assert student[0].metrics == {
        "distill-steps": 40.0,
        "distill-validation-start": 0.3,
        "distill-validation-best": 0.25,
    }


def test_a_round_scored_as_its_own_is_not_written_back(tmp_path, monkeypatch, task_identity):
    teacher = Phase("teacher", 2, teacher=True)
    run, _ = run_stub(tmp_path, monkeypatch, test=None, phases=[teacher])
    # No test set: nothing scored on the server, the federated scores alone.
    assert [r.accuracy for r in run.history] == [None, None]
    assert [r.accuracy_by_model for r in run.history] == [{}, {}]


def test_each_nodes_reported_epsilon_lands_in_history_and_its_latest_in_the_summary(
    tmp_path, monkeypatch, task_identity
):
    # Step s (phase index x 2 + round): partition-1 reports 0.25 s, partition-2 0.5 s; at step 4 partition-2
    # reports none (refused: over its budget).
    epsilon = {step: {1: 0.25 * step, 2: 0.5 * step} for step in (1, 2, 3)} | {4: {1: 1.0}}
    run, strategy = run_stub(tmp_path, monkeypatch, test=None, epsilon=epsilon)
    history = json.loads((run.path / "history.json").read_text())
    assert [r["dp_epsilon_by_node"] for r in history] == [
        {"partition-1": 0.25, "partition-2": 0.5},
        {"partition-1": 0.5, "partition-2": 1.0},
        {"partition-1": 0.75, "partition-2": 1.5},
        {"partition-1": 1.0},
    ]
    assert [r["dp_epsilon_max"] for r in history] == [0.5, 1.0, 1.5, 1.0]
    summary = app._summary(CFG, {}, strategy, run, 100.0, {})
    assert summary.dp_epsilon_by_node == {"partition-1": 1.0, "partition-2": 1.5}
    assert summary.dp_epsilon_max == 1.5
