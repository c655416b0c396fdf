"""Optional tracking (run config `tracking`): every round's numbers in TensorBoard event files or an MLflow run.

history.json stays the run's record; a tracker copies its numbers into the tools that users compare runs in. The
run directory (server_app/outputs.py) hands a tracker each round's record once it is final: a round's federated
accuracy comes with the next round's replies, and the phase's final evaluation amends its last round, so round r
is written when round r + 1 is recorded, and the run's last round with summary.json. Each number is then written
once, at its round, as history.json holds it; a record amended after it was written (a resumed run finishing an
aborted one's last round) has its changed numbers written again.

`tracking.json` in the run directory says how many records are written (and which MLflow run), so a resumed run
writes each of the rest once, into the same run. A tracker that fails (a full disk, a tracking server gone) logs
why and stops: a dashboard must not stop a federated run, and history.json keeps every round.
"""

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import import_module
from logging import WARNING
from pathlib import Path
from typing import Any, ClassVar, Literal

from common.config import ConfigError, toml_value
from server_app.outputs import write_json
from server_app.records import RoundRecord

STATE = "tracking.json"
INSTALL = "pip install -e '.[tracking]'"


def scalars(record: RoundRecord) -> dict[str, float]:
    """The record's numbers by series name, `<phase>/<field>`: every number field but `round` (the step), each
    architecture's accuracy (`<phase>/accuracy_by_model/<model>`) and the method's own metrics
    (`<phase>/metrics/<name>`, a flag per architecture as 1 or 0 under `<phase>/metrics/<name>/<model>`). Absent
    numbers are left out; so is `dp_epsilon_by_node`, one series per node, where `dp_epsilon_max` is the figure
    to watch."""
    phase = record.phase
    values = {
        f"{phase}/{name}": float(value)
        for name, value in record
        if name != "round" and isinstance(value, int | float) and not isinstance(value, bool)
    }
    values.update({f"{phase}/accuracy_by_model/{model}": acc for model, acc in record.accuracy_by_model.items()})
    for name, value in (record.metrics or {}).items():
        if isinstance(value, dict):
            values.update({f"{phase}/metrics/{name}/{model}": float(flag) for model, flag in value.items()})
        else:
            values[f"{phase}/metrics/{name}"] = float(value)
    return values


class Tracker(ABC):
    """Writes a run's records to one tracking backend, each once, also across a resume of the run."""

    # The run config `tracking` value, and the package (of the `tracking` extra) it imports.
    name: ClassVar[str]
    package: ClassVar[str]

    def __init__(self, run_dir: Path, uri: str, params: dict[str, Any]) -> None:
        self.run_dir, self.uri, self.params = run_dir, uri, params
        path = run_dir / STATE
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"rounds": 0}
        self.stopped = False

    @classmethod
    def require(cls) -> None:
        """Import the backend's package now, before the run starts: a ConfigError naming the extra if it is
        missing."""
        try:
            import_module(cls.package)
        except ImportError as exc:
            raise ConfigError(
                f"run config 'tracking' = {cls.name!r} needs {cls.package}, which cannot be imported ({exc}); "
                f"install fedkd's tracking extra where the ServerApp runs: {INSTALL}"
            ) from None

    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # whatever the backend raises, the run goes on: history.json has every round
            from flwr.common import log

            self.stopped = True
            log(WARNING, "fedkd: %s tracking stopped %s: %s: %s", self.name, doing, type(exc).__name__, exc)

    def start(self, history: Sequence[RoundRecord]) -> None:
        """Open the backend (a resumed run's MLflow run again), and write the records of `history` not written yet
        but its last, which the run may still amend."""
        with self._guard("opening"):
            self.open()
            self._save()
        self.sync(history[:-1])

    def sync(self, records: Sequence[RoundRecord]) -> None:
        """Write the final `records` not written yet."""
        pending = records[self.state["rounds"] :]
        if self.stopped or not pending:
            return
        with self._guard(f"writing {pending[0].phase} round {pending[0].round}"):
            for record in pending:
                self.write(record.round, scalars(record))
            self.state["rounds"] = len(records)
            self._save()

    def amend(self, index: int, before: RoundRecord, after: RoundRecord) -> None:
        """Write again the numbers that changed from `before` to `after` in record `index`, if it was written
        already."""
        old = scalars(before)
        changed = {key: value for key, value in scalars(after).items() if old.get(key) != value}
        if self.stopped or index >= self.state["rounds"] or not changed:
            return
        with self._guard(f"amending {after.phase} round {after.round}"):
            self.write(after.round, changed)

    def finish(self, records: Sequence[RoundRecord], status: Literal["complete", "aborted"]) -> None:
        """Write the rest of `records` and close the backend, marking an MLflow run finished or failed."""
        self.sync(records)
        if not self.stopped:
            with self._guard("closing"):
                self.close(status)

    def _save(self) -> None:
        write_json(self.run_dir / STATE, self.state)

    @abstractmethod
    def open(self) -> None:
        """Connect to the backend; may add to `self.state` what a resumed run needs to find it again."""

    @abstractmethod
    def write(self, step: int, values: dict[str, float]) -> None:
        """Write `values` at `step` (the round within its phase), durably."""

    @abstractmethod
    def close(self, status: Literal["complete", "aborted"]) -> None:
        """Release the backend at the end of the run."""


