"""The run config: one pydantic model validates every key before round 1."""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def parse_hidden(text: str) -> tuple[int, ...]:
    """Parse hidden-layer widths such as "128,64" into (128, 64)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        widths = ()
    if not widths or any(w <= 0 for w in widths):
        raise ValueError("expected comma-separated positive integers such as '128,64'")
    return widths


class RunConfig(BaseModel):
    """Every run-config key of fedkd, with its type, range and default."""

    model_config = ConfigDict(
        alias_generator=_kebab, populate_by_name=True, extra="forbid", strict=True, frozen=True
    )

    strategy: Literal["two-stage"] = "two-stage"
    dataset: Literal["digits", "synthetic"] = "digits"
    partitioner: Literal["iid", "dirichlet", "pathological"] = "dirichlet"
    dirichlet_alpha: float = Field(0.5, gt=0)
    classes_per_partition: int = Field(2, ge=1)
    samples_per_client: int = Field(200, ge=10)
    local_test_fraction: float = Field(0.2, gt=0, lt=1)
    num_teacher_rounds: int = Field(25, ge=1)
    num_student_rounds: int = Field(25, ge=1)
    fraction_train: float = Field(0.5, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_train_nodes: int = Field(2, ge=1)
    min_replies: float = Field(0.5, gt=0, le=1)
    round_timeout: float = Field(600.0, gt=0)
    local_epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    temperature: float = Field(3.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    teacher_hidden: tuple[int, ...] = (128, 64)
    student_hidden: tuple[int, ...] = (32,)
    teacher_finetune_epochs: int = Field(0, ge=0)
    seed: int = Field(42, ge=0)
    output_dir: str = "outputs"
    server_test: str = "builtin"
    resume_from: str = ""
    clip_norm: float = Field(0.0, ge=0)

    @field_validator("teacher_hidden", "student_hidden", mode="before")
    @classmethod
    def _widths(cls, value: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        if not isinstance(value, str):
            raise ValueError("expected a string of comma-separated positive integers such as '128,64'")
        return parse_hidden(value)

    @field_serializer("teacher_hidden", "student_hidden")
    def _widths_text(self, widths: tuple[int, ...]) -> str:
        # Dumped as written in run config, so a summary's config can be fed back to `flwr run`.
        return ",".join(map(str, widths))

    @field_validator("output_dir")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a directory path, got an empty string")
        return value

    def check_nodes(self, num_nodes: int) -> None:
        """Fail early when the federation is too small for this config."""
        if self.min_train_nodes > num_nodes:
            raise ConfigError(
                f"run config 'min-train-nodes' = {self.min_train_nodes} is more than the "
                f"{num_nodes} connected nodes; allowed: 1 to {num_nodes}"
            )

    def output_path(self) -> Path:
        """The output directory, absolute."""
        return Path(self.output_dir).expanduser().resolve()


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "run config"
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(f.alias or n for n, f in RunConfig.model_fields.items()))
        return f"unknown run config key '{key}' (value {value!r}); known keys: {known}"
    return f"run config '{key}' = {value!r}: {error['msg']}"


def parse_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a Flower run config (kebab-case keys) into a RunConfig."""
    try:
        return RunConfig.model_validate(dict(raw))
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise ConfigError(problems) from None
