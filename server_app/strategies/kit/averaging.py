"""Grouped averaging in three steps a strategy can change one at a time: clip each update, aggregate a group's
replies, apply the aggregate to the group's model.

Every step bounds what one node can do to the model (run config keys in brackets):
- clipping: each update (a reply's weights minus the global ones) is scaled to at most `clip-norm`, or, with
  `clip-norm` 0, to `clip-median-multiple` times the lower median of the group's update norms: a node's step can
  be at most a few times an honest one's, whatever it sends;
- aggregation [`aggregator`]: `mean` is FedAvg weighted by `num-examples`, with no node's weight above
  `max-weight-share` of the group's (the excess spread over the others), so a node claiming a million examples
  weighs no more than that share; `median`, `trimmed-mean`, `krum`, `multi-krum` and `bulyan` are Flower's own
  robust aggregators (`flwr.serverapp.strategy`: FedMedian, FedTrimmedAvg with `aggregator-trim`, Krum and
  MultiKrum and Bulyan with `aggregator-malicious` attackers assumed), called on the group's replies. A group with
  too few replies for Krum (more than 2f + 2) or Bulyan (at least 4f + 3) falls back to the median, and the
  round's metrics count it.
"""

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.config import RunConfig
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from server_app.round import Globals, Reply
from server_app.strategies.kit.server_optimiser import quiet_flower

# (architecture, its global model, the aggregate of its replies) -> the group's new global model.
Apply = Callable[[str, ArrayRecord, ArrayRecord], ArrayRecord]


@dataclass(frozen=True)
class Robustness:
    """How a group's replies are clipped and aggregated (see the module docstring)."""

    aggregator: str = "mean"
    max_weight_share: float = 1.0
    clip_norm: float = 0.0
    clip_median_multiple: float = 0.0
    trim: float = 0.2
    malicious: int = 1

    @classmethod
    def of(cls, cfg: RunConfig) -> "Robustness":
        return cls(
            cfg.aggregator,
            cfg.max_weight_share,
            cfg.clip_norm,
            cfg.clip_median_multiple,
            cfg.aggregator_trim,
            cfg.aggregator_malicious,
        )


def update_norm(update: ArrayRecord, base: ArrayRecord) -> float:
    """The L2 norm of `update` minus `base` over all arrays."""
    squares = (((update[k].numpy().astype(np.float64) - base[k].numpy()) ** 2).sum() for k in base.keys())
    return float(np.sqrt(sum(float(s) for s in squares)))


def clip_update(update: ArrayRecord, base: ArrayRecord, max_norm: float) -> bool:
    """Scale `update`'s difference from `base` to an L2 norm of at most `max_norm`, in place; True if it was."""
    norm = update_norm(update, base)
    if norm <= max_norm:
        return False
    for key in update.keys():
        start = base[key].numpy()
        delta = update[key].numpy().astype(np.float64) - start
        update[key] = Array((start + delta * (max_norm / norm)).astype(start.dtype))
    return True


def capped_weights(weights: list[float], share: float) -> list[float]:
    """`weights` with none above `share` of their sum: the largest are lowered to a common level t, the one where
    t = share x (sum of the others + t for each lowered). Equal weights where `share` x their number is below 1."""
    if share >= 1 or not weights:
        return list(weights)
    if share * len(weights) <= 1:
        return [1.0] * len(weights)
    ordered = sorted(weights, reverse=True)
    rest = sum(ordered)
    for lowered in range(len(ordered)):
        if share * lowered >= 1:
            break
        if lowered:
            rest -= ordered[lowered - 1]
        level = share * rest / (1 - share * lowered)
        if level >= ordered[lowered]:
            # No weight beyond the first `lowered` exceeds the level: cap those, keep the rest.
            return [min(w, level) if lowered else w for w in weights]
    return [1.0] * len(weights)


