"""The round loop's history.json and summary.json, byte for byte, from a stubbed two-phase run.

The files in fixtures/ were written by this run before the records were typed; any change to the
writers' field names, order or values shows up here.
"""

import itertools
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common.config import parse_run_config
from server_app import app, rounds
from server_app.outputs import RunDirectory
from server_app.strategies.base import Round
from server_app.transport import Exchange

FIXTURES = Path(__file__).parent / "fixtures"
# One model name: summary.json's params_by_model is built from a set, whose order varies between processes.
CFG = parse_run_config({"num-teacher-rounds": 2, "num-student-rounds": 2, "teacher-model": "mlp-32", "model": "mlp-32"})


class StubStrategy:
    """Two phases of two rounds, three nodes sampled, node 3 missing in round 2; no Flower underneath."""

    phases = ("teacher", "student")

    def __init__(self) -> None:
        self.sampler = SimpleNamespace(name=lambda node: f"partition-{node}", rng=random.Random(0))
        self.accuracy = itertools.count(0.5, 0.1)

    def score(self, result, test) -> dict:
        return {"mlp-32": (1.0, next(self.accuracy))}

    def teacher_model(self) -> str:
        return "mlp-32"

    def num_rounds(self, phase: str) -> int:
        return 2

    def state(self) -> dict:
        return {}

    def round(self, phase, server_round, globals_, grid) -> Round:
        ex = Exchange(
            missing=[3] if server_round == 2 else [], bytes_down=1000 * server_round, bytes_up=900, seconds=0.1
        )
        metrics = {
            "train-loss": 0.7 / server_round,
            "client-seconds": 0.03,
            "federated-accuracy": 0.6,
            "federated-loss": 1.1,
        }
        if phase == "teacher":
            metrics["clipped-updates"] = 1
        else:
            metrics.update({"distill-steps": 40.0, "distill-validation-start": 0.3, "distill-validation-best": 0.25})
        # The student phase scores its own models (as FedMD does), the teacher phase the previous round's.
        return Round(globals_, [1, 2, 3], [ex], accepted=[1, 2], metrics=metrics, scores_previous=phase == "teacher")

    def evaluation_messages(self, phase, globals_, grid) -> list:
        return ["evaluate"]

    def send(self, grid, messages) -> Exchange:
        return Exchange(bytes_down=500, bytes_up=400, seconds=0.05)

    def aggregate_evaluate(self, server_round, replies) -> dict:
        return {"federated-accuracy": 0.65, "federated-loss": 1.0}


@pytest.fixture
def stubbed_run(tmp_path, monkeypatch):
    """The run directory and strategy after the stubbed run, on a clock that ticks 0.1 s per reading."""
    clock = SimpleNamespace(perf_counter=itertools.count(100.0, 0.1).__next__)
    monkeypatch.setattr(rounds, "time", clock)
    monkeypatch.setattr(app, "time", clock)
    strategy, run = StubStrategy(), RunDirectory(tmp_path, "two-stage-digits")
    globals_ = {"mlp-32": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})}
    for phase in strategy.phases:
        globals_ = rounds.run_phase(strategy, phase, None, CFG, globals_, "test set", run)
    return run, strategy


def written(run: RunDirectory, name: str) -> str:
    """The file with its run directory replaced by a placeholder and its run config (which new config keys would
    change) emptied."""
    config = json.dumps(CFG.model_dump(mode="json", by_alias=True), indent=2).replace("\n", "\n  ")
    return (run.path / name).read_text().replace(str(run.path), "RUN_DIR").replace(config, "{}")


def test_history_json_is_written_as_before(stubbed_run):
    run, _ = stubbed_run
    assert written(run, "history.json") == (FIXTURES / "history.json").read_text()


def test_summary_json_is_written_as_before(stubbed_run):
    run, strategy = stubbed_run
    run.write_summary(app._summary(CFG, strategy, run, 100.0))
    assert written(run, "summary.json") == (FIXTURES / "summary.json").read_text()


def test_an_aborted_summary_is_written_as_before(stubbed_run):
    run, strategy = stubbed_run
    run.write_summary(app._summary(CFG, strategy, run, 100.0, reason="student round 2: too few replies"))
    assert written(run, "summary.json") == (FIXTURES / "summary-aborted.json").read_text()


def test_fused_evaluation_scores_land_on_the_round_whose_models_they_scored(stubbed_run):
    run, _ = stubbed_run
    teacher = [r for r in run.history if r.phase == "teacher"]
    # Round 2's replies scored round 1's models (0.6); the phase's final evaluation scored round 2's (0.65).
    assert [r.federated_accuracy for r in teacher] == [0.6, 0.65]
    assert [r.federated_loss for r in teacher] == [1.1, 1.0]
    # The student phase's replies score its own round's models: each round keeps its own (0.6), then the
    # final evaluation replaces round 2's.
    student = [r for r in run.history if r.phase == "student"]
    assert [r.federated_accuracy for r in student] == [0.6, 0.65]


def test_a_round_scored_as_its_own_is_not_written_back(tmp_path, monkeypatch):
    monkeypatch.setattr(rounds, "time", SimpleNamespace(perf_counter=itertools.count(100.0, 0.1).__next__))
    strategy, run = StubStrategy(), RunDirectory(tmp_path, "x")
    globals_ = {"mlp-32": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})}
    rounds.run_phase(strategy, "teacher", None, CFG, globals_, None, run)
    # No test set: nothing scored on the server, the federated scores alone.
    assert [r.accuracy for r in run.history] == [None, None]
    assert [r.accuracy_by_model for r in run.history] == [{}, {}]


class DPStubStrategy(StubStrategy):
    """The stub with differential privacy on: each round's accepted nodes report the ε they have spent."""

    def round(self, phase, server_round, globals_, grid) -> Round:
        result = super().round(phase, server_round, globals_, grid)
        step = self.phases.index(phase) * 2 + server_round
        result.epsilon = {"partition-2": 0.5 * step, "partition-1": 0.25 * step}
        if step == 4:
            del result.epsilon["partition-2"]  # refused: over its budget, its ε not reported this round
        return result


def test_each_nodes_reported_epsilon_lands_in_history_and_its_latest_in_the_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(rounds, "time", SimpleNamespace(perf_counter=itertools.count(100.0, 0.1).__next__))
    strategy, run = DPStubStrategy(), RunDirectory(tmp_path, "x")
    globals_ = {"mlp-32": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})}
    for phase in strategy.phases:
        globals_ = rounds.run_phase(strategy, phase, None, CFG, globals_, None, run)
    history = json.loads((run.path / "history.json").read_text())
    assert [r["dp_epsilon_by_node"] for r in history] == [
        {"partition-1": 0.25, "partition-2": 0.5},
        {"partition-1": 0.5, "partition-2": 1.0},
        {"partition-1": 0.75, "partition-2": 1.5},
        {"partition-1": 1.0},
    ]
    assert [r["dp_epsilon_max"] for r in history] == [0.5, 1.0, 1.5, 1.0]
    summary = app._summary(CFG, strategy, run, 100.0)
    assert summary.dp_epsilon_by_node == {"partition-1": 1.0, "partition-2": 1.5}
    assert summary.dp_epsilon_max == 1.5
