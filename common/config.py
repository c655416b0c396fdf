"""The run config: one pydantic model validates every key before round 1."""

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


# Keys that may change between a run and its resumption; every other key shapes the result.
RESUMABLE_CHANGES = {"resume-from", "output-dir", "round-timeout", "min-replies"}


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

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid", strict=True, frozen=True)

    # Descriptions (and `allowed` notes for checks no type or bound expresses) are the source of
    # docs/configuration.md; `python -m common.config_docs` regenerates it, a test fails when it is stale.
    strategy: str = Field(
        "two-stage",
        description="the federated method (see docs/strategies.md)",
        json_schema_extra={
            "allowed": "the name of a strategy registered in `server_app/strategies/`, as listed in docs/strategies.md"
        },
    )
    dataset: Literal["digits", "mnist5k", "synthetic"] = Field(
        "digits", description="the dataset every node and the server build (see the README's Data)"
    )
    partitioner: Literal["iid", "dirichlet", "pathological"] = Field(
        "dirichlet", description="how the training data is split among clients"
    )
    dirichlet_alpha: float = Field(
        0.5, gt=0, description="concentration of the Dirichlet label split (smaller: more skewed)"
    )
    classes_per_partition: int = Field(2, ge=1, description="labels per client for `pathological`")
    samples_per_client: int = Field(200, ge=10, description="training samples per client of `synthetic`")
    local_test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share of a client's data kept for local evaluation (`synthetic`: extra samples of that share)",
    )
    num_teacher_rounds: int = Field(25, ge=1, description="rounds of phase 1 (two-stage: the teacher)")
    num_student_rounds: int = Field(
        25, ge=1, description="rounds of phase 2 (two-stage: the student), and of the one-phase strategies"
    )
    fraction_train: float = Field(0.5, gt=0, le=1, description="share of the connected nodes sampled per round")
    fraction_evaluate: float = Field(
        1.0, ge=0, le=1, description="share of nodes scoring each phase's final model (0: skip)"
    )
    min_train_nodes: int = Field(
        2,
        ge=1,
        description="nodes sampled per round at least; more than there are nodes is an error",
        json_schema_extra={"allowed": "at most the number of connected nodes"},
    )
    min_replies: float = Field(
        0.5, gt=0, le=1, description="share of the sampled nodes that must reply for a round to count"
    )
    round_timeout: float = Field(
        600.0, gt=0, description="deadline in seconds of every exchange, and for nodes to connect"
    )
    local_epochs: int = Field(3, ge=1, description="local training epochs per round")
    batch_size: int = Field(32, ge=1, description="mini-batch size")
    learning_rate: float = Field(0.01, gt=0, description="Adam learning rate of local training")
    temperature: float = Field(3.0, gt=0, description="distillation temperature T")
    alpha: float = Field(
        0.5, ge=0, le=1, description="weight of the soft (teacher) loss; 1 − alpha weighs the hard labels"
    )
    teacher_model: str = Field(
        "mlp-128x64",
        description="the teacher's architecture (two-stage)",
        json_schema_extra={"allowed": f"a model name: {MODEL_FAMILIES}"},
    )
    model: str = Field(
        "mlp-32",
        description="the student's architecture of a node whose node config names none",
        json_schema_extra={"allowed": "a model name, as for `teacher-model`"},
    )
    models: str = Field(
        "",
        description='simulation: partition i gets entry i mod their number (e.g. `"mlp-32,mlp-128x64,cnn"`); '
        "empty: every node uses `model`",
        json_schema_extra={"allowed": "comma-separated model names, as for `teacher-model`"},
    )
    proximal_mu: float = Field(
        0.01,
        ge=0,
        description="FedProx: weight mu of the proximal term mu/2 * ||w - w_global||^2 in local training "
        "(0: plain FedAvg)",
    )
    teacher_finetune_epochs: int = Field(
        0, ge=0, description="epochs of local fine-tuning of the global teacher before distilling"
    )
    seed: int = Field(
        42, ge=0, description="seed of every random choice: data, partitions, sampling, initialisation, shuffling"
    )
    output_dir: str = Field(
        "~/fedkd-runs",
        description="where run directories go, on the machine that runs the ServerApp; `~` is the home of its user, "
        "a relative path is relative to its working directory; `<output-dir>/latest` links to the newest run",
        json_schema_extra={"allowed": "a non-empty path"},
    )
    server_test: str = Field(
        "builtin",
        description="the server's test set: the built-in dataset's hold-out, none (`accuracy` is then null and "
        "`federated_accuracy` carries the evaluation), or an .npz with `x`, `y` on the server",
        json_schema_extra={"allowed": '`"builtin"`, `"none"`, a path'},
    )
    resume_from: str = Field(
        "",
        description="continue that run after its last complete round (see the README's Outputs); empty: a new run",
        json_schema_extra={"allowed": "a run directory, or empty"},
    )
    clip_norm: float = Field(
        0.0,
        ge=0,
        description="clip each client's update (its weights minus the global ones) to this L2 norm before "
        "averaging; 0: off",
    )
    dp_epsilon: float = Field(
        0.0,
        ge=0,
        description="sample-level differential privacy: every node trains on its private data with DP-SGD and "
        "spends at most this ε over the whole run (see docs/privacy.md); 0: off",
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="the δ of `dp-epsilon` (well below 1 / a node's examples)")
    dp_max_grad_norm: float = Field(
        1.0, gt=0, description="DP-SGD: each example's gradient is clipped to this L2 norm before the noise"
    )
    max_num_examples: int = Field(
        1_000_000, ge=1, description="a reply claiming more training examples is rejected as implausible"
    )
    public_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="share of an image dataset held out as public data (FedMD, FedDF, ensemble teacher)",
    )
    public_samples_per_round: int = Field(
        0, ge=0, description="public samples used per round, drawn by (`seed`, round); 0: all"
    )
    logits_dtype: Literal["float32", "float16"] = Field(
        "float32", description="how logits travel; `float16` halves their bytes"
    )
    ensemble_teacher: bool = Field(
        False, description="two-stage: phase 2 on the server, from the ensemble of the local teachers' logits"
    )
    transfer_epochs: int = Field(
        5, ge=0, description="FedMD: epochs on the labelled public data before a node's first private training"
    )
    digest_epochs: int = Field(10, ge=1, description="FedMD: epochs toward the consensus per round")
    # 1000 steps, stopping after 500 without improvement: at 300 and 200 a CNN group averaged from
    # one-class clients stayed at chance (mnist5k, Dirichlet 0.1); FedDF's code stops after 2000 of 10^4.
    distill_steps: int = Field(
        1000,
        ge=1,
        description="server-side distillation on public data (FedDF, ensemble teacher): at most this many "
        "Adam steps per group and round",
    )
    distill_patience: int = Field(
        50,
        ge=1,
        description="server-side distillation on public data: stop after this many validations (every 10 "
        "steps) without improvement",
    )
    # feddf-datafree's own budget: each of its steps also runs the generator, and its validation on
    # generated samples is continuous, so it leaves a plateau sooner.
    datafree_steps: int = Field(
        300,
        ge=1,
        description="feddf-datafree: generator steps per round, and at most this many distillation steps on "
        "its samples",
    )
    datafree_patience: int = Field(
        20,
        ge=1,
        description="feddf-datafree: stop distilling after this many validations without improvement (the "
        "validation is the continuous loss toward the ensemble on generated samples, so it sees progress sooner)",
    )
    # FedGen's budget and diversity weight are the authors' code's for MNIST (50 generator steps, 1). Their
    # alpha and beta of 10 are for SGD; under fedkd's Adam they swamped the task loss (digits, Dirichlet 0.1,
    # seed 42: 0.597 against FedAvg's 0.644), where 1 and 1 gave 0.700 (docs/strategies.md).
    fedgen_alpha: float = Field(
        1.0,
        ge=0,
        description="fedgen: weight of the cross-entropy of a node's head on generated features in local "
        "training (decays by 0.98 a round)",
    )
    fedgen_beta: float = Field(
        1.0,
        ge=0,
        description="fedgen: weight of the KL term pulling a node's predictions toward its head on "
        "generated features of the same classes (decays by 0.98 a round)",
    )
    fedgen_generator_steps: int = Field(50, ge=1, description="fedgen: Adam steps of the generator per round")
    fedgen_diversity: float = Field(1.0, ge=0, description="fedgen: weight of the generator's diversity loss")
    server_learning_rate: float = Field(
        0.001, gt=0, description="Adam learning rate of server-side distillation and of the generator"
    )

    @field_validator("strategy")
    @classmethod
    def _registered_strategy(cls, value: str, info: ValidationInfo) -> str:
        # The registry is the ServerApp's; it passes the names in (the ClientApp runs no strategy).
        known = (info.context or {}).get("strategies")
        if known is not None and value not in known:
            raise ValueError(f"unknown strategy; allowed: {', '.join(map(repr, known))}")
        return value

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


def parse_run_config(raw: dict[str, Any], strategies: Collection[str] | None = None) -> RunConfig:
    """Validate a Flower run config (kebab-case keys) into a RunConfig; `strategy` must be one of
    `strategies` when they are given."""
    try:
        return RunConfig.model_validate(
            dict(raw), context={"strategies": None if strategies is None else list(strategies)}
        )
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise ConfigError(problems) from None
