"""The node a message reaches: its run config, name, seed stream and data, loaded once per message (`Node.load`, from
the decoded copy in its state-dir when it has one: client_app/data_cache.py); its models kept across messages (state
and state-dir); and what every method's handlers share: reading the message's settings, scoring a model locally,
the fit of a global model, logits on public inputs."""

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from client_app import data_cache
from client_app.ledger import budget, privacy_metrics, train_private
from common.config import RunConfig, parse_run_config
from common.data import ClientData, load_client_data, load_node_file, load_public
from common.models import build_model, load_record, logits_to_record, to_record
from common.protocol import (
    ARRAYS,
    CLIENT_SECONDS,
    CONFIG,
    DATA_ERROR,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE_INCOMING,
    INDICES,
    LOGITS,
    LOGITS_DTYPE,
    METRICS,
    MODEL,
    NAME,
    NUM_EXAMPLES,
    PUBLIC,
    SERVER_ROUND,
    SPLIT,
    TRAIN_LOSS,
)
from common.seeds import Stream, derive_seed
from common.task import INPUT_SHAPE, NUM_CLASSES, Task
from common.training import LossFn, evaluate, predict_logits


def setting(msg: Message, key: str) -> Any:
    """A value the message's CONFIG must carry: a strategy's setting, or what the action works on."""
    config = msg.content[CONFIG]
    if key not in config:
        raise ValueError(
            f"message config '{key}' is missing from {msg.metadata.message_type}: the ServerApp sends it; "
            "it must run the same fedkd version as this node"
        )
    return config[key]


def node_name(context: Context) -> str:
    """A name that stays the same across runs: node config `name`, else the partition or data file."""
    config = context.node_config
    if "name" in config:
        return str(config["name"])
    if "data-path" in config:
        return str(config["data-path"])
    if "partition-id" in config:
        return f"partition-{config['partition-id']}"
    return f"node-{context.node_id}"


def identity(context: Context) -> ConfigRecord:
    """The node's stable name, for the server's seeded sampling, its architecture, and what its data holds (one
    example's shape and its largest label plus one), or why it cannot be read (query.identify)."""
    cfg = parse_run_config(context.run_config)
    record = ConfigRecord({NAME: node_name(context), MODEL: cfg.node_model(context.node_config)})
    try:
        data = Node.load(context).data
    except (ValueError, OSError) as exc:  # DataError, TaskError, a missing node-config key, an unreadable file
        record[DATA_ERROR] = f"{type(exc).__name__}: {exc}"
        return record
    labels = torch.cat([data.train.y, data.test.y])
    record[INPUT_SHAPE] = list(data.train.example_shape)
    record[NUM_CLASSES] = int(labels.max()) + 1 if len(labels) else 0
    return record


