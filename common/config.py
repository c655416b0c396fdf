"""The run config: the keys every run shares, validated before round 1, and the base of a strategy's settings.

A Flower run config is one flat mapping. Its plain keys (`dataset`, `seed`, ...) are `RunConfig`'s: what
every run shares, and what every node reads (its data, partitions, local training, privacy). A strategy's
own settings sit in a table named after it (`[tool.flwr.app.config.fedprox]` in pyproject.toml, flattened
by Flower to `fedprox.proximal-mu`); the ServerApp validates them with the strategy's `Settings` model, and a
node receives the ones it needs in the message that needs them, never from its copy of the run config.
"""

import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


S = TypeVar("S", bound="Settings")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


# Keys that may change between a run and its resumption; every other key shapes the result.
RESUMABLE_CHANGES = {"resume-from", "output-dir", "round-timeout", "min-replies"}


MODEL_FAMILIES = (
    "mlp-<width>[x<width>...] (an MLP with those hidden layers, e.g. mlp-32, mlp-128x64), cnn, "
    "resnet-8, resnet-20 (the CIFAR ResNets), shufflenet-v2 (a ShuffleNetV2 0.5x), "
    "or 'package.module:factory' (a model of your own: factory(input_shape, num_classes) -> nn.Module)"
)
_MLP_NAME = re.compile(r"mlp-([1-9][0-9]*(?:x[1-9][0-9]*)*)")


def mlp_widths(name: str) -> tuple[int, ...] | None:
    """Hidden widths of a registry name such as "mlp-128x64", or None if it names no MLP."""
    match = _MLP_NAME.fullmatch(name)
    return tuple(int(w) for w in match.group(1).split("x")) if match else None


def check_model_name(name: str) -> None:
    """Raise ValueError unless `name` is in common.models' registry or, syntactically, a factory reference
    "package.module:factory" (whose import and output common.models.build_model_for checks)."""
    named = ("cnn", "resnet-8", "resnet-20", "shufflenet-v2")
    factory = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
    if name not in named and mlp_widths(name) is None and re.fullmatch(factory, name) is None:
        raise ValueError(f"unknown model {name!r}; allowed: {MODEL_FAMILIES}")


