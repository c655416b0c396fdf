"""What a run writes and its readers read back: one RoundRecord per round (history.json) and the Summary (summary.json).

The fields, in the files' order, are those that docs/outputs.md explains.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, model_serializer

# The round metrics every weight-averaging or counting method reports (RoundResult.metrics, kebab-case), each with
# the record field it fills; a method's other metrics go to the record's `metrics` map under their own names.
COMMON_METRICS = {
    "federated-accuracy": "federated_accuracy",
    "federated-loss": "federated_loss",
    "train-loss": "train_loss",
    "client-seconds": "client_seconds",
    "clipped-updates": "clipped",
}


def metric_fields(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The record fields that a round's `metrics` fill: each common metric's field (None where the round measured
    nothing, 0 clipped), and `metrics`, the method's own (None if it has none)."""
    fields = {name: metrics.get(key) for key, name in COMMON_METRICS.items()}
    own = {key: value for key, value in metrics.items() if key not in COMMON_METRICS and value is not None}
    return {**fields, "clipped": int(fields["clipped"] or 0), "metrics": own or None}


class _Record(BaseModel):
    """A JSON object of a run's outputs: dumped in field order, validated when built or read back."""

    # Pydantic rather than dataclasses: a file read back is validated, and the error names the field.
    # Strict: a number written as text is refused too, not converted.
    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True)
    # Fields that only some objects have: left out of the JSON while None.
    omitted_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: Any) -> dict[str, Any]:
        """The fields in order, less those of `omitted_when_none` that are None."""
        return {k: v for k, v in handler(self).items() if v is not None or k not in self.omitted_when_none}


class Failure(_Record):
    """A sampled node that failed a round, and why."""

    node: str
    reason: str


class RoundRecord(_Record):
    """One round: a record of history.json."""

    phase: str
    round: int
    accuracy: float | None
    loss: float | None
    accuracy_by_model: dict[str, float]
    federated_accuracy: float | None
    federated_loss: float | None
    train_loss: float | None
    bytes_down: int
    bytes_up: int
    seconds: float
    exchange_seconds: float
    client_seconds: float | None
    replies: int
    clipped: int
    failures: int
    failed: list[Failure]
    sampled: list[str]
    # The phase's final evaluate exchange: its last record only. `evaluation_nodes` of the `evaluation_population`
    # eligible nodes scored the final models; `federated_accuracy_se` is the federated accuracy's standard error over
    # that sample of nodes (docs/outputs.md gives the formula).
    evaluation_seconds: float | None = None
    evaluation_replies: int | None = None
    evaluation_failures: int | None = None
    evaluation_nodes: int | None = None
    evaluation_population: int | None = None
    federated_accuracy_se: float | None = None
    # Differential privacy (`dp-epsilon` > 0) only: the ε each accepted node reported spent, and their maximum.
    dp_epsilon_by_node: dict[str, float] | None = None
    dp_epsilon_max: float | None = None
    # The method's own metrics, by name (docs/outputs.md lists each method's): a number, or a flag per
    # architecture.
    metrics: dict[str, float | dict[str, bool]] | None = None

    omitted_when_none = (
        "evaluation_seconds",
        "evaluation_replies",
        "evaluation_failures",
        "evaluation_nodes",
        "evaluation_population",
        "federated_accuracy_se",
        "dp_epsilon_by_node",
        "dp_epsilon_max",
        "metrics",
    )


class Summary(_Record):
    """A run's outcome: summary.json."""

    status: Literal["complete", "aborted"]
    strategy: str
    teacher_accuracy: float | None
    student_accuracy: float | None
    student_accuracy_by_model: dict[str, float] | None
    teacher_federated_accuracy: float | None
    student_federated_accuracy: float | None
    # Each phase's final evaluation: the nodes whose scores make its federated accuracy, and that accuracy's standard
    # error over them (its last history record's `evaluation_nodes` and `federated_accuracy_se`).
    teacher_evaluation_nodes: int | None = None
    teacher_federated_accuracy_se: float | None = None
    student_evaluation_nodes: int | None = None
    student_federated_accuracy_se: float | None = None
    teacher_params: int | None
    student_params: int
    params_by_model: dict[str, int]
    compression: float | None
    bytes_total: int
    rounds: int
    median_round_seconds: float | None
    wall_seconds: float
    run_dir: str
    config: dict[str, Any]
    # Why an aborted run stopped.
    reason: str | None = None
    # Differential privacy (`dp-epsilon` > 0) only: the last ε each node reported spent in the run, and the maximum.
    dp_epsilon_by_node: dict[str, float] | None = None
    dp_epsilon_max: float | None = None
    # The run's task, as server_app/task.py fixed it: one example's shape and the number of classes.
    input_shape: list[int] | None = None
    num_classes: int | None = None
    # Nodes never sampled because their data did not fit the task or could not be read, by name, with the reason.
    refused_nodes: dict[str, str] | None = None

    omitted_when_none = (
        "reason",
        "dp_epsilon_by_node",
        "dp_epsilon_max",
        "input_shape",
        "num_classes",
        "refused_nodes",
        "teacher_evaluation_nodes",
        "teacher_federated_accuracy_se",
        "student_evaluation_nodes",
        "student_federated_accuracy_se",
    )


# A history as JSON data: `HISTORY.dump_python(records)` and `HISTORY.validate_python(data)`.
HISTORY = TypeAdapter(list[RoundRecord])


def read_history(path: Path) -> list[RoundRecord]:
    """The records of a history.json; a ValidationError naming the record and field if one is malformed."""
    return HISTORY.validate_python(json.loads(path.read_text()))


def read_summary(path: Path) -> Summary:
    """A summary.json; a ValidationError naming the field if it is malformed."""
    return Summary.model_validate(json.loads(path.read_text()))
