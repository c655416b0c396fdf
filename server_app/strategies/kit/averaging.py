"""Grouped averaging in three steps a strategy can change one at a time: clip each update, average a group's
replies (Flower's `aggregate_arrayrecords`, weighted by `num-examples`), apply the average to the group's model."""

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.protocol import ARRAYS, NUM_EXAMPLES
from server_app.round import Globals, Reply

# (architecture, its global model, the average of its replies) -> the group's new global model.
Apply = Callable[[str, ArrayRecord, ArrayRecord], ArrayRecord]


def clip_update(update: ArrayRecord, base: ArrayRecord, max_norm: float) -> bool:
    """Scale `update`'s difference from `base` to an L2 norm of at most `max_norm`, in place; True if it was."""
    deltas = {k: update[k].numpy().astype(np.float64) - base[k].numpy() for k in update.keys()}
    norm = float(np.sqrt(sum(float((d * d).sum()) for d in deltas.values())))
    if norm <= max_norm:
        return False
    for key, delta in deltas.items():
        start = base[key].numpy()
        update[key] = Array((start + delta * (max_norm / norm)).astype(start.dtype))
    return True


def average(replies: list[Reply]) -> ArrayRecord:
    """FedAvg of the replies' weights, each weighted by its `num-examples`."""
    return aggregate_arrayrecords([r.content for r in replies], NUM_EXAMPLES)


def take_average(name: str, base: ArrayRecord, averaged: ArrayRecord) -> ArrayRecord:
    """FedAvg's apply step: the average is the new model."""
    return averaged


def grouped_average(
    globals_: Globals,
    replies: list[Reply],
    architecture: Callable[[int], str],
    clip_norm: float,
    apply: Apply = take_average,
) -> tuple[Globals, int]:
    """Each group's replies clipped (when `clip_norm` > 0), averaged and applied to its model; a group without
    replies keeps its model. Returns the new models and how many updates were clipped."""
    out = dict(globals_)
    clipped = 0
    for name in globals_:
        group = [r for r in replies if architecture(r.node) == name]
        if not group:
            continue
        if clip_norm > 0:
            clipped += sum(clip_update(r.content[ARRAYS], globals_[name], clip_norm) for r in group)
        out[name] = apply(name, globals_[name], average(group))
    return out, clipped
