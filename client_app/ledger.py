"""The node's DP ledger (run config `dp-epsilon` > 0, or node config `dp-max-epsilon`): its noise, calibrated on
first use to the run's horizon of private training; what it has spent, kept in context.state and in node config
`state-dir`, keyed by the node's data, so that every run on the same data spends from one ledger; and the training on
private data that charges it.

The budget is the run's `dp-epsilon`, capped by the node operator's `dp-max-epsilon`: the server cannot raise it,
nor turn DP off on a node that sets a ceiling (such a node refuses every message of a run without DP)."""

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from flwr.app import ConfigRecord, Message

from common.models import dp_compatible
from common.privacy import DPSGD, Ledger, noise_multiplier, sample_rate, spent_epsilon, steps_per_epoch
from common.protocol import CONFIG, DP_EPSILON, PRIVATE_EPOCHS
from common.seeds import Stream, derive_seed
from common.training import train

if TYPE_CHECKING:
    from client_app.node import Node

PRIVACY = "privacy"  # the ledger's key in context.state


MAX_PRIVATE_EPOCHS = 1_000_000  # a bound on the server's horizon: calibration over more would never end


def budget(node: "Node") -> float:
    """The ε this node may spend in the run: the run's `dp-epsilon`, at most node config `dp-max-epsilon`; 0 with
    DP off. A node with a ceiling refuses a run without DP, naming both."""
    config = node.context.node_config
    if "dp-max-epsilon" not in config:
        return node.cfg.dp_epsilon
    ceiling = config["dp-max-epsilon"]
    if isinstance(ceiling, bool) or not isinstance(ceiling, (int, float)) or not 0 < ceiling < float("inf"):
        raise ValueError(f"node config 'dp-max-epsilon' = {ceiling!r}; allowed: a finite number above 0")
    if node.cfg.dp_epsilon == 0:
        raise ValueError(
            f"node config 'dp-max-epsilon' = {ceiling}: this node's data leaves it only under differential privacy, "
            "and the run has 'dp-epsilon' = 0 (off); allowed: a run with dp-epsilon > 0"
        )
    return min(node.cfg.dp_epsilon, float(ceiling))


def _ledger_path(node: "Node") -> Path | None:
    """Where node config `state-dir` keeps the DP ledger: one file per dataset of the node, whatever the run."""
    if "state-dir" not in node.context.node_config:
        return None
    # Every run on this data spends from the same ledger: a resumed run (a new id), a rerun, another seed or
    # learning rate alike. What identifies the data: the node's name and its file, or its partition of the dataset.
    config = node.context.node_config
    data = {key: str(config[key]) for key in ("name", "data-path", "partition-id", "num-partitions") if key in config}
    if "data-path" in data:
        data["data-path"] = str(Path(data["data-path"]).expanduser().resolve())
    else:
        data["dataset"] = node.cfg.dataset
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return Path(str(config["state-dir"])) / f"privacy-{digest}.json"


def _held_ledger(node: "Node") -> dict | None:
    """The ledger the node's state or state-dir holds, as JSON data; None before its first DP training."""
    if PRIVACY in node.context.state.config_records:
        return json.loads(str(node.context.state[PRIVACY][PRIVACY]))
    if (saved := _ledger_path(node)) and saved.is_file():
        # A restarted SuperNode, or a resumed run (a new run id, a fresh context.state): state-dir kept what the
        # node has spent.
        return json.loads(saved.read_text())
    return None


def _private_epochs(config: ConfigRecord) -> int:
    """The run's horizon of private training the server sent (`private-epochs`), checked; a clear error without
    it or out of range."""
    if PRIVATE_EPOCHS not in config:
        raise ValueError(
            f"message config '{PRIVATE_EPOCHS}' is missing with run config 'dp-epsilon' > 0: the ServerApp "
            "sends it with every message of a DP run; it must run the same fedkd version as this node"
        )
    epochs = config[PRIVATE_EPOCHS]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_PRIVATE_EPOCHS:
        raise ValueError(f"message config '{PRIVATE_EPOCHS}' = {epochs!r}; allowed: 1 to {MAX_PRIVATE_EPOCHS}")
    return epochs


def _ledger(node: "Node", private_epochs: int) -> Ledger:
    """The node's DP ledger: the one it holds, else a new one whose noise spends `dp-epsilon` over
    `private_epochs` epochs of its private data (the most it may train in the run)."""
    cfg, epsilon = node.cfg, budget(node)
    if (held := _held_ledger(node)) is None:
        n = len(node.data.train)
        steps = private_epochs * steps_per_epoch(n, cfg.batch_size)
        held = {
            "noise_multiplier": noise_multiplier(epsilon, cfg.dp_delta, sample_rate(n, cfg.batch_size), steps),
            "history": [],
        }
    return Ledger(
        epsilon,
        cfg.dp_delta,
        cfg.dp_max_grad_norm,
        held["noise_multiplier"],
        [tuple(step) for step in held["history"]],
    )


def _keep_ledger(node: "Node", ledger: Ledger) -> None:
    """Hold the ledger in the node's state, and in its state-dir when it has one."""
    text = json.dumps({"noise_multiplier": ledger.noise_multiplier, "history": ledger.history})
    node.context.state[PRIVACY] = ConfigRecord({PRIVACY: text})
    if saved := _ledger_path(node):
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.with_suffix(".tmp").write_text(text)
        saved.with_suffix(".tmp").replace(saved)


def train_private(
    node: "Node", msg: Message, model: torch.nn.Module, seed: int, epochs: int | None = None, **train_kwargs
) -> float:
    """`train` on the node's private training data: DP-SGD charged to its ledger when `dp-epsilon` > 0."""
    x = node.data.train.x
    if (epsilon := budget(node)) == 0:
        return train(model, x, **node.train_kwargs(seed, epochs), **train_kwargs)
    if reason := dp_compatible(model):
        # Refused before anything is charged: the node's own model config could name one the server did not check.
        raise ValueError(f"dp-epsilon = {epsilon}: {reason}")
    ledger = _ledger(node, _private_epochs(msg.content[CONFIG]))
    try:
        privacy = DPSGD(ledger, derive_seed(node.cfg.seed, Stream.DP_NOISE, seed))
        return train(model, x, **node.train_kwargs(seed, epochs), **train_kwargs, privacy=privacy)
    finally:
        # Kept even when training fails midway: its steps were charged before the first one.
        _keep_ledger(node, ledger)


def privacy_metrics(node: "Node") -> dict[str, float]:
    """The ε this node has spent, for the reply; nothing when DP is off."""
    if budget(node) == 0:
        return {}
    held = _held_ledger(node)
    return {DP_EPSILON: spent_epsilon([tuple(step) for step in held["history"]], node.cfg.dp_delta) if held else 0.0}
