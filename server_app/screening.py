"""The checks each reply passes before anything reads it: one bad node must not spoil the average, nor stop the run.

Every reply passes `check_metrics` (the round loop applies it to every exchange, the final evaluation's too): each
number the server reads later from a reply's `metrics` record is checked for type and range there, so reading it
cannot raise. The ask's own check then looks at what that exchange needs (weights, logits, counts).
"""

import math

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from common.protocol import (
    ARRAYS,
    CLIENT_SECONDS,
    DIGEST_LOSS,
    DP_EPSILON,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    LABEL_COUNTS,
    LOGITS,
    LOGITS_ARRAY,
    METRICS,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)
from server_app.round import Check

# Metrics a reply may carry that the server reads, and what each must be: (whole number?, lower bound).
NUMBERS = {
    NUM_EXAMPLES: (True, 0),  # an evaluation reply's local test examples, which may be none
    EVAL_EXAMPLES: (True, 0),
    EVAL_CORRECT: (True, 0),
    EVAL_LOSS_SUM: (False, 0.0),
    TRAIN_LOSS: (False, 0.0),
    DIGEST_LOSS: (False, 0.0),
    CLIENT_SECONDS: (False, 0.0),
    DP_EPSILON: (False, 0.0),
}
EVAL_COUNTS = (EVAL_EXAMPLES, EVAL_CORRECT, EVAL_LOSS_SUM)


def _number(key: str, value: object, whole: bool, low: float, high: float) -> str | None:
    """Why `value` is not a finite number from `low` to `high` (a whole one if `whole`), or None."""
    allowed = f"allowed: {low} to {high}" if math.isfinite(high) else f"allowed: {low} or more"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key} = {value!r} is not a number; {allowed}"
    if whole and not (math.isfinite(value) and float(value).is_integer()):
        return f"{key} = {value!r} is not a whole number; {allowed}"
    if not math.isfinite(value):
        return f"{key} = {value!r} is not finite; {allowed}"
    if not low <= value <= high:
        return f"{key} = {value!r}; {allowed}"
    return None


def check_metrics(content: RecordDict, max_num_examples: int, min_num_examples: int = 0) -> str | None:
    """Why a reply's metrics cannot be read safely, or None: a reply with metrics holds one MetricRecord, named
    `metrics`; every number the server reads from it is finite and in range (`num-examples` `min_num_examples` to
    `max_num_examples`, counts whole and not negative); the evaluation counts come together, with no more right
    answers than examples and no more examples than the cap; label counts are whole, not negative, and sum to
    `num-examples`."""
    if not content.metric_records:
        return None
    if list(content.metric_records) != [METRICS]:
        return f"metrics must be one MetricRecord named '{METRICS}'; the reply holds {_layout(content)}"
    metrics = content[METRICS]
    for key, (whole, low) in NUMBERS.items():
        if key in metrics:
            high = max_num_examples if key in (NUM_EXAMPLES, EVAL_EXAMPLES, EVAL_CORRECT) else math.inf
            low = min_num_examples if key == NUM_EXAMPLES else low
            if reason := _number(key, metrics[key], whole, low, high):
                return reason
    if present := [k for k in EVAL_COUNTS if k in metrics]:
        if len(present) != len(EVAL_COUNTS):
            return f"evaluation counts {present} come without {[k for k in EVAL_COUNTS if k not in present]}"
        if metrics[EVAL_CORRECT] > metrics[EVAL_EXAMPLES]:
            return f"'{EVAL_CORRECT}' = {metrics[EVAL_CORRECT]} exceeds '{EVAL_EXAMPLES}' = {metrics[EVAL_EXAMPLES]}"
    if LABEL_COUNTS in metrics:
        counts = metrics[LABEL_COUNTS]
        if not isinstance(counts, list) or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
            return f"'{LABEL_COUNTS}' = {counts!r}; allowed: a list of whole numbers from 0"
        if NUM_EXAMPLES not in metrics or sum(counts) != metrics[NUM_EXAMPLES]:
            return f"'{LABEL_COUNTS}' sum to {sum(counts)}; the reply claims {metrics.get(NUM_EXAMPLES)} examples"
    return None


def screen_reply(content: RecordDict, expected: ArrayRecord | None, max_num_examples: int) -> str | None:
    """None if the reply `content` is fit to aggregate, else a one-line reason.

    `expected` is the global model the reply's arrays must match (None: the reply carries no
    arrays); `max_num_examples` bounds the weight a single reply may claim (run config
    `max-num-examples`).
    """
    try:
        validate_message_reply_consistency([content], NUM_EXAMPLES, expected is not None)
    except InconsistentMessageReplies as exc:
        return f"{exc} (reply holds {_layout(content)})"
    if expected is not None:
        if ARRAYS not in content.array_records:
            return f"weights must be an ArrayRecord named '{ARRAYS}'; the reply holds {_layout(content)}"
        if reason := _check_arrays(content[ARRAYS], expected):
            return reason
    # What a reply trained on, or answers for, weighs in an average: at least one example.
    return check_metrics(content, max_num_examples, min_num_examples=1)


def _layout(content: RecordDict) -> str:
    """The reply's records by name and type, e.g. "'arrays': ArrayRecord, 'metrics': ConfigRecord"."""
    return ", ".join(f"{name!r}: {type(record).__name__}" for name, record in content.items()) or "no records"


def _check_arrays(got: ArrayRecord, expected: ArrayRecord) -> str | None:
    """None if `got` has the keys, shapes and dtypes of `expected` and only finite values, else why not."""
    if list(got.keys()) != list(expected.keys()):
        return f"array keys {list(got.keys())} differ from the global model's {list(expected.keys())}"
    for key, array in got.items():
        want = expected[key]
        # The decoded array, not the Array's metadata: aggregation averages what decodes.
        try:
            values = array.numpy()
        except (ValueError, TypeError, EOFError) as exc:
            return f"'{key}' cannot be decoded: {exc}"
        if (values.shape, str(values.dtype)) != (tuple(want.shape), want.dtype):
            return f"'{key}' is {values.dtype}{list(values.shape)}, expected {want.dtype}{list(want.shape)}"
        if not np.isfinite(values).all():
            return f"'{key}' holds NaN or Inf"
    return None


def weights_check(expected: ArrayRecord, max_num_examples: int, extra: Check | None = None) -> Check:
    """A reply's check: weights shaped as `expected`, a plausible `num-examples`, then `extra`'s test."""
    return lambda content: screen_reply(content, expected, max_num_examples) or (extra(content) if extra else None)


def logits_check(rows: int, classes: int, max_num_examples: int, dtype: str, key: str = LOGITS) -> Check:
    """A reply's check: a plausible `num-examples`, and under `key` logits of shape (rows, classes) in the `dtype`
    the message asked for, finite once cast to the float32 the server computes in (float64 logits of 1e300 would
    be finite as sent and infinite in the consensus)."""

    def check(content: RecordDict) -> str | None:
        if reason := screen_reply(content, None, max_num_examples):
            return reason
        if key not in content.array_records or LOGITS_ARRAY not in content[key]:
            return f"no '{key}' logits in the reply"
        logits = content[key][LOGITS_ARRAY].numpy()
        if logits.shape != (rows, classes) or str(logits.dtype) != dtype:
            return f"logits are {logits.dtype}{list(logits.shape)}, expected {dtype}[{rows}, {classes}]"
        with np.errstate(over="ignore"):
            if not np.isfinite(logits.astype(np.float32)).all():
                return "logits hold NaN or Inf, or values beyond float32's range"
        return None

    return check
