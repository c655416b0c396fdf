"""The strategy's aggregation and bookkeeping against hand computations."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import parse_run_config
from server_app.sampling import NodeSampler
from server_app.strategy import TwoStage, sum_eval_counts


def reply_from(node, arrays=None, error=None, **metrics):
    sent = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type="train.student")
    sent.metadata.__dict__["_message_id"] = f"m{node}"
    if error:
        return Message(Error(code=1, reason=error), reply_to=sent)
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = ArrayRecord({"w": Array(np.asarray(arrays, dtype=np.float32))})
    return Message(content, reply_to=sent)


def test_sum_eval_counts_is_sample_weighted():
    records = [
        RecordDict({"m": MetricRecord({"num-examples": 100, "train-loss": 1.0, "eval-examples": 10, "eval-correct": 9, "eval-loss-sum": 2.0, "client-seconds": 0.2})}),
        RecordDict({"m": MetricRecord({"num-examples": 300, "train-loss": 2.0, "eval-examples": 30, "eval-correct": 15, "eval-loss-sum": 6.0, "client-seconds": 0.5})}),
    ]
    out = sum_eval_counts(records, "num-examples")
    assert out["federated-accuracy"] == pytest.approx(24 / 40)
    assert out["federated-loss"] == pytest.approx(8 / 40)
    assert out["train-loss"] == pytest.approx((100 * 1.0 + 300 * 2.0) / 400)
    assert out["client-seconds"] == pytest.approx(0.5)


def test_aggregate_train_is_fedavg_over_valid_replies_and_tracks_teacher_holders(task_identity):
    strategy = TwoStage(parse_run_config({}), NodeSampler(seed=1, timeout=1))
    strategy.start_phase("student", ArrayRecord())
    strategy.holds_teacher = {3, 4}
    strategy._sent = [1, 2, 3]
    metrics = {"train-loss": 0.5}
    replies = [
        reply_from(1, [1.0, 2.0], **{"num-examples": 100}, **metrics),
        reply_from(2, [3.0, 6.0], **{"num-examples": 300}, **metrics),
        reply_from(3, error="crashed"),
    ]
    arrays, out = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [2.5, 5.0])
    assert out["train-loss"] == pytest.approx(0.5)
    # 1 and 2 now hold the teacher; 3 failed and may have lost it; 4 was not asked.
    assert strategy.holds_teacher == {1, 2, 4}


def test_no_valid_reply_aggregates_nothing(task_identity):
    strategy = TwoStage(parse_run_config({}), NodeSampler(seed=1, timeout=1))
    strategy._sent = [1]
    assert strategy.aggregate_train(1, [reply_from(1, error="boom")]) == (None, None)


def test_malformed_replies_are_rejected_with_a_reason_not_averaged(task_identity):
    strategy = TwoStage(parse_run_config({}), NodeSampler(seed=1, timeout=1))
    strategy._sent = [1, 2, 3, 4, 5]
    strategy._arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    replies = [
        reply_from(1, [1.0, 1.0], **{"num-examples": 10, "train-loss": 0.1}),
        reply_from(2, [np.nan, 1.0], **{"num-examples": 10, "train-loss": 0.1}),
        reply_from(3, [1.0, 1.0, 1.0], **{"num-examples": 10, "train-loss": 0.1}),
        reply_from(4, [5.0, 5.0], **{"train-loss": 0.1}),
        reply_from(5, None, **{"num-examples": 10, "train-loss": 0.1}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, 1.0])
    reasons = {r["node"]: r["reason"] for r in strategy.rejected}
    assert set(reasons) == {2, 3, 4, 5}
    assert "'w' holds NaN or Inf" in reasons[2]
    assert "'w' is float32[3], expected float32[2]" in reasons[3]
    assert "num-examples" in reasons[4]
    assert reasons[5].startswith("reply rejected:")


def test_too_few_usable_replies_stop_the_run_with_the_reasons():
    from server_app.rounds import RunAborted, _check_replies

    cfg = parse_run_config({"min-replies": 0.6})
    failures = [{"node": "a", "reason": "no reply before round-timeout"}, {"node": "b", "reason": "boom"}]
    with pytest.raises(RunAborted) as err:
        _check_replies(cfg, "teacher", 4, sent=5, accepted=2, failures=failures)
    assert "teacher round 4: 2 of 5 sampled nodes replied usably, min-replies = 0.6 needs 3" in str(err.value)
    assert "node a: no reply before round-timeout; node b: boom" in str(err.value)
    _check_replies(cfg, "teacher", 4, sent=5, accepted=3, failures=failures)


def test_clip_norm_bounds_each_update_before_averaging(task_identity):
    strategy = TwoStage(parse_run_config({"clip-norm": 1.0}), NodeSampler(seed=1, timeout=1))
    strategy._sent = [1, 2]
    strategy._arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    replies = [
        reply_from(1, [3.0, 4.0], **{"num-examples": 10, "train-loss": 0.1}),  # norm 5 -> scaled to 1
        reply_from(2, [0.6, 0.0], **{"num-examples": 10, "train-loss": 0.1}),  # norm 0.6 -> kept
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [(0.6 + 0.6) / 2, (0.8 + 0.0) / 2], rtol=1e-6)
    assert metrics["clipped-updates"] == 1
