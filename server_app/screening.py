"""The check each reply passes before it is aggregated: one bad node must not spoil the average."""

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

from common.protocol import LOGITS, LOGITS_ARRAY, NUM_EXAMPLES
from server_app.round import Check


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
        if reason := _check_arrays(next(iter(content.array_records.values())), expected):
            return reason
    return _check_num_examples(next(iter(content.metric_records.values())), max_num_examples)


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


def _check_num_examples(metrics: MetricRecord, max_num_examples: int) -> str | None:
    """None if `num-examples` is a whole number from 1 to `max_num_examples`, else why not."""
    value = metrics[NUM_EXAMPLES]
    allowed = f"allowed: 1 to {max_num_examples}"
    if isinstance(value, float) and not value.is_integer():
        return f"{NUM_EXAMPLES} = {value!r} is not a whole number; {allowed}"
    if not 1 <= value <= max_num_examples:
        return f"{NUM_EXAMPLES} = {value!r}; {allowed}"
    return None


def weights_check(expected: ArrayRecord, max_num_examples: int, extra: Check | None = None) -> Check:
    """A reply's check: weights shaped as `expected`, a plausible `num-examples`, then `extra`'s test."""
    return lambda content: screen_reply(content, expected, max_num_examples) or (extra(content) if extra else None)


def logits_check(rows: int, classes: int, max_num_examples: int, key: str = LOGITS) -> Check:
    """A reply's check: a plausible `num-examples`, and under `key` finite float logits of shape (rows, classes)."""

    def check(content: RecordDict) -> str | None:
        if reason := screen_reply(content, None, max_num_examples):
            return reason
        if key not in content.array_records or LOGITS_ARRAY not in content[key]:
            return f"no '{key}' logits in the reply"
        logits = content[key][LOGITS_ARRAY].numpy()
        if logits.shape != (rows, classes) or not np.issubdtype(logits.dtype, np.floating):
            return f"logits are {logits.dtype}{list(logits.shape)}, expected float[{rows}, {classes}]"
        if not np.isfinite(logits).all():
            return "logits hold NaN or Inf"
        return None

    return check
