"""A round's metrics from its replies' counts."""

from typing import Any

from flwr.app import RecordDict

from common.protocol import (
    CLIENT_SECONDS,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    METRICS,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)


def reply_metrics(contents: list[RecordDict]) -> dict[str, Any]:
    """Train loss weighted by training examples; federated accuracy and loss weighted by local test examples
    (where the replies scored a model); the slowest node's handler time. Keys are history.json's metric names."""
    metrics = [c[METRICS] for c in contents]
    examples = sum(float(m.get(EVAL_EXAMPLES, 0)) for m in metrics)
    out = {}
    if metrics and all(TRAIN_LOSS in m for m in metrics):
        trained = sum(float(m[NUM_EXAMPLES]) for m in metrics)
        out["train-loss"] = sum(float(m[TRAIN_LOSS]) * float(m[NUM_EXAMPLES]) for m in metrics) / trained
    if metrics and all(CLIENT_SECONDS in m for m in metrics):
        out["client-seconds"] = max(float(m[CLIENT_SECONDS]) for m in metrics)
    if examples:
        out["federated-accuracy"] = sum(float(m[EVAL_CORRECT]) for m in metrics) / examples
        out["federated-loss"] = sum(float(m[EVAL_LOSS_SUM]) for m in metrics) / examples
    return out