def _weighted(replies: list[Reply], weights: list[float]) -> list[RecordDict]:
    """Each reply's weights (in a record of their own: Flower's median pops the arrays it reads) and its weight."""
    return [
        RecordDict({ARRAYS: ArrayRecord(dict(r.content[ARRAYS].items())), METRICS: MetricRecord({NUM_EXAMPLES: w})})
        for r, w in zip(replies, weights, strict=True)
    ]


def _flower(how: Robustness, replies: int) -> tuple[object, bool]:
    """Flower's strategy for `how.aggregator` on `replies` replies, and whether it fell back to the median."""
    f = how.malicious
    if how.aggregator == "trimmed-mean":
        return FedTrimmedAvg(beta=how.trim), False
    if how.aggregator in ("krum", "multi-krum") and replies > 2 * f + 2:
        if how.aggregator == "krum":
            return Krum(num_malicious_nodes=f), False
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=replies - f), False
    if how.aggregator == "bulyan" and replies >= 4 * f + 3:
        return Bulyan(num_malicious_nodes=f), False
    return FedMedian(), how.aggregator != "median"


def aggregate(replies: list[Reply], how: Robustness, server_round: int = 1) -> tuple[ArrayRecord, bool]:
    """The group's aggregate by `how.aggregator`, in the replies' dtypes; True if it fell back to the median."""
    weights = capped_weights([float(r.content[METRICS][NUM_EXAMPLES]) for r in replies], how.max_weight_share)
    contents = _weighted(replies, weights)
    if how.aggregator == "mean":
        return aggregate_arrayrecords(contents, NUM_EXAMPLES), False
    strategy, fell_back = _flower(how, len(replies))
    messages = [Message(c, dst_node_id=0, message_type=MessageType.TRAIN) for c in contents]
    with quiet_flower():
        arrays, _ = strategy.aggregate_train(server_round, messages)
    first = replies[0].content[ARRAYS]
    # Flower's median and trimmed mean compute in float64; the model keeps the dtypes the nodes train in.
    return ArrayRecord({k: Array(arrays[k].numpy().astype(first[k].dtype)) for k in first.keys()}), fell_back


def average(replies: list[Reply]) -> ArrayRecord:
    """FedAvg of the replies' weights, each weighted by its `num-examples` (no cap, no robust rule)."""
    return aggregate(replies, Robustness())[0]


def take_average(name: str, base: ArrayRecord, averaged: ArrayRecord) -> ArrayRecord:
    """FedAvg's apply step: the aggregate is the new model."""
    return averaged


def grouped_average(
    globals_: Globals,
    replies: list[Reply],
    architecture: Callable[[int], str],
    how: Robustness,
    apply: Apply = take_average,
    server_round: int = 1,
) -> tuple[Globals, dict[str, int]]:
    """Each group's replies clipped, aggregated and applied to its model; a group without replies keeps its model.
    Returns the new models and the counts of clipped updates and of groups that fell back to the median."""
    out = dict(globals_)
    # The fallback count only where one can happen: FedAvg's history keeps the keys it always had.
    counts = {"clipped-updates": 0, **({"aggregator-fallbacks": 0} if how.aggregator != "mean" else {})}
    for name in globals_:
        group = [r for r in replies if architecture(r.node) == name]
        if not group:
            continue
        bound = how.clip_norm
        if bound == 0 and how.clip_median_multiple > 0:
            norms = [update_norm(r.content[ARRAYS], globals_[name]) for r in group]
            # The lower median: with two replies it is the smaller, so one node cannot raise the bound itself.
            bound = how.clip_median_multiple * statistics.median_low(norms)
        if bound > 0 and math.isfinite(bound):
            counts["clipped-updates"] += sum(clip_update(r.content[ARRAYS], globals_[name], bound) for r in group)
        aggregated, fell_back = aggregate(group, how, server_round)
        if fell_back:
            counts["aggregator-fallbacks"] += 1
        out[name] = apply(name, globals_[name], aggregated)
    return out, counts
