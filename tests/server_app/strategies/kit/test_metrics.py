"""A round's metrics from its replies' counts, weighted as by hand."""

import pytest
from flwr.app import MetricRecord, RecordDict

from common.protocol import METRICS
from server_app.records import COMMON_METRICS
from server_app.strategies.kit.metrics import reply_metrics


def content(**metrics) -> RecordDict:
    """A reply's metrics, by the protocol's keys (`num_examples` is `num-examples`)."""
    return RecordDict({METRICS: MetricRecord({k.replace("_", "-"): v for k, v in metrics.items()})})


def test_reply_metrics_are_sample_weighted():
    out = reply_metrics(
        [
            content(
                num_examples=100,
                train_loss=1.0,
                eval_examples=10,
                eval_correct=9,
                eval_loss_sum=2.0,
                client_seconds=0.2,
            ),
            content(
                num_examples=300,
                train_loss=2.0,
                eval_examples=30,
                eval_correct=15,
                eval_loss_sum=6.0,
                client_seconds=0.5,
            ),
        ]
    )
    assert out["federated-accuracy"] == pytest.approx(24 / 40)
    assert out["federated-loss"] == pytest.approx(8 / 40)
    assert out["train-loss"] == pytest.approx((100 * 1.0 + 300 * 2.0) / 400)
    assert out["client-seconds"] == pytest.approx(0.5)
    # Each is a common metric, filling its history.json field.
    assert set(out) <= set(COMMON_METRICS)


def test_a_metric_is_left_out_unless_every_reply_reports_it():
    out = reply_metrics([content(num_examples=10, train_loss=1.0), content(num_examples=10, client_seconds=0.3)])
    assert out == {}


def test_federated_scores_count_only_replies_that_scored_a_model():
    out = reply_metrics(
        [
            content(num_examples=4, train_loss=0.5, eval_examples=0, eval_correct=0, eval_loss_sum=0.0),
            content(num_examples=4, train_loss=1.5, eval_examples=8, eval_correct=6, eval_loss_sum=4.0),
        ]
    )
    assert out == {"train-loss": 1.0, "federated-accuracy": 0.75, "federated-loss": 0.5}


def test_no_local_test_examples_means_no_federated_scores():
    assert reply_metrics([content(num_examples=4, train_loss=0.5)]) == {"train-loss": 0.5}
    assert reply_metrics([]) == {}
