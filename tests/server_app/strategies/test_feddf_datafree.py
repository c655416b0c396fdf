"""feddf-datafree's keep-or-revert check: the nodes that did not train this round (else the round's nodes) score
the FedAvg and the distilled model of their group. The check is driven by hand: its Ask answered by plain records,
screened by the loop's own `screen`."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from common.config import ConfigError
from common.protocol import ARRAYS, CONFIG, EVAL_CORRECT, EVAL_EXAMPLES, EVAL_LOSS_SUM, EVALUATE, METRICS, MODEL
from server_app.round import Failure, Reply, RoundResult
from server_app.strategies.feddf_datafree import count_reason
from tests.server_app.helpers import Nodes, drive_screened, round_input, strategy

FEDAVG, DISTILLED = 0.0, 1.0
NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn"), 4: ("d", "cnn"), 5: ("e", "mlp-32"), 6: ("f", "cnn")}
GROUPS = ("mlp-32", "cnn")


def weights(value):
    return ArrayRecord({"w": Array(np.full(2, value, dtype=np.float32))})


def scoring(answers):
    """Nodes answering `evaluate`: `answers[node][candidate]` is (correct, examples), an error text, or None for no
    answer; the candidate is told by the weights' value."""

    def answer(message):
        candidate = float(message.content[ARRAYS]["w"].numpy()[0])
        reply = answers[message.metadata.dst_node_id][candidate]
        if reply is None or isinstance(reply, str):
            return reply
        correct, examples = reply
        return RecordDict({METRICS: MetricRecord({EVAL_CORRECT: correct, EVAL_EXAMPLES: examples, EVAL_LOSS_SUM: 1.0})})

    return answer


def keep(answers, trained=(1, 2, 3, 4), replied=None, connected=(1, 2, 3, 4)):
    """The check after a round that sent training to `trained`, of which `replied` (default: all) replied.
    Returns the models kept (by candidate), the round's result, the loop's trace and the check's Ask."""
    datafree = strategy("feddf-datafree", NODES)
    r = round_input(list(trained), connected=list(connected))
    replies = [Reply(n, i, RecordDict()) for i, n in enumerate(trained if replied is None else replied)]
    result = RoundResult({})
    steps = datafree.judge(
        r, {g: weights(FEDAVG) for g in GROUPS}, {g: weights(DISTILLED) for g in GROUPS}, replies, result
    )
    out, trace, asks = drive_screened(steps, scoring(answers), Nodes(NODES), list(trained))
    return {g: float(out[g]["w"].numpy()[0]) for g in GROUPS}, result, trace, asks


def scored_by(asks):
    """(node, architecture, candidate) of every model the check sent."""
    return sorted(
        (m.metadata.dst_node_id, str(m.content[CONFIG][MODEL]), float(m.content[ARRAYS]["w"].numpy()[0]))
        for ask in asks
        for m in ask.messages
    )


def test_a_group_keeps_the_distilled_model_when_its_nodes_count_at_least_as_many_right(task_identity):
    # mlp-32: 9 + 3 right with FedAvg's, 7 + 5 with the distilled (a tie); cnn: 8 + 8 against 9 + 6.
    out, result, trace, asks = keep(
        {
            1: {FEDAVG: (9, 10), DISTILLED: (7, 10)},
            2: {FEDAVG: (3, 10), DISTILLED: (5, 10)},
            3: {FEDAVG: (8, 10), DISTILLED: (9, 10)},
            4: {FEDAVG: (8, 10), DISTILLED: (6, 10)},
        }
    )
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert result.metrics["distill-kept"] == {"mlp-32": True, "cnn": False}
    # Every node trained, so each scored both models of its own architecture, as `evaluate` messages, in one exchange
    # that does not answer the round.
    (ask,) = asks
    assert scored_by(asks) == [(n, NODES[n][1], c) for n in (1, 2, 3, 4) for c in (FEDAVG, DISTILLED)]
    assert all(m.metadata.message_type == EVALUATE for m in ask.messages)
    assert (ask.label, ask.answers_round) == ("check", False)
    assert len(trace.exchanges) == 1 and trace.rejected == [] and trace.accepted == []


def test_only_nodes_that_scored_both_models_count_and_impossible_counts_are_rejected(task_identity):
    out, result, trace, _ = keep(
        {
            1: {FEDAVG: (5, 10), DISTILLED: (6, 10)},
            2: {FEDAVG: (10, 10), DISTILLED: (12, 10)},  # would revert mlp-32, but its distilled answer is impossible
            3: {FEDAVG: (1, 10), DISTILLED: "node crashed"},  # would keep cnn, but one answer is an error
            4: {FEDAVG: (9, 10), DISTILLED: None},  # no answer before the deadline
        }
    )
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert result.metrics["distill-kept"] == {"mlp-32": True, "cnn": False}
    assert trace.rejected == [Failure(2, "check rejected: 12 right of 10")]
    assert [f.node for f in trace.failures()] == [3, 4, 2]
    assert [f.reason for f in trace.failures()] == [
        "node crashed",
        "no reply before round-timeout",
        "check rejected: 12 right of 10",
    ]


