"""Each reply that once crashed the ServerApp, sent again: it is rejected with its reason, and the round goes on
with the honest replies (the replies are those found reading the round loop and the strategies in process)."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.protocol import (
    ARRAYS,
    DP_EPSILON,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    METRICS,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)
from server_app.screening import check_metrics
from server_app.strategies.kit.metrics import reply_metrics
from tests.server_app.helpers import Nodes, drive_screened, round_input, strategy, trained, values, weights

GLOBAL = {"mlp-32": weights(0.0, 0.0)}
HONEST = trained([1.0, 1.0], 10, **{TRAIN_LOSS: 0.5})


def renamed(content: RecordDict, record: str, new: str) -> RecordDict:
    out = RecordDict(dict(content.items()))
    out[new] = out.pop(record)
    return out


HOSTILE = {
    "metrics under another name": renamed(HONEST, METRICS, "stats"),
    "train-loss as a list": trained([1.0, 1.0], 10, **{TRAIN_LOSS: [0.5, 0.6]}),
    "dp-epsilon as a list": trained([1.0, 1.0], 10, **{TRAIN_LOSS: 0.5, DP_EPSILON: [1.0]}),
    "weights under another name": renamed(HONEST, ARRAYS, "weights"),
    "a negative train-loss": trained([1.0, 1.0], 10, **{TRAIN_LOSS: -3.0}),
    "more right answers than examples": trained(
        [1.0, 1.0], 10, **{TRAIN_LOSS: 0.5, EVAL_EXAMPLES: 3, EVAL_CORRECT: 45, EVAL_LOSS_SUM: 1.0}
    ),
}
REASONS = {
    "metrics under another name": "metrics must be one MetricRecord named 'metrics'",
    "train-loss as a list": "train-loss = [0.5, 0.6] is not a number",
    "dp-epsilon as a list": "dp-epsilon = [1.0] is not a number",
    "weights under another name": "weights must be an ArrayRecord named 'arrays'",
    "a negative train-loss": "train-loss = -3.0; allowed: 0.0 or more",
    "more right answers than examples": "'eval-correct' = 45 exceeds 'eval-examples' = 3",
}


@pytest.mark.parametrize("name, config", [("fedavg", {"clip-norm": 0.5}), ("feddf", {"feddf.distill-steps": 1})])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_reply_costs_that_reply_and_the_round_averages_the_rest(name, config, kind, task_identity):
    method = strategy(name, **config)
    answers = {1: HONEST, 2: HOSTILE[kind]}
    if name == "feddf":
        method = strategy(name, **config, dataset="synthetic")
        base = method.initial_weights("mlp-32")
        answers = {1: _honest_model(base), 2: _hostile_model(base, kind)}
        globals_ = {"mlp-32": base}
    else:
        globals_ = GLOBAL
    result, trace, _ = drive_screened(
        method.round(round_input([1, 2], globals_)),
        lambda msg: answers[msg.metadata.dst_node_id],
        Nodes(),
        [1, 2],
    )
    assert [(f.node, REASONS[kind] in f.reason) for f in trace.rejected] == [(2, True)], trace.rejected
    assert trace.accepted == [1]
    if name == "fedavg":
        # Node 1's update (norm sqrt 2) clipped to 0.5: the average is node 1's alone.
        assert values(result.globals["mlp-32"]) == pytest.approx([0.5 / 2**0.5] * 2)


def _honest_model(base: ArrayRecord) -> RecordDict:
    return RecordDict({ARRAYS: base, METRICS: MetricRecord({NUM_EXAMPLES: 10, TRAIN_LOSS: 0.5})})


def _hostile_model(base: ArrayRecord, kind: str) -> RecordDict:
    content = HOSTILE[kind]
    out = RecordDict({ARRAYS if ARRAYS in content.array_records else "weights": base})
    for key, record in content.metric_records.items():
        out[key] = record
    return out


@pytest.mark.parametrize(
    "metrics, reason",
    [
        ({EVAL_EXAMPLES: [3], EVAL_CORRECT: 1, EVAL_LOSS_SUM: 1.0}, "eval-examples = [3] is not a number"),
        ({EVAL_CORRECT: 1, EVAL_LOSS_SUM: 1.0}, "evaluation counts ['eval-correct', 'eval-loss-sum'] come without"),
        ({EVAL_EXAMPLES: 3, EVAL_CORRECT: 4, EVAL_LOSS_SUM: 1.0}, "'eval-correct' = 4 exceeds 'eval-examples' = 3"),
        ({EVAL_EXAMPLES: 2e9, EVAL_CORRECT: 1, EVAL_LOSS_SUM: 1.0}, "eval-examples = 2000000000.0; allowed: 0 to"),
        ({EVAL_EXAMPLES: 3, EVAL_CORRECT: 1, EVAL_LOSS_SUM: float("inf")}, "eval-loss-sum = inf is not finite"),
    ],
)
def test_evaluation_counts_are_checked_before_they_are_summed(metrics, reason):
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 3, **metrics})})
    assert reason in check_metrics(content, 1_000_000)


def test_checked_evaluation_counts_give_a_federated_accuracy_within_0_and_1():
    honest = [
        RecordDict({METRICS: MetricRecord({EVAL_EXAMPLES: n, EVAL_CORRECT: c, EVAL_LOSS_SUM: 1.0})})
        for n, c in ((10, 7), (30, 12))
    ]
    assert all(check_metrics(c, 1_000_000) is None for c in honest)
    assert reply_metrics(honest)["federated-accuracy"] == pytest.approx(19 / 40)


def test_a_reply_with_a_config_record_only_is_not_a_metrics_reply():
    assert check_metrics(RecordDict({"node": ConfigRecord({"name": "x"})}), 10) is None


def test_a_second_reply_to_one_message_is_rejected_so_no_node_weighs_twice(task_identity):
    from server_app.loop import RoundTrace
    from tests.server_app.helpers import exchanged, screening_loop

    method = strategy("fedavg")
    steps = method.round(round_input([1, 2], GLOBAL))
    ask = steps.send(None)
    ex = exchanged(ask.messages, lambda msg: HONEST)
    ex.replies.append(ex.replies[0])  # node 2's reply, delivered again
    trace = RoundTrace([1, 2])
    accepted = screening_loop(Nodes()).screen(ex, ask, trace)
    assert [r.node for r in accepted] == [1, 2]
    assert [(f.node, f.reason) for f in trace.rejected] == [(2, "reply rejected: a second reply to one message")]
