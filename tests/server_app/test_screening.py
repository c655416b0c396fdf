"""screen_reply: every kind of bad train reply gets its reason; a good one gets None. The checks built on it:
weights_check and logits_check."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.protocol import ARRAYS, LOGITS, LOGITS_ARRAY, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from server_app.screening import logits_check, screen_reply, weights_check

MAX = 1_000_000


def arrays(**values) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


GLOBAL = arrays(w=np.zeros((2, 3), dtype=np.float32), b=np.zeros(2, dtype=np.float32))


def reply(record=None, num_examples=10, **extra) -> RecordDict:
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: num_examples, TRAIN_LOSS: 0.5})})
    if record is not None:
        content[ARRAYS] = record
    for name, value in extra.items():
        content[name] = value
    return content


def good_arrays(**changes) -> ArrayRecord:
    values = {"w": np.ones((2, 3), dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
    return arrays(**{**values, **changes})


def test_a_good_reply_passes():
    assert screen_reply(reply(good_arrays()), GLOBAL, MAX) is None
    assert screen_reply(reply(good_arrays(), num_examples=MAX), GLOBAL, MAX) is None
    assert screen_reply(reply(good_arrays(), num_examples=12.0), GLOBAL, MAX) is None


def test_a_reply_without_arrays_passes_when_none_are_expected():
    assert screen_reply(reply(), None, MAX) is None


@pytest.mark.parametrize(
    "record, reason",
    [
        (arrays(w=np.ones((2, 3), dtype=np.float32)), "array keys ['w'] differ from the global model's ['w', 'b']"),
        (
            arrays(b=np.ones(2, dtype=np.float32), w=np.ones((2, 3), dtype=np.float32)),
            "array keys ['b', 'w'] differ from the global model's ['w', 'b']",
        ),
        (good_arrays(w=np.ones((3, 2), dtype=np.float32)), "'w' is float32[3, 2], expected float32[2, 3]"),
        (good_arrays(b=np.ones(2, dtype=np.float64)), "'b' is float64[2], expected float32[2]"),
        (good_arrays(b=np.array(["1", "2"])), "'b' is <U1[2], expected float32[2]"),
        (good_arrays(w=np.full((2, 3), np.nan, dtype=np.float32)), "'w' holds NaN or Inf"),
        (good_arrays(b=np.array([1.0, np.inf], dtype=np.float32)), "'b' holds NaN or Inf"),
        (good_arrays(b=np.array([-np.inf, 0.0], dtype=np.float32)), "'b' holds NaN or Inf"),
    ],
)
def test_arrays_unlike_the_global_model_are_refused(record, reason):
    assert screen_reply(reply(record), GLOBAL, MAX) == reason


def test_arrays_whose_data_contradicts_their_metadata_are_judged_by_what_decodes():
    data = Array(np.ones(3, dtype=np.float32)).data
    lying = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=data)
    cut = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=data[:20])
    record = good_arrays()
    record["b"] = lying
    assert screen_reply(reply(record), GLOBAL, MAX) == "'b' is float32[3], expected float32[2]"
    record["b"] = cut
    assert screen_reply(reply(record), GLOBAL, MAX) == (
        "'b' cannot be decoded: EOF: reading array header, expected 118 bytes got 10"
    )


def test_no_arrays_at_all_is_refused():
    assert screen_reply(reply(), GLOBAL, MAX) == (
        "Expected exactly one ArrayRecord in replies. Skipping aggregation. (reply holds 'metrics': MetricRecord)"
    )


def test_two_array_records_are_refused():
    content = reply(good_arrays(), extra=good_arrays())
    assert screen_reply(content, GLOBAL, MAX) == (
        "Expected exactly one ArrayRecord in replies. Skipping aggregation. "
        "(reply holds 'metrics': MetricRecord, 'arrays': ArrayRecord, 'extra': ArrayRecord)"
    )


def test_missing_num_examples_is_refused():
    content = RecordDict({ARRAYS: good_arrays(), METRICS: MetricRecord({TRAIN_LOSS: 0.5})})
    assert screen_reply(content, GLOBAL, MAX) == (
        "Missing required key `num-examples` in the MetricRecord of reply messages. Cannot average "
        "ArrayRecords and MetricRecords. Skipping aggregation. "
        "(reply holds 'arrays': ArrayRecord, 'metrics': MetricRecord)"
    )


def test_num_examples_as_a_string_is_refused():
    # A MetricRecord only holds numbers, so a string count can only come in another kind of record.
    content = RecordDict({ARRAYS: good_arrays(), METRICS: ConfigRecord({NUM_EXAMPLES: "10"})})
    assert screen_reply(content, GLOBAL, MAX) == (
        "Expected exactly one MetricRecord in replies, but found more. Skipping aggregation. "
        "(reply holds 'arrays': ArrayRecord, 'metrics': ConfigRecord)"
    )


def test_num_examples_as_a_list_is_refused():
    assert screen_reply(reply(good_arrays(), num_examples=[10, 20]), GLOBAL, MAX) == (
        "Key `num-examples` in the MetricRecord of reply messages must be a single value (int or float), "
        "but a list was found. Skipping aggregation. (reply holds 'metrics': MetricRecord, 'arrays': ArrayRecord)"
    )


@pytest.mark.parametrize(
    "value, reason",
    [
        (0, "num-examples = 0; allowed: 1 to 1000000"),
        (-3, "num-examples = -3; allowed: 1 to 1000000"),
        (-3.0, "num-examples = -3.0; allowed: 1 to 1000000"),
        (1_000_001, "num-examples = 1000001; allowed: 1 to 1000000"),
        (10**30, f"num-examples = {10**30}; allowed: 1 to 1000000"),
        (2.5, "num-examples = 2.5 is not a whole number; allowed: 1 to 1000000"),
        (float("nan"), "num-examples = nan is not a whole number; allowed: 1 to 1000000"),
        (float("inf"), "num-examples = inf is not a whole number; allowed: 1 to 1000000"),
    ],
)
def test_num_examples_outside_the_allowed_range_is_refused(value, reason):
    assert screen_reply(reply(good_arrays(), num_examples=value), GLOBAL, MAX) == reason


def test_the_bound_is_the_run_configs():
    assert screen_reply(reply(good_arrays(), num_examples=500), GLOBAL, 499) == "num-examples = 500; allowed: 1 to 499"


def test_the_arrays_are_checked_before_the_count():
    bad = reply(good_arrays(b=np.array([np.nan, 0.0], dtype=np.float32)), num_examples=0)
    assert screen_reply(bad, GLOBAL, MAX) == "'b' holds NaN or Inf"


def logits_reply(logits, key=LOGITS, num_examples=5) -> RecordDict:
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: num_examples})})
    content[key] = ArrayRecord({LOGITS_ARRAY: Array(np.asarray(logits))})
    return content


def test_logit_replies_must_be_finite_rows_by_classes_in_the_dtype_asked_for():
    check = logits_check(4, 10, MAX, "float32")
    assert check(logits_reply(np.zeros((4, 10), dtype=np.float32))) is None
    assert check(logits_reply(np.zeros((4, 10), dtype=np.float16))) == (
        "logits are float16[4, 10], expected float32[4, 10]"
    )
    assert check(logits_reply(np.zeros((3, 10), dtype=np.float32))) == (
        "logits are float32[3, 10], expected float32[4, 10]"
    )
    assert check(logits_reply(np.zeros((4, 10), dtype=np.int64))) == "logits are int64[4, 10], expected float32[4, 10]"
    assert check(logits_reply(np.full((4, 10), np.inf, dtype=np.float32))) == (
        "logits hold NaN or Inf, or values beyond float32's range"
    )
    # Finite as sent, infinite once cast to the float32 the consensus computes in.
    huge = logits_check(4, 10, MAX, "float64")(logits_reply(np.full((4, 10), 1e300)))
    assert huge == "logits hold NaN or Inf, or values beyond float32's range"
    assert logits_check(4, 10, MAX, "float16")(logits_reply(np.zeros((4, 10), dtype=np.float16))) is None


def test_logits_are_looked_for_under_the_checks_key_after_the_count():
    assert logits_check(4, 10, MAX, "float32")(reply()) == "no 'logits' logits in the reply"
    test_logits = logits_check(2, 3, MAX, "float32", key="test-logits")
    assert test_logits(logits_reply(np.zeros((2, 3), dtype=np.float32), key="test-logits")) is None
    assert test_logits(logits_reply(np.zeros((2, 3), dtype=np.float32))) == "no 'test-logits' logits in the reply"
    assert logits_check(4, 10, 3, "float32")(logits_reply(np.zeros((4, 10), dtype=np.float32))) == (
        "num-examples = 5; allowed: 1 to 3"
    )


def test_a_weights_check_screens_the_reply_then_asks_the_extra_test():
    asked = []

    def extra(content):
        asked.append(content)
        return "no label counts"

    assert weights_check(GLOBAL, MAX)(reply(good_arrays())) is None
    assert weights_check(GLOBAL, MAX, extra)(reply(good_arrays(w=np.ones((3, 2), dtype=np.float32)))) == (
        "'w' is float32[3, 2], expected float32[2, 3]"
    )
    assert asked == []
    good = reply(good_arrays())
    assert weights_check(GLOBAL, MAX, extra)(good) == "no label counts" and asked == [good]
