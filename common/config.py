"""The run config: one pydantic model validates every key before round 1."""

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


MODEL_FAMILIES = "mlp-<width>[x<width>...] (an MLP with those hidden layers, e.g. mlp-32, mlp-128x64), cnn"
_MLP_NAME = re.compile(r"mlp-([1-9][0-9]*(?:x[1-9][0-9]*)*)")


def mlp_widths(name: str) -> tuple[int, ...] | None:
    """Hidden widths of a registry name such as "mlp-128x64", or None if it names no MLP."""
    match = _MLP_NAME.fullmatch(name)
    return tuple(int(w) for w in match.group(1).split("x")) if match else None


def check_model_name(name: str) -> None:
    """Raise ValueError unless `name` is in common.models' registry."""
    if name != "cnn" and mlp_widths(name) is None:
        raise ValueError(f"unknown model {name!r}; allowed: {MODEL_FAMILIES}")


def model_cycle(text: str) -> list[str]:
    """Run config `models` ("mlp-32,cnn"): partition i of a simulation gets entry i mod length."""
    return [part.strip() for part in text.split(",") if part.strip()]


class RunConfig(BaseModel):
    """Every run-config key of fedkd, with its type, range and default."""

    model_config = ConfigDict(
        alias_generator=_kebab, populate_by_name=True, extra="forbid", strict=True, frozen=True
    )

    strategy: Literal["two-stage", "fedavg", "fedmd", "feddf", "feddf-datafree"] = "two-stage"
    dataset: Literal["digits", "mnist5k", "synthetic"] = "digits"
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
    teacher_model: str = "mlp-128x64"
    model: str = "mlp-32"
    models: str = ""
    teacher_finetune_epochs: int = Field(0, ge=0)
    seed: int = Field(42, ge=0)
    output_dir: str = "outputs"
    server_test: str = "builtin"
    resume_from: str = ""
    clip_norm: float = Field(0.0, ge=0)
    max_num_examples: int = Field(1_000_000, ge=1)
    public_fraction: float = Field(0.1, gt=0, lt=0.5)
    public_samples_per_round: int = Field(0, ge=0)
    logits_dtype: Literal["float32", "float16"] = "float32"
    ensemble_teacher: bool = False
    transfer_epochs: int = Field(5, ge=0)
    digest_epochs: int = Field(10, ge=1)
    # 1000 steps, stopping after 500 without improvement: at 300 and 200 a CNN group averaged from
    # one-class clients stayed at chance (mnist5k, Dirichlet 0.1); FedDF's code stops after 2000 of 10^4.
    distill_steps: int = Field(1000, ge=1)
    distill_patience: int = Field(50, ge=1)
    # feddf-datafree's own budget: each of its steps also runs the generator, and its validation on
    # generated samples is continuous, so it leaves a plateau sooner.
    datafree_steps: int = Field(300, ge=1)
    datafree_patience: int = Field(20, ge=1)
    server_learning_rate: float = Field(0.001, gt=0)

    @field_validator("teacher_model", "model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        check_model_name(value)
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: str) -> str:
        for name in model_cycle(value):
            check_model_name(name)
        return value

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

    def node_model(self, node_config: dict) -> str:
        """A node's architecture: node config `model`, else its partition's entry of `models`, else `model`."""
        if "model" in node_config:
            name = str(node_config["model"])
            try:
                check_model_name(name)
            except ValueError as exc:
                raise ConfigError(f"node config 'model' = {name!r}: {exc}") from None
            return name
        if (cycle := model_cycle(self.models)) and "partition-id" in node_config:
            return cycle[int(node_config["partition-id"]) % len(cycle)]
        return self.model

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
