"""FedMD's round driven by hand: logits on a public subset, their consensus (the mean of the accepted ones) sent to
be digested, and each architecture scored from its nodes' logits on the server's test inputs."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from common.data import Split, load_public
from common.protocol import (
    CONFIG,
    CONSENSUS,
    DIGEST_EPOCHS,
    INDICES,
    LOGITS,
    LOGITS_ARRAY,
    LOGITS_DTYPE,
    METRICS,
    NUM_EXAMPLES,
    PUBLIC,
    QUERY_LOGITS,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    SOURCE,
    SOURCE_OWN,
    SPLIT,
    TEMPERATURE,
    TEST_LOGITS,
    TRAIN_DIGEST,
    TRAIN_LOSS,
    TRANSFER_EPOCHS,
)
from server_app.strategies.kit.logits import public_subset
from tests.server_app.helpers import Nodes, drive, drive_screened, round_input, strategy

NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn"), 4: ("d", "cnn")}
RAW = {"fedmd.public-samples-per-round": 3, "fedmd.temperature": 2.0, "fedmd.digest-epochs": 4, "seed": 7}
# The server's test set: two rows, labels 0 and 1.
TEST = Split(torch.zeros(2, 64), torch.tensor([0, 1]))
# A logit of ln 91 on one class, 0 on the nine others: that class gets probability 0.91, each other 0.01.
HIGH = math.log(91)


def logits_record(rows, key_dtype=np.float32) -> ArrayRecord:
    return ArrayRecord({LOGITS_ARRAY: Array(np.asarray(rows, dtype=key_dtype))})


def public_logits(value: float) -> RecordDict:
    """A query.logits reply: 3 rows of 10 classes, row i holding value + i on class 0 and 0 elsewhere."""
    rows = [[value + i] + [0.0] * 9 for i in range(3)]
    return RecordDict({LOGITS: logits_record(rows), METRICS: MetricRecord({NUM_EXAMPLES: 20})})


def digested(predicted: list[int], loss: float) -> RecordDict:
    """A train.digest reply whose test logits put ln 91 on the `predicted` class of each test row."""
    rows = np.zeros((2, 10), dtype=np.float32)
    rows[[0, 1], predicted] = HIGH
    return RecordDict(
        {
            TEST_LOGITS: logits_record(rows),
            METRICS: MetricRecord({NUM_EXAMPLES: 10, TRAIN_LOSS: loss}),
        }
    )


def answer(message):
    node = message.metadata.dst_node_id
    if message.metadata.message_type == QUERY_LOGITS:
        # Node 4's logits hold NaN: rejected, left out of the consensus, not asked to digest.
        return {1: public_logits(1.0), 2: public_logits(2.0), 3: public_logits(6.0), 4: public_logits(np.nan)}[node]
    # Node 1 gets the first test row right, node 2 both, node 3 none.
    return {1: digested([0, 0], 1.0), 2: digested([0, 1], 2.0), 3: digested([1, 0], 3.0)}[node]


def test_a_round_queries_logits_sends_their_consensus_and_scores_the_test_logits(task_identity):
    fedmd = strategy("fedmd", NODES, **RAW)
    r = round_input([1, 2, 3, 4], {}, server_round=2, test=TEST)
    result, trace, (query, digest) = drive_screened(fedmd.round(r), answer, Nodes(NODES), [1, 2, 3, 4])
    indices = public_subset(3, len(load_public(fedmd.cfg)), seed=7, phase_index=0, server_round=2)
    assert len(indices) == 3
    # The query: each sampled node's own model's logits on the round's public rows.
    assert [m.metadata.dst_node_id for m in query.messages] == [1, 2, 3, 4]
    assert all(m.metadata.message_type == QUERY_LOGITS for m in query.messages)
    assert dict(query.messages[0].content[CONFIG]) == {
        SPLIT: PUBLIC,
        INDICES: indices,
        SERVER_ROUND: 2,
        TRANSFER_EPOCHS: 5,
        LOGITS_DTYPE: "float32",
        SOURCE: SOURCE_OWN,
    }
    assert [(f.node, f.reason) for f in trace.rejected] == [
        (4, "reply rejected: logits hold NaN or Inf, or values beyond float32's range")
    ]
    # The consensus of the accepted logits, to those that sent them: each row centred (class 0 holds 0.9 of its
    # value, the others -0.1 of it), then the median over nodes 1, 2 and 6: node 2's, 2 (+ the row).
    sent = digest.messages
    assert [m.metadata.dst_node_id for m in sent] == [1, 2, 3]
    assert all(m.metadata.message_type == TRAIN_DIGEST for m in sent)
    consensus = sent[0].content[CONSENSUS][LOGITS_ARRAY].numpy()
    np.testing.assert_allclose(consensus, [[0.9 * v] + [-0.1 * v] * 9 for v in (2.0, 3.0, 4.0)], rtol=1e-6)
    assert consensus.dtype == np.float32
    config = dict(sent[0].content[CONFIG])
    assert (config[REPORT_TEST_LOGITS], config[TEMPERATURE], config[DIGEST_EPOCHS], config[INDICES]) == (
        True,
        2.0,
        4,
        indices,
    )
    # Scores from the test logits, per architecture the mean over its nodes of (cross-entropy, accuracy). A right row
    # costs -ln 0.91, a wrong one ln 100.
    right, wrong = -math.log(0.91), math.log(100)
    assert result.scores["mlp-32"] == pytest.approx(((((right + wrong) / 2) + right) / 2, (0.5 + 1.0) / 2))
    assert result.scores["cnn"] == pytest.approx((wrong, 0.0))
    assert result.globals == {} and not result.scores_previous
    # The digest replies' train loss, weighted by their examples.
    assert result.metrics == {"train-loss": pytest.approx(2.0)}


def test_without_a_test_set_the_nodes_report_no_test_logits_and_the_loop_scores(task_identity):
    fedmd = strategy("fedmd", NODES, **RAW)

    def plain(message):
        if message.metadata.message_type == QUERY_LOGITS:
            return public_logits(float(message.metadata.dst_node_id))
        return RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5})})

    result, asks, handed = drive(fedmd.round(round_input([1, 3], {}, test=None)), plain)
    query, digest = asks
    assert digest.messages[0].content[CONFIG][REPORT_TEST_LOGITS] is False
    # Of two nodes (values 1 and 3) the median is their mean, 2, centred.
    np.testing.assert_allclose(digest.messages[0].content[CONSENSUS][LOGITS_ARRAY].numpy()[0], [1.8] + [-0.2] * 9)
    assert result.scores is None and result.metrics == {"train-loss": 0.5}
    # Its check asks only for a plausible count.
    assert digest.checks[0](RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 10})})) is None


def test_float16_logits_travel_as_float16_and_average_as_float32(task_identity):
    fedmd = strategy("fedmd", NODES, **{**RAW, "fedmd.logits-dtype": "float16"})

    def half(message):
        if message.metadata.message_type == QUERY_LOGITS:
            rows = np.zeros((3, 10), dtype=np.float16)
            rows[:, 0] = 0.5 * message.metadata.dst_node_id
            return RecordDict({LOGITS: logits_record(rows, np.float16), METRICS: MetricRecord({NUM_EXAMPLES: 1})})
        return None

    _, (query, digest), _ = drive(fedmd.round(round_input([1, 2], {}, test=None)), half)
    assert query.messages[0].content[CONFIG][LOGITS_DTYPE] == "float16"
    consensus = digest.messages[0].content[CONSENSUS][LOGITS_ARRAY].numpy()
    # The mean of 0.5 and 1.0 on class 0, centred: 0.9 x 0.75, rounded to float16.
    assert consensus.dtype == np.float16 and consensus[0, 0] == np.float16(0.675)


def test_no_logits_no_digest(task_identity):
    fedmd = strategy("fedmd", NODES, **RAW)
    result, asks, _ = drive(fedmd.round(round_input([1, 2], {}, test=TEST)), lambda message: None)
    assert len(asks) == 1 and result.globals == {} and result.scores is None and result.metrics == {}


def test_fedmd_keeps_no_global_models():
    fedmd = strategy("fedmd", NODES)
    (phase,) = fedmd.phases()
    assert fedmd.initial(phase, [1, 2, 3], None) == {}
