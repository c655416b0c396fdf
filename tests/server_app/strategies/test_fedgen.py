"""FedGen's server side: what it asks of a reply, and the settings it refuses."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from common.config import ConfigError, parse_run_config
from common.protocol import ARRAYS, LABEL_COUNTS, METRICS, NUM_EXAMPLES, TRAIN_LOSS
from server_app.sampling import NodeSampler
from server_app.strategies.fedgen import FedGen


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
            "'label-counts' is [4, -1, 0, 0, 0, 0, 0, 0, 0, 0], expected 10 counts of 0 or more",
        ),
        (
            {NUM_EXAMPLES: 3, LABEL_COUNTS: [1, 1] + [0] * 8},
            "'label-counts' sum to 2, not the 3 examples the reply claims",
        ),
        ({NUM_EXAMPLES: 3, LABEL_COUNTS: [1, 2] + [0] * 8}, None),
    ],
)
def test_a_reply_must_count_its_labels_and_the_counts_must_add_up(metrics, reason):
    strategy = FedGen(parse_run_config({"strategy": "fedgen"}), NodeSampler(1, 1))
    assert strategy.check_train_reply(reply(**metrics)) == reason


def test_fedgen_refuses_differential_privacy_naming_why():
    FedGen.check_config(parse_run_config({"strategy": "fedgen"}))
    with pytest.raises(
        ConfigError, match=r"'dp-epsilon' = 3.0: strategy 'fedgen' reports each node's label counts in the clear"
    ):
        FedGen.check_config(parse_run_config({"strategy": "fedgen", "dp-epsilon": 3.0}))