def _whole(config: dict, key: str) -> int:
    """An integer node-config value; bools, fractions and text are refused, not truncated."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).lstrip("-").isdigit():
        raise ValueError(f"node config '{key}' = {value!r}; allowed: a whole number")
    return int(value)


@dataclass
class Node:
    """This node for one message: the run's common config, the node's seed stream and local data."""

    context: Context
    cfg: RunConfig
    stream: int  # the node's key in its seeds: its partition id, or a checksum of its name
    data: ClientData
    task: Task | None = None  # the run's, from the message being handled

    @classmethod
    def load(cls, context: Context, msg: Message | None = None) -> "Node":
        """The node `context` describes: the run config's common keys, and the node's data file or its partition
        of the run's dataset, decoded, or read from the decoded copy its state-dir keeps. With `msg`, the task
        it carries: the data must fit it (a TaskError names both shapes) and is standardised as it says."""
        node = cls._load(context)
        if msg is None:
            return node
        task = Task.from_config(msg.content[CONFIG])
        data = node.data
        labels = torch.cat([data.train.y, data.test.y])
        task.check(data.train.example_shape, labels, f"node {node_name(context)!r}'s data")
        node.data, node.task = data.standardised(task), task
        return node

    @classmethod
    def _load(cls, context: Context) -> "Node":
        cfg = parse_run_config(context.run_config)
        config = context.node_config
        state_dir = str(config["state-dir"]) if "state-dir" in config else None
        if "data-path" in config:
            stream, path = zlib.crc32(node_name(context).encode()), str(config["data-path"])
            key = data_cache.file_key(cfg, path, stream)
            data = data_cache.cached(state_dir, key, lambda: load_node_file(path, cfg, stream))
            return cls(context, cfg, stream, data)
        if "partition-id" not in config or "num-partitions" not in config:
            missing = "partition-id" if "partition-id" not in config else "num-partitions"
            raise ValueError(
                f"node config '{missing}' is missing; start the SuperNode with --node-config "
                "'data-path=\"/path/part.npz\"' or 'partition-id=<int> num-partitions=<int>'"
            )
        partition_id, num_partitions = (_whole(config, key) for key in ("partition-id", "num-partitions"))
        if num_partitions < 1:
            raise ValueError(f"node config 'num-partitions' = {num_partitions}; allowed: 1 or more")
        key = data_cache.partition_key(cfg, partition_id, num_partitions)
        data = data_cache.cached(state_dir, key, lambda: load_client_data(cfg, partition_id, num_partitions))
        return cls(context, cfg, partition_id, data)

    def _saved_path(self, what: str) -> Path | None:
        """Where node config `state-dir` keeps this run's `what` across SuperNode restarts."""
        if "state-dir" not in self.context.node_config:
            return None
        return Path(str(self.context.node_config["state-dir"])) / f"run-{self.context.run_id}" / f"{what}.pt"

    def keep(self, what: str, model: torch.nn.Module) -> None:
        """Hold `model` in the node's state, and in its state-dir when it has one."""
        self.context.state[what] = to_record(model)
        if saved := self._saved_path(what):
            saved.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), saved.with_suffix(".tmp"))
            saved.with_suffix(".tmp").replace(saved)

    def restore(self, what: str, model: torch.nn.Module) -> bool:
        """Load `what` into `model` from the node's state or state-dir; False if the node holds none."""
        if what in self.context.state.array_records:
            load_record(model, self.context.state[what])
            return True
        if (saved := self._saved_path(what)) and saved.is_file():
            # The SuperNode restarted and lost context.state; its state-dir kept the model.
            model.load_state_dict(torch.load(saved, weights_only=True))
            self.context.state[what] = to_record(model)
            return True
        return False

    def eval_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        """The model's counts on the local test split; none with DP on."""
        if budget(self) > 0:
            # The local test split is private data too, and these exact counts would release it unaccounted.
            return {}
        test = self.data.test
        loss, correct = evaluate(model, test.x, test.y)
        return {EVAL_EXAMPLES: len(test), EVAL_CORRECT: correct, EVAL_LOSS_SUM: loss * len(test)}

    def train_kwargs(self, seed: int, epochs: int | None = None) -> dict:
        """Local training's settings from the run config; `epochs` overrides `local-epochs`."""
        return {
            "epochs": epochs or self.cfg.local_epochs,
            "batch_size": self.cfg.batch_size,
            "learning_rate": self.cfg.learning_rate,
            "seed": seed,
        }

    def fit(
        self,
        msg: Message,
        model_loss: Callable[[torch.nn.Module], LossFn] | None = None,
        **train_kwargs,
    ) -> Message:
        """Shared body of the weight-training actions: score the incoming global model, train, reply.
        `model_loss` builds a loss that reads the model being trained (FedGen's, through its head)."""
        start = time.perf_counter()
        name = str(setting(msg, MODEL))
        model = load_record(build_model(name, self.task), msg.content[ARRAYS])
        metrics = self.eval_metrics(model) if msg.content[CONFIG].get(EVALUATE_INCOMING, False) else {}
        server_round = int(setting(msg, SERVER_ROUND))
        seed = derive_seed(self.cfg.seed, Stream.LOCAL_TRAINING, zlib.crc32(name.encode()), server_round, self.stream)
        if model_loss is not None:
            train_kwargs["loss_fn"] = model_loss(model)
        loss = train_private(self, msg, model, seed, **train_kwargs)
        if budget(self) == 0:
            # Under DP the loss on private batches would leave the node unnoised and uncharged: it stays.
            metrics[TRAIN_LOSS] = loss
        metrics[NUM_EXAMPLES] = len(self.data.train)
        metrics.update(privacy_metrics(self))
        metrics[CLIENT_SECONDS] = time.perf_counter() - start
        return Message(RecordDict({ARRAYS: to_record(model), METRICS: MetricRecord(metrics)}), reply_to=msg)

    def public_inputs(self, msg: Message) -> torch.Tensor:
        """The inputs a message names: rows of the public data."""
        if (split := setting(msg, SPLIT)) != PUBLIC:
            raise ValueError(f"message config '{SPLIT}' = {split!r}; allowed: {PUBLIC!r}")
        return load_public(self.cfg, self.task).x[torch.as_tensor(list(setting(msg, INDICES)), dtype=torch.long)]

    def logits_reply(self, msg: Message, model: torch.nn.Module) -> Message:
        """query.logits' reply: `model`'s logits on the public inputs the message names."""
        logits = predict_logits(model, self.public_inputs(msg))
        # Logits of a DP-trained model on public inputs are post-processing: they cost no ε.
        metrics = MetricRecord({NUM_EXAMPLES: len(self.data.train), **privacy_metrics(self)})
        record = logits_to_record(logits, str(setting(msg, LOGITS_DTYPE)))
        return Message(RecordDict({LOGITS: record, METRICS: metrics}), reply_to=msg)
