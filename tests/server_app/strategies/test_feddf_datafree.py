"""feddf-datafree's keep-or-revert check: the nodes that did not train this round (else the round's nodes) score
the FedAvg and the distilled model of their group."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from common.config import ConfigError, parse_run_config
from common.protocol import ARRAYS, CONFIG, EVAL_CORRECT, EVAL_EXAMPLES, EVALUATE, METRICS, MODEL
from server_app.sampling import NodeSampler
from server_app.strategies.base import Round
from server_app.strategies.feddf_datafree import FedDFDataFree

FEDAVG, DISTILLED = 0.0, 1.0
NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn"), 4: ("d", "cnn"), 5: ("e", "mlp-32"), 6: ("f", "cnn")}


def weights(value):
    return ArrayRecord({"w": Array(np.full(2, value, dtype=np.float32))})


class ScoringGrid:
    """Nodes that answer `evaluate` at once: `answers[node][candidate]` is (correct, examples), an error text, or None
    for no answer; the candidate is told by the weights' value."""

    def __init__(self, answers, connected):
        self.answers, self.connected, self.sent = answers, connected, {}

    def get_node_ids(self):
        return list(self.connected)

    def push_messages(self, messages):
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent[f"m{i}"] = m
        return list(self.sent)

    def pull_messages(self, ids):
        replies = []
        for i in ids:
            sent = self.sent[i]
            candidate = float(sent.content[ARRAYS]["w"].numpy()[0])
            answer = self.answers[sent.metadata.dst_node_id][candidate]
            if isinstance(answer, str):
                replies.append(Message(Error(code=1, reason=answer), reply_to=sent))
            elif answer is not None:
                correct, examples = answer
                metrics = MetricRecord({EVAL_CORRECT: correct, EVAL_EXAMPLES: examples})
                replies.append(Message(RecordDict({METRICS: metrics}), reply_to=sent))
        return replies


def keep(answers, trained=(1, 2, 3, 4), replied=None, connected=(1, 2, 3, 4)):
    """The check after a round that sent training to `trained`, of which `replied` (default: all) replied."""
    sampler = NodeSampler(seed=1, timeout=1)
    sampler.names = {n: name for n, (name, _) in NODES.items()}
    sampler.models = {n: model for n, (_, model) in NODES.items()}
    strategy = FedDFDataFree(parse_run_config({"strategy": "feddf-datafree", "round-timeout": 0.2}), sampler)
    replies = [
        Message(RecordDict(), dst_node_id=n, message_type=EVALUATE) for n in (trained if replied is None else replied)
    ]
    for m in replies:
        m.metadata.__dict__["_src_node_id"] = m.metadata.dst_node_id
    grid, into = ScoringGrid(answers, connected), Round({}, list(trained))
    groups = ("mlp-32", "cnn")
    out = strategy.keep(
        "student", {g: weights(FEDAVG) for g in groups}, {g: weights(DISTILLED) for g in groups}, replies, grid, into
    )
    return {g: float(out[g]["w"].numpy()[0]) for g in groups}, into, grid


def scored_by(grid):
    """(node, architecture, candidate) of every model the check sent."""
    return sorted(
        (m.metadata.dst_node_id, str(m.content[CONFIG][MODEL]), float(m.content[ARRAYS]["w"].numpy()[0]))
        for m in grid.sent.values()
    )


def test_a_group_keeps_the_distilled_model_when_its_nodes_count_at_least_as_many_right(task_identity):
    # mlp-32: 9 + 3 right with FedAvg's, 7 + 5 with the distilled (a tie); cnn: 8 + 8 against 9 + 6.
    out, into, grid = keep(
        {
            1: {FEDAVG: (9, 10), DISTILLED: (7, 10)},
            2: {FEDAVG: (3, 10), DISTILLED: (5, 10)},
            3: {FEDAVG: (8, 10), DISTILLED: (9, 10)},
            4: {FEDAVG: (8, 10), DISTILLED: (6, 10)},
        }
    )
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert into.metrics["distill-kept"] == {"mlp-32": True, "cnn": False}
    # Every node trained, so each scored both models of its own architecture, as `evaluate` messages, in one exchange.
    assert scored_by(grid) == [(n, NODES[n][1], c) for n in (1, 2, 3, 4) for c in (FEDAVG, DISTILLED)]
    assert all(m.metadata.message_type == EVALUATE for m in grid.sent.values())
    assert len(into.exchanges) == 1 and into.exchanges[0].bytes_down > 0 and into.rejected == []


