"""FedGen's server side: what it asks of a reply, the generator it fits and sends on, and the settings it refuses."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from common.config import ConfigError
from common.models import initial_model, to_record
from common.protocol import (
    ARRAYS,
    CONFIG,
    GENERATOR,
    GENERATOR_ALPHA,
    GENERATOR_BETA,
    GENERATOR_LABELS,
    LABEL_COUNTS,
    METRICS,
    NUM_EXAMPLES,
    TRAIN_LOSS,
    message_type,
)
from server_app.screening import check_metrics
from tests.server_app.helpers import Nodes, drive, drive_screened, round_input, strategy

NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "mlp-64")}


def reply(**metrics):
    return RecordDict(
        {
            ARRAYS: ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))}),
            METRICS: MetricRecord({TRAIN_LOSS: 0.1, **metrics}),
        }
    )


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({NUM_EXAMPLES: 3}, "'label-counts' is None, expected 10 counts of 0 or more"),
        ({NUM_EXAMPLES: 3, LABEL_COUNTS: [1, 2]}, "'label-counts' is [1, 2], expected 10 counts of 0 or more"),
        (
            {NUM_EXAMPLES: 3, LABEL_COUNTS: [4, -1] + [0] * 8},
            "'label-counts' = [4, -1, 0, 0, 0, 0, 0, 0, 0, 0]; allowed: a list of whole numbers from 0",
        ),
        ({NUM_EXAMPLES: 3, LABEL_COUNTS: [1, 1] + [0] * 8}, "'label-counts' sum to 2; the reply claims 3 examples"),
        ({NUM_EXAMPLES: 3, LABEL_COUNTS: [1, 2] + [0] * 8}, None),
    ],
)
def test_a_reply_must_count_its_labels_and_the_counts_must_add_up(metrics, reason):
    """The count of classes is FedGen's check; whole, non-negative counts that add up are every reply's."""
    content = reply(**metrics)
    assert (strategy("fedgen").check_reply(content) or check_metrics(content, 1_000_000)) == reason


def test_fedgen_refuses_differential_privacy_naming_why():
    assert strategy("fedgen").cfg.dp_epsilon == 0
    with pytest.raises(
        ConfigError, match=r"'dp-epsilon' = 3.0: strategy 'fedgen' reports each node's label counts in the clear"
    ):
        strategy("fedgen", **{"dp-epsilon": 3.0})


def counted(model: str, seed: int, counts: list[int]) -> RecordDict:
    return RecordDict(
        {
            ARRAYS: to_record(initial_model(model, "digits", seed)),
            METRICS: MetricRecord({NUM_EXAMPLES: sum(counts), LABEL_COUNTS: counts}),
        }
    )


def test_the_generator_is_fitted_to_the_replies_and_sent_with_the_next_round(task_identity):
    fedgen = strategy("fedgen", NODES, **{"fedgen.generator-steps": 2, "fedgen.alpha": 0.5, "fedgen.beta": 0.25})
    start = {"mlp-32": to_record(initial_model("mlp-32", "digits", 9))}
    replies = {1: counted("mlp-32", 1, [5, 5] + [0] * 8), 2: counted("mlp-32", 2, [0, 4, 6] + [0] * 7)}
    result, trace, (ask,) = drive_screened(
        fedgen.round(round_input([1, 2], start)),
        lambda m: replies.get(m.metadata.dst_node_id),
        Nodes(NODES),
        [1, 2],
    )
    # Round 1: nothing learned yet, so no generator and no labels; the weights of its terms always.
    assert ask.messages[0].metadata.message_type == message_type("train", "fedgen")
    assert GENERATOR not in ask.messages[0].content
    assert dict(ask.messages[0].content[CONFIG]) == {
        "server-round": 1,
        "evaluate-incoming": False,
        GENERATOR_ALPHA: 0.5,
        GENERATOR_BETA: 0.25,
        "model": "mlp-32",
    }
    assert trace.accepted == [1, 2] and isinstance(result.metrics["generator-loss"], float)
    # The classes some node counted examples of.
    assert fedgen.labels == [0, 1, 2] and fedgen.generator.widths == [32]
    # Round 2: the labels, and the generator's part for the node's width; a width it never saw gets none.
    _, (second,), _ = drive(fedgen.round(round_input([1, 3], result.globals, server_round=2)), lambda m: None)
    to_1, to_3 = second.messages
    assert to_1.content[CONFIG][GENERATOR_LABELS] == [0, 1, 2]
    assert set(to_1.content[GENERATOR].keys()) == set(fedgen.generator.for_width(32))
    assert GENERATOR not in to_3.content and to_3.content[CONFIG][GENERATOR_LABELS] == [0, 1, 2]


def test_a_reply_with_bad_counts_is_rejected_before_the_generator_sees_it(task_identity):
    fedgen = strategy("fedgen", NODES, **{"fedgen.generator-steps": 2})
    start = {"mlp-32": to_record(initial_model("mlp-32", "digits", 9))}
    bad = counted("mlp-32", 2, [0, 4, 6] + [0] * 7)
    bad[METRICS][NUM_EXAMPLES] = 11
    replies = {1: counted("mlp-32", 1, [5, 5] + [0] * 8), 2: bad}
    _, trace, _ = drive_screened(
        fedgen.round(round_input([1, 2], start)), lambda m: replies[m.metadata.dst_node_id], Nodes(NODES), [1, 2]
    )
    assert [(f.node, f.reason) for f in trace.rejected] == [
        (2, "reply rejected: 'label-counts' sum to 10; the reply claims 11 examples")
    ]
    assert fedgen.labels == [0, 1]
