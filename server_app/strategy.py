"""The two-stage strategy: FedAvg over the teacher, then FedAvg over the distilled student."""

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_arrayrecords,
    validate_message_reply_consistency,
)

from common.config import RunConfig
from server_app.sampling import NodeSampler

PHASES = ("teacher", "student")


def sum_eval_counts(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Federated accuracy and loss weighted by local test examples; train loss by train examples;
    the slowest client's handler time."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    examples = sum(float(m.get("eval-examples", 0)) for m in metrics)
    out = {}
    if all("train-loss" in m for m in metrics):
        trained = sum(float(m[weight_key]) for m in metrics)
        out["train-loss"] = sum(float(m["train-loss"]) * float(m[weight_key]) for m in metrics) / trained
    if all("client-seconds" in m for m in metrics):
        out["client-seconds"] = max(float(m["client-seconds"]) for m in metrics)
    if examples:
        out["federated-accuracy"] = sum(float(m["eval-correct"]) for m in metrics) / examples
        out["federated-loss"] = sum(float(m["eval-loss-sum"]) for m in metrics) / examples
    return MetricRecord(out)


def _check_arrays(got: ArrayRecord, expected: ArrayRecord) -> None:
    """Raise ValueError unless `got` has the keys, shapes and dtypes of `expected`, all finite."""
    if list(got.keys()) != list(expected.keys()):
        raise ValueError(f"array keys {list(got.keys())} differ from the global model's {list(expected.keys())}")
    for key, array in got.items():
        want = expected[key]
        if (tuple(array.shape), array.dtype) != (tuple(want.shape), want.dtype):
            raise ValueError(f"'{key}' is {array.dtype}{list(array.shape)}, expected {want.dtype}{list(want.shape)}")
        if not np.isfinite(array.numpy()).all():
            raise ValueError(f"'{key}' holds NaN or Inf")


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


class TwoStage(FedAvg):
    """Phase "teacher" trains the global teacher; phase "student" distils from each client's local teacher.

    The final global teacher travels to a node once, with its first student message; a node
    that failed since (and may have lost its state) gets it again.
    """

    def __init__(self, cfg: RunConfig, sampler: NodeSampler) -> None:
        super().__init__(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=cfg.min_train_nodes,
            min_available_nodes=cfg.min_train_nodes,
            train_metrics_aggr_fn=sum_eval_counts,
            evaluate_metrics_aggr_fn=sum_eval_counts,
        )
        self.sampler = sampler
        self.clip_norm = cfg.clip_norm
        self.phase = PHASES[0]
        self.final_teacher: ArrayRecord | None = None
        self.holds_teacher: set[int] = set()
        self.rejected: list[dict[str, object]] = []
        self._sent: list[int] = []
        self._arrays: ArrayRecord | None = None

    def _in_node_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies without an error, sorted by node name: float sums then do not depend on arrival order."""
        valid = [m for m in replies if not m.has_error()]
        return sorted(valid, key=lambda m: self.sampler.name(m.metadata.src_node_id))

    def screen(self, replies: Iterable[Message], expected: ArrayRecord | None) -> list[Message]:
        """Replies fit to aggregate, in node order; the others go to `self.rejected` with the reason.

        A malformed reply from one node must not stop the run: each is checked on its own
        (Flower's consistency check, then keys, shapes and finiteness against `expected`).
        """
        accepted, self.rejected = [], []
        for msg in self._in_node_order(replies):
            try:
                validate_message_reply_consistency([msg.content], self.weighted_by_key, expected is not None)
                if expected is not None:
                    _check_arrays(next(iter(msg.content.array_records.values())), expected)
            except (InconsistentMessageReplies, ValueError, TypeError, KeyError) as exc:
                self.rejected.append({"node": msg.metadata.src_node_id, "reason": f"reply rejected: {exc}"})
            else:
                accepted.append(msg)
        return accepted

    def start_phase(self, phase: str, previous_arrays: ArrayRecord | None) -> None:
        """Switch phase; entering "student" fixes the final global teacher."""
        if phase == "student":
            self.final_teacher = previous_arrays
        self.phase = phase

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send them `train.<phase>` with the global model of this phase."""
        self._sent = self.sampler.sample(grid, self.fraction_train, self.min_train_nodes)
        config = ConfigRecord({**config, "server-round": server_round, "evaluate-incoming": server_round > 1})
        self._arrays = arrays
        messages = []
        for node in self._sent:
            content = RecordDict({"arrays": arrays, "config": config})
            if self.phase == "student" and node not in self.holds_teacher:
                content["teacher"] = self.final_teacher
            messages.append(Message(content, dst_node_id=node, message_type=f"train.{self.phase}"))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the valid replies; track which nodes now hold the final teacher.

        Flower's aggregation utilities without FedAvg's per-reply logging: the round
        loop reports failures in its one line per round and in history.
        """
        valid = self.screen(replies, self._arrays)
        answered = {m.metadata.src_node_id for m in valid}
        if self.phase == "student":
            self.holds_teacher = (self.holds_teacher | answered) - (set(self._sent) - answered)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        clipped = 0
        if self.clip_norm > 0:
            for content in contents:
                clipped += clip_update(next(iter(content.array_records.values())), self._arrays, self.clip_norm)
        arrays = aggregate_arrayrecords(contents, self.weighted_by_key)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        metrics["clipped-updates"] = clipped
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send `evaluate.<phase>` to a fraction-evaluate sample of the nodes."""
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self.sampler.sample(grid, self.fraction_evaluate, 1)
        config = ConfigRecord({**config, "server-round": server_round})
        return [
            Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=n, message_type=f"evaluate.{self.phase}")
            for n in nodes
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Federated accuracy and loss of the valid evaluation replies."""
        contents = [m.content for m in self.screen(replies, None)]
        if not contents:
            return None
        return self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key)
