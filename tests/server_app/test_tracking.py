"""Run config `tracking`: the stubbed two-phase run of the round loop (test_round_loop_outputs.py) writes TensorBoard
event files and an MLflow run, which are read back here and compared, number by number, with history.json."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from common.config import ConfigError
from server_app import app
from server_app.outputs import RunDirectory
from server_app.records import RoundRecord, read_history
from server_app.tracking import STATE, TRACKERS, MLflow, TensorBoard, scalars
from tests.server_app.test_round_loop_outputs import CFG, StubLoop, StubStrategy, sampler

CONFIG = {"strategy": "two-stage", "seed": 42, "standardise": True, "tracking": "mlflow"}


def run_phases(run: RunDirectory, *names: str) -> StubStrategy:
    """The stubbed run's phases of these names through the round loop, written to `run`."""
    nodes = sampler()
    strategy = StubStrategy(nodes)
    stub = StubLoop(strategy, nodes, run, epsilon={1: {1: 0.5, 2: 0.25}})
    globals_ = {"mlp-32": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})}
    for phase in strategy.phases():
        if phase.name in names:
            globals_ = stub.run_phase(phase, globals_, "test set")
    return strategy


def finish(run: RunDirectory, strategy: StubStrategy, reason: str | None = None) -> None:
    """What the ServerApp does last: write summary.json, of a run aborted for `reason` if one is given."""
    run.write_summary(app._summary(CFG, {}, strategy, run, 100.0, {}, reason=reason))


def expected(run: RunDirectory) -> dict[tuple[str, int], float]:
    """Every number of history.json as (series, round) -> value."""
    history = read_history(run.path / "history.json")
    return {(tag, r.round): value for r in history for tag, value in scalars(r).items()}