class TensorBoard(Tracker):
    """Event files in `<run dir>/tensorboard/`, or in `<tracking-uri>/<run dir's name>/` (a directory), so that
    `tensorboard --logdir` over either shows the runs side by side."""

    name = "tensorboard"
    # tensorboardX rather than torch.utils.tensorboard: the same writer without the `tensorboard` package (its
    # web server, a native data server, absl, werkzeug, markdown), which the machine that runs the ServerApp does
    # not need; its only dependencies (numpy, packaging, protobuf) are fedkd's already.
    package = "tensorboardX"

    def open(self) -> None:
        from tensorboardX import SummaryWriter

        logdir = Path(self.uri).expanduser() / self.run_dir.name if self.uri else self.run_dir / "tensorboard"
        # tensorboardX names its event file by the second and truncates a file of the same name: the suffix keeps a
        # writer opened again within that second (a resumed run) from erasing what the first one wrote.
        self.writer = SummaryWriter(str(logdir), filename_suffix=f".{time.time_ns()}")

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        # Written through now, not at the writer's 2-minute flush: a killed ServerApp loses no written round.
        self.writer.flush()

    def close(self, status: Literal["complete", "aborted"]) -> None:
        self.writer.close()


class MLflow(Tracker):
    """A run of experiment `fedkd`, named as the run directory, with the run config as its parameters: in an SQLite
    store `<run dir>/mlflow.db`, or at `tracking-uri` (a tracking server's address, any MLflow tracking URI)."""

    name = "mlflow"
    # mlflow-skinny: MLflow's tracking client without its server, UI and ML libraries.
    package = "mlflow"
    EXPERIMENT = "fedkd"

    def open(self) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        # SQLite, MLflow's recommended local store: its file store is deprecated, and MLflow 3.18 refuses to open it.
        self.client = MlflowClient(self.uri or f"sqlite:///{self.run_dir / 'mlflow.db'}")
        if "run_id" in self.state:
            self.client.update_run(self.state["run_id"], status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(self.EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            # No artifacts are logged; a local store keeps even their location inside the run directory, not in
            # an `mlruns` of the ServerApp's working directory.
            artifacts = None if self.uri else (self.run_dir / "mlflow-artifacts").as_uri()
            try:
                experiment_id = self.client.create_experiment(self.EXPERIMENT, artifact_location=artifacts)
            except MlflowException:  # another run created it meanwhile
                experiment_id = self.client.get_experiment_by_name(self.EXPERIMENT).experiment_id
        run = self.client.create_run(
            experiment_id, run_name=self.run_dir.name, tags={"fedkd.run_dir": str(self.run_dir)}
        )
        self.state["run_id"] = run.info.run_id
        # Each value as `--run-config` writes it, strings unquoted.
        params = [Param(key, v if isinstance(v, str) else toml_value(v)) for key, v in self.params.items()]
        # MLflow takes at most 100 parameters a call.
        for start in range(0, len(params), 100):
            self.client.log_batch(self.state["run_id"], params=params[start : start + 100])

    def write(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        # MLflow takes at most 1,000 metrics a call.
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.state["run_id"], metrics=metrics[start : start + 1000])

    def close(self, status: Literal["complete", "aborted"]) -> None:
        self.client.set_terminated(self.state["run_id"], "FINISHED" if status == "complete" else "FAILED")


TRACKERS: dict[str, type[Tracker]] = {cls.name: cls for cls in (TensorBoard, MLflow)}
