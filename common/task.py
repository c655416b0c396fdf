"""The task a run learns: the shape of one example and the number of classes, learned from the data.

Every model is built for a Task (common/models.py `build_model`). The ServerApp fixes it before round 1, from
its test set or, with none, from what the first nodes report (server_app/task.py), and sends it with every
message (CONFIG keys below), so a node builds the same models and checks that its own data fits. Data is kept
flat, (samples, features); `input_shape` says how a model reads one row ((features,) for a table, (C, H, W) for
images).

A table's columns are standardised with the mean and standard deviation of the server's test set, which the task
carries (`mean`, `std`; empty for images and the built-in datasets): every node applies the same affine map to its
rows, so no node's data is pooled or sent to compute it.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# CONFIG keys of every message that trains or evaluates, and of the identify reply (what a node's data is).
INPUT_SHAPE = "task-input-shape"
NUM_CLASSES = "task-num-classes"
MEAN = "task-mean"
STD = "task-std"
MAX_FEATURES = 50_000_000  # a bound on a server-sent shape, so a node never allocates for an absurd one


class TaskError(ValueError):
    """Data or a message whose task does not fit the run's; the message names both."""


def describe(shape: tuple[int, ...]) -> str:
    """A shape as the docs write it: (3, 32, 32), or (40,) for a table."""
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"


@dataclass(frozen=True)
class Task:
    """One example's shape ((features,) or (channels, height, width)), the number of classes, and a table's
    per-column standardisation (empty: none)."""

    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        if not 1 <= len(shape) <= 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise TaskError(f"input shape {shape}; allowed: (features,) or (channels, height, width) of sizes >= 1")
        if math.prod(shape) > MAX_FEATURES:
            raise TaskError(f"input shape {describe(shape)} has {math.prod(shape)} values; allowed: {MAX_FEATURES}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise TaskError(f"{self.num_classes!r} classes; allowed: 2 or more")
        if (self.mean or self.std) and not (len(self.mean) == len(self.std) == math.prod(shape)):
            raise TaskError(f"standardisation of {len(self.mean)} columns for inputs of shape {describe(shape)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise TaskError("standardisation: means must be finite and standard deviations finite and positive")
        object.__setattr__(self, "input_shape", shape)

    @property
    def features(self) -> int:
        """Values in one example: the width of a flat row."""
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def describe(self) -> str:
        return f"inputs {describe(self.input_shape)}, {self.num_classes} classes"

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Flat rows with the task's standardisation applied (as they are without one)."""
        if not self.mean:
            return x
        return (x - torch.tensor(self.mean, dtype=x.dtype)) / torch.tensor(self.std, dtype=x.dtype)

    def to_config(self) -> dict[str, Any]:
        """The task as CONFIG entries of a message."""
        return {
            INPUT_SHAPE: list(self.input_shape),
            NUM_CLASSES: self.num_classes,
            MEAN: list(self.mean),
            STD: list(self.std),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Task":
        """The task a message carries, checked; TaskError names what is wrong."""
        missing = [k for k in (INPUT_SHAPE, NUM_CLASSES) if k not in config]
        if missing:
            raise TaskError(f"message config lacks {missing}: the ServerApp must run the same fedkd version")
        shape, classes = config[INPUT_SHAPE], config[NUM_CLASSES]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise TaskError(f"message config '{INPUT_SHAPE}' = {shape!r}; allowed: a list of whole numbers")
        if not isinstance(classes, int) or isinstance(classes, bool):
            raise TaskError(f"message config '{NUM_CLASSES}' = {classes!r}; allowed: a whole number")
        stats = [config.get(k, []) for k in (MEAN, STD)]
        if not all(isinstance(s, list) and all(isinstance(v, float) for v in s) for s in stats):
            raise TaskError(f"message config '{MEAN}' and '{STD}' must be lists of floats")
        return cls(tuple(shape), classes, tuple(stats[0]), tuple(stats[1]))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether examples of `shape` are this task's: its input shape, or flat rows of its width."""
        return tuple(shape) in (self.input_shape, (self.features,))

    def check(self, shape: tuple[int, ...], labels: np.ndarray | torch.Tensor, where: str) -> None:
        """Raise TaskError unless examples of `shape` with `labels` fit this task. Flat rows of the task's width fit
        an image task too: its pixels in (channels, height, width) order, as the built-in datasets keep them."""
        if not self.accepts(shape):
            raise TaskError(
                f"{where} holds examples of shape {describe(tuple(shape))}; the run's task has "
                f"{describe(self.input_shape)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise TaskError(
                f"{where} holds labels {int(labels.min())}..{int(labels.max())}; the run's task has "
                f"{self.num_classes} classes (labels 0 to {self.num_classes - 1})"
            )


def standardisation(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-column (mean, std) of flat rows; a constant column gets std 1, so it maps to 0 and nothing divides by 0."""
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[~(std > 1e-12)] = 1.0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