def tensorboard_events(logdir) -> dict[tuple[str, int], list[float]]:
    """Every scalar in the event files under `logdir`, in the order written, by (tag, step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    read: dict[tuple[str, int], list[float]] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            read.setdefault((tag, event.step), []).append(event.value)
    return read


def test_a_records_numbers_are_named_by_phase_field_model_and_metric():
    record = RoundRecord(
        phase="student",
        round=3,
        accuracy=0.75,
        loss=None,
        accuracy_by_model={"cnn": 0.5, "mlp-32": 1.0},
        federated_accuracy=None,
        federated_loss=None,
        train_loss=0.25,
        bytes_down=2000,
        bytes_up=1000,
        seconds=1.5,
        exchange_seconds=1.0,
        client_seconds=None,
        replies=2,
        clipped=0,
        failures=1,
        failed=[],
        sampled=["a", "b"],
        dp_epsilon_by_node={"a": 1.0},
        dp_epsilon_max=1.0,
        metrics={"generator-loss": 0.5, "distill-kept": {"cnn": True, "mlp-32": False}},
    )
    assert scalars(record) == {
        "student/accuracy": 0.75,
        "student/train_loss": 0.25,
        "student/bytes_down": 2000.0,
        "student/bytes_up": 1000.0,
        "student/seconds": 1.5,
        "student/exchange_seconds": 1.0,
        "student/replies": 2.0,
        "student/clipped": 0.0,
        "student/failures": 1.0,
        "student/dp_epsilon_max": 1.0,
        "student/accuracy_by_model/cnn": 0.5,
        "student/accuracy_by_model/mlp-32": 1.0,
        "student/metrics/generator-loss": 0.5,
        "student/metrics/distill-kept/cnn": 1.0,
        "student/metrics/distill-kept/mlp-32": 0.0,
    }


def test_tensorboard_holds_each_number_of_history_json_once_at_its_round(tmp_path, task_identity):
    run = RunDirectory(tmp_path, "two-stage-digits")
    run.track(TensorBoard(run.path, "", CONFIG))
    finish(run, run_phases(run, "teacher", "student"))
    want = expected(run)
    # The fused evaluation and the final evaluations amend records after they are appended: the test is that each
    # number lands once, with its final value (TensorBoard keeps 32-bit floats).
    assert tensorboard_events(run.path / "tensorboard") == {key: [float(np.float32(v))] for key, v in want.items()}
    assert {"teacher/federated_accuracy_se", "student/metrics/distill-steps", "teacher/dp_epsilon_max"} <= {
        tag for tag, _ in want
    }
    assert json.loads((run.path / STATE).read_text()) == {"rounds": 4}


def test_a_resumed_run_writes_the_rest_once_and_amended_numbers_again(tmp_path, task_identity):
    logs = tmp_path / "tensorboard-runs"
    run = RunDirectory(tmp_path / "runs", "two-stage-digits")
    run.track(TensorBoard(run.path, str(logs), CONFIG))
    # Aborted after the teacher phase: every record is written, the last one included.
    finish(run, run_phases(run, "teacher"), reason="student round 1: too few replies")
    resumed = RunDirectory.reopen(run.path, read_history(run.path / "history.json"))
    resumed.track(TensorBoard(resumed.path, str(logs), CONFIG))
    # The resumed run's first round completes the aborted run's last record, as fused evaluation does.
    resumed.update(len(resumed.history) - 1, federated_accuracy=0.7)
    finish(resumed, run_phases(resumed, "student"))
    read, want = tensorboard_events(logs / run.path.name), expected(resumed)
    assert {key: values[-1] for key, values in read.items()} == {key: float(np.float32(v)) for key, v in want.items()}
    assert read[("teacher/federated_accuracy", 2)] == [float(np.float32(0.65)), float(np.float32(0.7))]
    assert all(len(values) == 1 for key, values in read.items() if key != ("teacher/federated_accuracy", 2))


def test_an_mlflow_run_holds_each_number_of_history_json_and_the_run_config(tmp_path, task_identity):
    from mlflow.tracking import MlflowClient

    run = RunDirectory(tmp_path, "two-stage-digits")
    run.track(MLflow(run.path, "", CONFIG))
    run_phases(run, "teacher")
    # The ServerApp killed after phase 1 (no summary), then resumed: the same MLflow run goes on.
    resumed = RunDirectory.reopen(run.path, read_history(run.path / "history.json"))
    resumed.track(MLflow(resumed.path, "", CONFIG))
    finish(resumed, run_phases(resumed, "student"))

    client = MlflowClient(f"sqlite:///{run.path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedkd")
    # Nothing of the run outside its directory, not even an artifact location in the working directory.
    assert experiment.artifact_location == (run.path / "mlflow-artifacts").as_uri()
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == json.loads((run.path / STATE).read_text())["run_id"]
    assert (found.info.run_name, found.info.status) == (run.path.name, "FINISHED")
    assert found.data.params == {"strategy": "two-stage", "seed": "42", "standardise": "true", "tracking": "mlflow"}
    want = expected(resumed)
    read = {
        (key, metric.step): metric.value
        for key in found.data.metrics
        for metric in client.get_metric_history(found.info.run_id, key)
    }
    assert read == want
    assert sum(len(client.get_metric_history(found.info.run_id, key)) for key in found.data.metrics) == len(want)


def test_a_tracker_that_fails_stops_with_a_warning_and_the_run_goes_on(tmp_path, task_identity, caplog):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory")
    run = RunDirectory(tmp_path / "runs", "two-stage-digits")
    run.track(TensorBoard(run.path, str(in_the_way), CONFIG))
    finish(run, run_phases(run, "teacher", "student"))
    assert run.tracker.stopped and len(read_history(run.path / "history.json")) == 4
    assert "fedkd: tensorboard tracking stopped opening" in caplog.text


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_a_missing_package_is_a_config_error_naming_the_extra(name, monkeypatch):
    tracker = TRACKERS[name]
    monkeypatch.setitem(sys.modules, tracker.package, None)
    with pytest.raises(ConfigError, match=rf"run config 'tracking' = '{name}' needs {tracker.package}.*\[tracking\]"):
        tracker.require()


def test_the_serverapp_refuses_a_run_whose_tracker_is_missing_before_it_asks_the_grid(monkeypatch):
    class Untouched:
        def __getattr__(self, name):
            raise AssertionError(f"the ServerApp used grid.{name} before refusing the run")

    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError, match=r"needs mlflow.*pip install -e '\.\[tracking\]'"):
        app.main(Untouched(), SimpleNamespace(run_config={"tracking": "mlflow"}))
