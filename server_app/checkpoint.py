"""The server's checkpoint after every round, and resuming a run from it (run config `resume-from`)."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord

from common.config import RESUMABLE_CHANGES, ConfigError
from server_app.records import HISTORY, RoundRecord

CHECKPOINT = "checkpoint.pt"


@dataclass
class Checkpoint:
    """Everything needed to continue after the last complete round."""

    phase: str
    server_round: int
    # The run's history up to and including this round.
    history: list[RoundRecord]
    globals: dict[str, ArrayRecord]
    sampler_state: tuple
    config: dict
    # What a strategy keeps between rounds besides the global models (two-stage's final teacher,
    # feddf-datafree's generator).
    strategy_state: dict[str, ArrayRecord]


def _tensors(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}


def save(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint atomically (write, then rename)."""
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(
        {
            # The history as JSON data: weights_only loading takes plain containers only.
            "phase": ckpt.phase,
            "round": ckpt.server_round,
            "history": HISTORY.dump_python(ckpt.history),
            "globals": {name: _tensors(arrays) for name, arrays in ckpt.globals.items()},
            "sampler_state": ckpt.sampler_state,
            "config": ckpt.config,
            "strategy_state": {name: _tensors(arrays) for name, arrays in ckpt.strategy_state.items()},
        },
        tmp,
    )
    os.replace(tmp, run_dir / CHECKPOINT)


def load(run_dir: Path, config: dict) -> Checkpoint:
    """The checkpoint of `run_dir`; a ConfigError if it is missing or was made with another `config` (the run
    config as server_app.settings.config_dump writes it)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise ConfigError(
            f"run config 'resume-from' = {str(run_dir)!r}: no {CHECKPOINT} there; allowed: a fedkd run directory"
        )
    import pickle

    try:
        raw = torch.load(path, weights_only=True)
    # torch's zip reader raises OSError on some truncations.
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
        raw = None
    if not isinstance(raw, dict) or not isinstance(raw.get("config"), dict):
        raise ConfigError(
            f"run config 'resume-from' = {str(run_dir)!r}: {str(path)!r} cannot be read as a fedkd checkpoint "
            f"(truncated, or another kind of file); allowed: a fedkd run directory with an intact {CHECKPOINT}"
        )
    ours = config
    changed = sorted(
        k
        for k in ours.keys() | raw["config"].keys()
        if k not in RESUMABLE_CHANGES and ours.get(k) != raw["config"].get(k)
    )
    if changed:
        details = ", ".join(f"'{k}' = {ours.get(k)!r} (checkpoint: {raw['config'].get(k)!r})" for k in changed)
        raise ConfigError(
            f"run config 'resume-from' = {str(run_dir)!r} was made with another config: {details}; "
            f"only {sorted(RESUMABLE_CHANGES)} may change"
        )
    try:
        return Checkpoint(
            phase=_typed(raw, "phase", str),
            server_round=_typed(raw, "round", int),
            history=HISTORY.validate_python(raw.get("history")),
            globals={name: ArrayRecord(t) for name, t in _typed(raw, "globals", dict).items()},
            strategy_state={name: ArrayRecord(t) for name, t in _typed(raw, "strategy_state", dict).items()},
            sampler_state=_typed(raw, "sampler_state", object),
            config=raw["config"],
        )
    except (ValueError, TypeError, AttributeError) as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            f"run config 'resume-from' = {str(run_dir)!r}: {str(path)!r} is not a complete fedkd checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); allowed: a fedkd run directory with an intact "
            f"{CHECKPOINT}"
        ) from None


def _typed(raw: dict, key: str, kind: type):
    """`raw[key]` if it is a `kind`; a TypeError naming the field otherwise."""
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"field '{key}' is {type(value).__name__}, expected {kind.__name__}")
    return value