def test_only_nodes_that_scored_both_models_count_and_impossible_counts_are_rejected(task_identity):
    out, into, _ = keep(
        {
            1: {FEDAVG: (5, 10), DISTILLED: (6, 10)},
            2: {FEDAVG: (10, 10), DISTILLED: (12, 10)},  # would revert mlp-32, but its distilled answer is impossible
            3: {FEDAVG: (1, 10), DISTILLED: "node crashed"},  # would keep cnn, but one answer is an error
            4: {FEDAVG: (9, 10), DISTILLED: None},  # no answer before the deadline
        }
    )
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert into.metrics["distill-kept"] == {"mlp-32": True, "cnn": False}
    assert into.rejected == [{"node": 2, "reason": "check rejected: 12 right of 10"}]
    assert [f["node"] for f in into.failures()] == [3, 4, 2]


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
    out, into, grid = keep(answers, trained=(1, 3), connected=tuple(NODES))
    # mlp-32: 6 + 4 right with the distilled against 4 + 5; cnn: 3 + 4 against 5 + 1.
    assert out == {"mlp-32": DISTILLED, "cnn": DISTILLED}
    assert scored_by(grid) == [(n, NODES[n][1], c) for n in (2, 4, 5, 6) for c in (FEDAVG, DISTILLED)]


def test_a_group_all_of_whose_nodes_trained_is_judged_by_those_that_replied(task_identity):
    answers = {n: {FEDAVG: (5, 10), DISTILLED: (5, 10)} for n in NODES}
    answers[6] = {FEDAVG: (9, 10), DISTILLED: (1, 10)}
    # mlp-32: nodes 1 and 2 trained, only 1 replied; node 5 is not connected. cnn: node 6 held out.
    out, into, grid = keep(answers, trained=(1, 2, 3), replied=(1, 3), connected=(1, 2, 3, 4, 6))
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert {(n, name) for n, name, _ in scored_by(grid)} == {(1, "mlp-32"), (4, "cnn"), (6, "cnn")}


def test_a_group_with_no_node_to_judge_it_keeps_fedavg(task_identity):
    answers = {n: {FEDAVG: (5, 10), DISTILLED: (5, 10)} for n in NODES}
    out, into, grid = keep(answers, trained=(1, 2, 3, 4), replied=(1, 2))
    assert out == {"mlp-32": DISTILLED, "cnn": FEDAVG}
    assert into.metrics["distill-kept"] == {"mlp-32": True, "cnn": False}
    assert {m.metadata.dst_node_id for m in grid.sent.values()} == {1, 2}


def test_counts_that_are_not_whole_or_missing_are_rejected_with_what_was_wrong(task_identity):
    _, into, _ = keep(
        {
            1: {FEDAVG: (9.5, 10), DISTILLED: (9, 10)},
            2: {FEDAVG: (-1, 10), DISTILLED: (9, 10)},
            3: {FEDAVG: (1, 10), DISTILLED: (2, 10)},
            4: {FEDAVG: (1, 10), DISTILLED: (2, 10)},
        }
    )
    assert into.rejected == [
        {"node": 1, "reason": "check rejected: 9.5 right of 10"},
        {"node": 2, "reason": "check rejected: -1 right of 10"},
    ]
    assert into.metrics["distill-kept"] == {"mlp-32": False, "cnn": True}


def test_differential_privacy_is_refused_naming_the_check():
    with pytest.raises(
        ConfigError,
        match="'dp-epsilon' = 3.0: strategy 'feddf-datafree' has the nodes score each "
        "server step on their local test splits",
    ):
        FedDFDataFree.check_config(parse_run_config({"strategy": "feddf-datafree", "dp-epsilon": 3.0}))