def test_nodes_that_did_not_train_this_round_judge_their_group_in_place_of_those_that_did(task_identity):
    # Nodes 1 (mlp-32) and 3 (cnn) trained; FedAvg's models fit their data, so they would keep FedAvg's.
    answers = {
        1: {FEDAVG: (10, 10), DISTILLED: (2, 10)},
        3: {FEDAVG: (10, 10), DISTILLED: (2, 10)},
        2: {FEDAVG: (4, 10), DISTILLED: (6, 10)},
        5: {FEDAVG: (5, 10), DISTILLED: (4, 10)},
        4: {FEDAVG: (5, 10), DISTILLED: (3, 10)},
        6: {FEDAVG: (1, 10), DISTILLED: (4, 10)},
    }
    out, _, _, asks = keep(answers, trained=(1, 3), connected=tuple(NODES))
    # mlp-32: 6 + 4 right with the distilled against 4 + 5; cnn: 3 + 4 against 5 + 1.
    assert out == {"mlp-32": DISTILLED, "cnn": DISTILLED}
    assert scored_by(asks) == [(n, NODES[n][1], c) for n in (2, 4, 5, 6) for c in (FEDAVG, DISTILLED)]


def test_a_group_all_of_whose_nodes_trained_is_judged_by_those_that_replied(task_identity):
    answers = {n: {FEDAVG: (5, 10), DISTILLED: (5, 10)} for n in NODES}
    answers[6] = {FEDAVG: (9, 10), DISTILLED: (1, 10)}
    # mlp-32: nodes 1 and 2 trained, only 1 replied; node 5 is not connected. cnn: node 6 held out.
    out, _, _, asks = keep(answers, trained=(1, 2, 3), replied=(1, 3), connected=(1, 2, 3, 4, 6))
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert {(n, name) for n, name, _ in scored_by(asks)} == {(1, "mlp-32"), (4, "cnn"), (6, "cnn")}


def test_a_group_with_no_node_to_judge_it_keeps_fedavg(task_identity):
    answers = {n: {FEDAVG: (5, 10), DISTILLED: (5, 10)} for n in NODES}
    out, result, _, asks = keep(answers, trained=(1, 2, 3, 4), replied=(1, 2))
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert result.metrics["distill-kept"] == {"mlp-32": True, "cnn": False}
    assert {n for n, _, _ in scored_by(asks)} == {1, 2}


def test_counts_that_are_not_whole_or_missing_are_rejected_with_what_was_wrong(task_identity):
    _, result, trace, _ = keep(
        {
            1: {FEDAVG: (9.5, 10), DISTILLED: (9, 10)},
            2: {FEDAVG: (-1, 10), DISTILLED: (9, 10)},
            3: {FEDAVG: (1, 10), DISTILLED: (2, 10)},
            4: {FEDAVG: (1, 10), DISTILLED: (2, 10)},
        }
    )
    assert trace.rejected == [
        Failure(1, "check rejected: 9.5 right of 10"),
        Failure(2, "check rejected: -1 right of 10"),
    ]
    assert result.metrics["distill-kept"] == {"mlp-32": False, "cnn": True}


def test_a_reply_without_counts_is_refused_by_name():
    assert count_reason(RecordDict()) == "no 'eval-correct' and 'eval-examples' counts in the reply"
    assert count_reason(RecordDict({METRICS: MetricRecord({EVAL_CORRECT: 3})})) == (
        "no 'eval-correct' and 'eval-examples' counts in the reply"
    )
    assert count_reason(RecordDict({METRICS: MetricRecord({EVAL_CORRECT: 3, EVAL_EXAMPLES: 3})})) is None


def test_differential_privacy_is_refused_naming_the_check():
    with pytest.raises(
        ConfigError,
        match="'dp-epsilon' = 3.0: strategy 'feddf-datafree' has the nodes score each "
        "server step on their local test splits",
    ):
        strategy("feddf-datafree", **{"dp-epsilon": 3.0})


def test_a_whole_round_trains_distills_on_generated_inputs_then_asks_the_judges(task_identity):
    from common.models import initial_model, to_record
    from common.protocol import NUM_EXAMPLES, TRAIN_SUPERVISED

    nodes = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "mlp-32")}
    datafree = strategy("feddf-datafree", nodes, **{"feddf-datafree.distill-steps": 2, "batch-size": 8})
    models = {n: to_record(initial_model("mlp-32", "digits", n)) for n in nodes}

    def answer(message):
        node = message.metadata.dst_node_id
        if message.metadata.message_type == TRAIN_SUPERVISED:
            return RecordDict({ARRAYS: models[node], METRICS: MetricRecord({NUM_EXAMPLES: 10})})
        return RecordDict({METRICS: MetricRecord({EVAL_CORRECT: 5, EVAL_EXAMPLES: 10, EVAL_LOSS_SUM: 1.0})})

    start = {"mlp-32": to_record(initial_model("mlp-32", "digits", 9))}
    result, trace, (train, check) = drive_screened(
        datafree.round(round_input([1, 2], start, connected=[1, 2, 3])), answer, Nodes(nodes), [1, 2]
    )
    assert train.answers_round and not check.answers_round and trace.accepted == [1, 2]
    # Node 3 did not train: it judges, scoring both candidates.
    assert [m.metadata.dst_node_id for m in check.messages] == [3, 3]
    assert set(result.metrics) == {
        "clipped-updates",
        "generator-loss",
        "distill-steps",
        "distill-validation-start",
        "distill-validation-best",
        "distill-kept",
    }
    # A tie keeps the distilled model.
    assert result.metrics["distill-kept"] == {"mlp-32": True} and result.metrics["distill-steps"] <= 2
    assert list(result.globals) == ["mlp-32"]