def toml_value(value: Any) -> str:
    """A run- or node-config value written as in TOML, and so as in `--run-config` and `--node-config`: strings
    quoted and escaped, booleans in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def model_cycle(text: str) -> list[str]:
    """Run config `models` ("mlp-32,cnn"): partition i of a simulation gets entry i mod length."""
    return [part.strip() for part in text.split(",") if part.strip()]


class Settings(BaseModel):
    """Validated run-config keys: kebab-case aliases, strict types, no unknown key, frozen.

    `RunConfig` is the run's common keys; each strategy declares its own subclass (server_app/strategies/).
    Field descriptions, and `allowed` notes for checks no type or bound expresses, are the source of
    docs/configuration.md (`python -m server_app.config_docs`; a test fails when it is stale).
    """

    # allow_inf_nan=False: an infinite deadline or budget is refused by name, not waited out or never spent.
    model_config = ConfigDict(
        alias_generator=_kebab, populate_by_name=True, extra="forbid", strict=True, frozen=True, allow_inf_nan=False
    )


class RunConfig(Settings):
    """The keys every run shares: the task and its data, sampling, deadlines, local training, privacy, outputs."""

    strategy: str = Field(
        "two-stage",
        description="the federated method (see docs/strategies.md)",
        json_schema_extra={
            "allowed": "the name of a strategy registered in `server_app/strategies/`, as listed in docs/strategies.md"
        },
    )
    dataset: str = Field(
        "digits",
        description="the data: a built-in dataset, a Hugging Face hub id, a local file or directory `datasets` reads, "
        "or a directory of node files part-<i>.* (see docs/data.md)",
        json_schema_extra={
            "allowed": '`"digits"`, `"mnist5k"`, `"synthetic"`, a hub id such as `"uoft-cs/cifar10"`, or a path'
        },
    )
    input_column: str = Field(
        "",
        description="the column of a dataset's inputs; empty: the first of image, img, pixel_values, pixels, x, "
        "features, else every numeric column (a table)",
    )
    label_column: str = Field(
        "",
        description="the column of a dataset's labels; empty: the first of label, labels, fine_label, character, "
        "y, target, class",
    )
    train_split: str = Field("train", min_length=1, description="the split a dataset's clients train on")
    test_split: str = Field(
        "",
        description="the split the server tests on; empty: `test` if the dataset has one, else a stratified "
        "20 % hold-out of the training split",
    )
    num_classes: int = Field(
        0, ge=0, description="the task's classes; 0: what the dataset declares, else its largest label plus one"
    )
    standardise: bool = Field(
        True,
        description="standardise a table's columns (not images, not the built-in datasets) with the mean and "
        "standard deviation of the server's test set, the same map on every node",
    )
    public_dataset: str = Field(
        "",
        description="where FedMD, FedDF and the ensemble teacher take public data from, in any form `dataset` "
        "takes; empty: a public slice held out of `dataset`",
    )
    public_split: str = Field("train", min_length=1, description="the split of `public-dataset` used as public data")
    partitioner: Literal["iid", "dirichlet", "pathological", "natural"] = Field(
        "dirichlet",
        description="how the training data is split among clients; `natural`: one client per value of "
        "`partition-column` (e.g. FEMNIST's writer_id)",
    )
    partition_column: str = Field("", description="the column `natural` partitions by")
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
    num_student_rounds: int = Field(
        25, ge=1, description="rounds of a strategy's last phase, the one that trains the delivered (student) models"
    )
    fraction_train: float = Field(0.5, gt=0, le=1, description="share of the connected nodes sampled per round")
    fraction_evaluate: float = Field(
        1.0, ge=0, le=1, description="share of nodes scoring each phase's final model (0: skip)"
    )
    min_evaluate_nodes: int = Field(
        1,
        ge=1,
        description="nodes scoring each phase's final model at least (when `fraction-evaluate` > 0); more than "
        "there are nodes: all of them",
    )
    identify_all_max_nodes: int = Field(
        1000,
        ge=0,
        description="a federation of at most this many nodes is asked for its nodes' names before round 1, so one "
        "seed samples the same nodes in every run; a larger one asks a node when it is first sampled, so its "
        "samples differ between runs (docs/architecture.md, Determinism)",
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
        description="the server's test set, which also defines the task: `dataset`'s test split or hold-out (a "
        "node-file directory's server-test.*), none (`accuracy` is then null, `federated_accuracy` carries the "
        "evaluation and the nodes' data defines the task), or a file on the server in any form a node file takes",
        json_schema_extra={"allowed": '`"builtin"`, `"none"`, a path'},
    )
    resume_from: str = Field(
        "",
        description="continue that run after its last complete round (see docs/outputs.md); empty: a new run",
        json_schema_extra={"allowed": "a run directory, or empty"},
    )
    tracking: Literal["", "tensorboard", "mlflow"] = Field(
        "",
        description="also write every round's numbers to TensorBoard event files or an MLflow run, to compare runs "
        "in those tools; needs fedkd's `tracking` extra where the ServerApp runs (see docs/outputs.md); empty: off",
    )
    tracking_uri: str = Field(
        "",
        description="where `tracking` writes: for TensorBoard a directory, each run in a subdirectory named as its "
        "run directory; for MLflow a tracking URI (a tracking server's `http://host:port`, `sqlite:///<path>`); "
        "empty: inside the run directory (`tensorboard/`, or an SQLite store `mlflow.db`)",
        json_schema_extra={"allowed": "a directory (TensorBoard), an MLflow tracking URI, or empty"},
    )
    clip_norm: float = Field(
        0.0,
        ge=0,
        description="clip each client's update (its weights minus the global ones) to this L2 norm before "
        "averaging; 0: `clip-median-multiple` sets the bound",
    )
    clip_median_multiple: float = Field(
        3.0,
        ge=0,
        description="with `clip-norm` 0, clip each update to this multiple of the lower median of its group's "
        "update norms in the round; 0: no clipping",
    )
    max_weight_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="no reply weighs more than this share of its group's `mean` (the excess goes to the others; "
        "equal weights where the share times the replies is 1 or less); 1: plain FedAvg weights",
    )
    aggregator: Literal["mean", "median", "trimmed-mean", "krum", "multi-krum", "bulyan"] = Field(
        "mean",
        description="how a group's weights are combined: FedAvg's weighted mean, or one of Flower's robust "
        "aggregators (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)",
    )
    aggregator_trim: float = Field(
        0.2, gt=0, lt=0.5, description="`trimmed-mean`: the share cut from each end of every coordinate"
    )
    aggregator_malicious: int = Field(
        1, ge=0, description="`krum`, `multi-krum`, `bulyan`: the attackers among a group's replies they assume"
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
        description="share of a dataset held out as public data (FedMD, FedDF, ensemble teacher) when "
        "`public-dataset` is empty",
    )

    @field_validator("strategy")
    @classmethod
    def _registered_strategy(cls, value: str, info: ValidationInfo) -> str:
        # The registry is the ServerApp's; it passes the names in (the ClientApp runs no strategy).
        known = (info.context or {}).get("strategies")
        if known is not None and value not in known:
            raise ValueError(f"unknown strategy; allowed: {', '.join(map(repr, known))}")
        return value

    @field_validator("model")
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

    @field_validator("dataset")
    @classmethod
    def _some_dataset(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected a built-in dataset, a hub id or a path, got an empty string")
        return value

    @model_validator(mode="after")
    def _natural_needs_a_column(self) -> "RunConfig":
        if self.partitioner == "natural" and not self.partition_column:
            raise ValueError("partitioner 'natural' needs run config 'partition-column' (e.g. \"writer_id\")")
        return self

    @model_validator(mode="after")
    def _tracking_uri_needs_tracking(self) -> "RunConfig":
        # A URI without a backend would be ignored silently: the user meant to track.
        if self.tracking_uri and not self.tracking:
            raise ValueError(
                f"'tracking-uri' = {self.tracking_uri!r} needs run config 'tracking' (\"tensorboard\" or "
                '"mlflow"), which is off'
            )
        return self

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


def _describe(error: dict[str, Any], model: type[Settings], table: str) -> str:
    prefix = f"{table}." if table else ""
    key = prefix + (".".join(str(p) for p in error["loc"]) or "")
    value = error.get("input")
    if not error["loc"]:
        return f"run config: {error['msg'].removeprefix('Value error, ')}"
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(prefix + (f.alias or n) for n, f in model.model_fields.items())) or "none"
        return f"unknown run config key '{key}' (value {value!r}); known keys: {known}"
    return f"run config '{key or 'run config'}' = {value!r}: {error['msg']}"


def validate_settings(model: type[S], raw: Mapping[str, Any], table: str = "", **context: Any) -> S:
    """`raw` (kebab-case keys, those of `table` without its prefix) validated into `model`; a ConfigError naming
    every wrong key with its table, its value and what is allowed."""
    try:
        return model.model_validate(dict(raw), context=context)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e, model, table) for e in exc.errors(include_url=False))) from None


def split_tables(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A flat Flower run config as (its plain keys, {table: its keys}): `fedprox.proximal-mu` is key
    `proximal-mu` of table `fedprox`."""
    plain: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        table, dot, rest = key.partition(".")
        if dot:
            tables.setdefault(table, {})[rest] = value
        else:
            plain[key] = value
    return plain, tables


def parse_run_config(raw: Mapping[str, Any], strategies: Collection[str] | None = None) -> RunConfig:
    """The run config's common keys as a RunConfig; `strategy` must be one of `strategies` when they are given.
    The strategies' tables are left to the ServerApp (server_app/settings.py): a node never reads them."""
    plain, _ = split_tables(raw)
    return validate_settings(RunConfig, plain, strategies=None if strategies is None else list(strategies))
