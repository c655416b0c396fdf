"""The round loop's own work: screening replies (order, labels, message index, ε), `min-replies`, DP's private
epochs on every message, and a round's input and trace."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import parse_run_config
from common.data import builtin_task
from common.protocol import CONFIG, DP_EPSILON, METRICS, NUM_EXAMPLES, PRIVATE_EPOCHS, TRAIN_SUPERVISED
from server_app.loop import RoundLoop, RoundTrace, RunAborted
from server_app.round import Ask, Failure, Phase, Reply, RoundResult
from server_app.sampling import NodeSampler
from server_app.screening import weights_check
from tests.server_app.helpers import Nodes, exchanged, screening_loop, strategy, trained, weights

NODES = Nodes({1: ("zeta", "mlp-32"), 2: ("alpha", "mlp-32"), 3: ("beta", "mlp-32"), 4: ("gamma", "mlp-32")})


def ask_of(nodes, check=None, **fields) -> Ask:
    messages = [
        Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=n, message_type=TRAIN_SUPERVISED) for n in nodes
    ]
    return Ask(messages, [check or weights_check(weights(0, 0), 100)] * len(messages), **fields)


def answers(by_node: dict):
    return lambda message: by_node.get(message.metadata.dst_node_id)


def test_screen_rejects_bad_replies_with_reasons_and_orders_the_rest_by_name(task_identity):
    ask = ask_of([1, 2, 3, 4])
    ex = exchanged(
        ask.messages,
        answers({1: trained([1.0, 1.0], 10), 2: trained([2.0, 2.0], 10), 3: trained([np.nan, 1.0], 10), 4: "crashed"}),
    )
    trace = RoundTrace([1, 2, 3, 4], [ex])
    accepted = screening_loop(NODES).screen(ex, ask, trace)
    assert [reply.node for reply in accepted] == [2, 1]  # alpha before zeta, whatever the arrival order
    assert trace.accepted == [2, 1]
    assert trace.rejected == [Failure(3, "reply rejected: 'w' holds NaN or Inf")]
    # Errors and missing replies of the exchanges first, then the rejected ones.
    assert trace.failures() == [Failure(4, "crashed"), Failure(3, "reply rejected: 'w' holds NaN or Inf")]


def test_each_reply_is_mapped_to_the_index_of_the_message_it_answers_and_checked_by_that_messages_check(
    task_identity,
):
    messages = ask_of([1, 2, 1]).messages
    checked = []

    def check(i):
        def run(content):
            checked.append(i)
            return None if i != 1 else "the second message's check"

        return run

    ask = Ask(messages, [check(0), check(1), check(2)])
    # Node 1 was sent two messages (index 0 and 2): each reply keeps its own.
    contents = [trained([1.0, 1.0], 1), trained([2.0, 2.0], 2), trained([3.0, 3.0], 3)]
    ex = exchanged(messages, lambda m: contents[messages.index(m)])
    trace = RoundTrace([1, 2])
    accepted = screening_loop(NODES).screen(ex, ask, trace)
    assert sorted(checked) == [0, 1, 2]
    assert sorted((r.node, r.index) for r in accepted) == [(1, 0), (1, 2)]
    assert all(r.content is contents[r.index] for r in accepted)
    assert trace.rejected == [Failure(2, "reply rejected: the second message's check")]


def test_a_rejection_starts_with_the_asks_label(task_identity):
    ask = ask_of([1, 2], check=lambda content: "12 right of 10", label="check")
    ex = exchanged(ask.messages, answers({1: trained(None, 1), 2: trained(None, 1)}))
    trace = RoundTrace([1, 2])
    assert screening_loop(NODES).screen(ex, ask, trace) == []
    assert trace.rejected == [
        Failure(2, "check rejected: 12 right of 10"),
        Failure(1, "check rejected: 12 right of 10"),
    ]


def test_a_reply_its_check_cannot_read_is_rejected_not_the_run(task_identity):
    def check(content):
        return None if content[METRICS][NUM_EXAMPLES] > 0 else "no examples"  # KeyError on a reply without metrics

    ask = ask_of([1, 2], check=check)
    ex = exchanged(ask.messages, answers({1: trained(None, 5), 2: RecordDict({"other": ConfigRecord()})}))
    trace = RoundTrace([1, 2])
    assert [reply.node for reply in screening_loop(NODES).screen(ex, ask, trace)] == [1]
    assert trace.rejected == [Failure(2, "reply rejected: unreadable (KeyError: 'metrics')")]


def test_an_exchange_that_does_not_answer_the_round_leaves_its_accepted_replies_alone(task_identity):
    loop, trace = screening_loop(NODES), RoundTrace([1, 2, 3])
    train = ask_of([1, 2, 3])
    loop.screen(
        exchanged(train.messages, answers({1: trained([1.0, 1.0], 1), 3: trained([1.0, 1.0], 1)})), train, trace
    )
    assert trace.accepted == [3, 1]
    judges = ask_of([2, 4], check=lambda content: None, label="check", answers_round=False)
    accepted = loop.screen(
        exchanged(judges.messages, answers({2: trained(None, 1), 4: trained(None, 1)})), judges, trace
    )
    assert [r.node for r in accepted] == [2, 4] and trace.accepted == [3, 1]
    # An exchange that answers the round replaces them: its accepted replies are the round's.
    again = ask_of([2])
    loop.screen(exchanged(again.messages, answers({2: trained([1.0, 1.0], 1)})), again, trace)
    assert trace.accepted == [2]


def test_screen_keeps_the_largest_epsilon_each_accepted_node_reports_by_name(task_identity):
    loop, trace = screening_loop(NODES), RoundTrace([1, 2, 3])
    for reported in ({1: 0.5, 2: 1.25, 3: 9.0}, {1: 0.25, 2: 1.5}):
        ask = ask_of([1, 2, 3])
        replies = {n: trained([1.0, 1.0], 10, **{DP_EPSILON: e}) for n, e in reported.items()}
        replies[3] = trained([np.nan, 1.0], 10, **{DP_EPSILON: 9.0})  # rejected: its ε is not kept
        loop.screen(exchanged(ask.messages, answers(replies)), ask, trace)
    assert trace.epsilon == {"zeta": 0.5, "alpha": 1.5}


def test_too_few_usable_replies_stop_the_run_with_the_reasons():
    loop = RoundLoop(None, parse_run_config({"min-replies": 0.6}), {}, None, NODES, None)
    failures = [Failure(1, "no reply before round-timeout"), Failure(2, "boom")]
    with pytest.raises(RunAborted) as err:
        loop.check_replies(Phase("teacher", 5), 4, sent=5, accepted=2, failures=failures)
    assert str(err.value) == (
        "teacher round 4: 2 of 5 sampled nodes replied usably, min-replies = 0.6 needs 3. "
        "Failures: node 1: no reply before round-timeout; node 2: boom"
    )
    loop.check_replies(Phase("teacher", 5), 4, sent=5, accepted=3, failures=failures)
    # At least one reply, however small the share.
    with pytest.raises(
        RunAborted, match="0 of 1 sampled nodes replied usably, min-replies = 0.6 needs 1. Failures: none"
    ):
        loop.check_replies(Phase("student", 5), 1, sent=1, accepted=0, failures=[])


class Grid:
    """Nodes that answer at once: `answer(message)` is the reply's content, an error's reason, or None."""

    def __init__(self, nodes, answer) -> None:
        self.node_ids, self.answer, self.sent = list(nodes), answer, {}

    def get_node_ids(self):
        return self.node_ids

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message_id = f"m{len(self.sent)}"
            self.sent[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, ids):
        replies = []
        for message_id in ids:
            content = self.answer(self.sent[message_id])
            if isinstance(content, str):
                replies.append(Message(Error(code=1, reason=content), reply_to=self.sent[message_id]))
            elif content is not None:
                replies.append(Message(content, reply_to=self.sent[message_id]))
        return replies


def sampler(nodes: Nodes) -> NodeSampler:
    s = NodeSampler(seed=1, timeout=1)
    s.names = {n: name for n, (name, _) in nodes.nodes.items()}
    s.models = {n: model for n, (_, model) in nodes.nodes.items()}
    return s


@pytest.mark.parametrize("dp, expected", [(0.0, None), (3.0, 6)])
def test_only_a_dp_run_tells_the_nodes_their_private_epochs(task_identity, dp, expected):
    raw = {"num-student-rounds": 3, "local-epochs": 2, "dp-epsilon": dp, "round-timeout": 5}
    fedavg = strategy("fedavg", **raw)
    grid = Grid([1], lambda m: RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 1})}))
    loop = RoundLoop(grid, fedavg.cfg, {}, fedavg, sampler(NODES), None)
    message = Message(RecordDict({CONFIG: ConfigRecord({"a": 1})}), dst_node_id=1, message_type=TRAIN_SUPERVISED)
    ex = loop.send([message])
    assert message.content[CONFIG].get(PRIVATE_EPOCHS) == expected and message.content[CONFIG]["a"] == 1
    assert len(ex.ok()) == 1 and ex.bytes_down > 0


class Recorder:
    """A strategy whose round asks each sampled node twice (a training exchange, then a check of other nodes)."""

    def __init__(self, cfg) -> None:
        self.cfg, self.inputs, self.received = cfg, [], []
        self.task = builtin_task(cfg.dataset)

    def private_epochs(self):
        return 0

    def round(self, r):
        self.inputs.append(r)
        train = ask_of(r.sampled)
        self.received.append((yield train))
        others = [n for n in r.connected if n not in r.sampled]
        self.received.append((yield ask_of(others, check=lambda c: None, label="check", answers_round=False)))
        return RoundResult(r.globals, {"clipped-updates": 0})


def test_a_round_samples_from_the_connected_nodes_sends_each_ask_and_hands_back_the_screened_replies(task_identity):
    cfg = parse_run_config({"fraction-train": 0.5, "min-train-nodes": 2, "round-timeout": 5})
    nodes = sampler(NODES)
    replies = {1: trained([1.0, 1.0], 1), 2: trained([np.inf, 1.0], 1), 3: trained([1.0, 1.0], 1), 4: "crashed"}
    recorder = Recorder(cfg)
    loop = RoundLoop(Grid([4, 3, 2, 1], answers(replies)), cfg, {}, recorder, nodes, None)
    globals_ = {"mlp-32": weights(0, 0)}
    result, trace = loop.run_round(Phase("student", 3), 2, globals_, None)
    (r,) = recorder.inputs
    # Connected nodes sorted by name: alpha, beta, gamma, zeta; half of them sampled.
    assert r.connected == [2, 3, 4, 1] and len(r.sampled) == 2 and set(r.sampled) <= {1, 2, 3, 4}
    assert (r.phase, r.server_round, r.globals, r.test) == (Phase("student", 3), 2, globals_, None)
    assert trace.sampled == r.sampled and len(trace.exchanges) == 2
    train, check = recorder.received
    assert all(isinstance(reply, Reply) for reply in train + check)
    assert [reply.node for reply in train] == [n for n in r.connected if n in r.sampled and n in (1, 3)]
    assert trace.accepted == [reply.node for reply in train]
    others = [n for n in r.connected if n not in r.sampled]
    assert [reply.node for reply in check] == [n for n in others if n != 4]
    assert result.globals == globals_
