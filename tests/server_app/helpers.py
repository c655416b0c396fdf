"""What the server tests share: nodes known by name and architecture, strategies built from a run config, weights
and replies as plain records, and a driver that runs a strategy's round generator without a Grid."""

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict

from common.config import RunConfig, parse_run_config
from common.data import builtin_task
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from server_app.loop import RoundLoop, RoundTrace
from server_app.round import Ask, Phase, Reply, RoundInput, RoundResult
from server_app.settings import parse
from server_app.strategies import STRATEGIES, Strategy
from server_app.transport import Exchange

# The one phase of a single-phase strategy under the default run config.
STUDENT = Phase("student", RunConfig().num_student_rounds)


class Nodes:
    """A federation's nodes as a strategy sees them: id -> (stable name, architecture)."""

    def __init__(self, nodes: dict[int, tuple[str, str]] | None = None, default: str = "mlp-32") -> None:
        self.nodes, self.default = nodes or {}, default

    def name(self, node: int) -> str:
        return self.nodes[node][0] if node in self.nodes else f"node-{node}"

    def model(self, node: int) -> str:
        return self.nodes[node][1] if node in self.nodes else self.default


# Plain FedAvg weights and no clipping, so a method's averages are computed by hand in its tests; the robust
# defaults have tests of their own (tests/server_app/strategies/kit/test_averaging.py).
PLAIN = {"max-weight-share": 1.0, "clip-median-multiple": 0.0}


def strategy(name: str, nodes: dict[int, tuple[str, str]] | None = None, **raw: Any) -> Strategy:
    """Strategy `name` as the ServerApp builds it from the run config `raw` (kebab-case keys, tables dotted) on top
    of PLAIN."""
    cfg, settings = parse({"strategy": name, **PLAIN, **raw})
    return STRATEGIES[name](cfg, settings, Nodes(nodes), builtin_task(cfg.dataset))


def weights(*values: float, dtype=np.float32) -> ArrayRecord:
    """One array `w` holding `values`."""
    return ArrayRecord({"w": Array(np.asarray(values, dtype=dtype))})


def values(record: ArrayRecord, key: str = "w") -> list[float]:
    return record[key].numpy().tolist()


def trained(values_: list[float] | None, num_examples: int, **metrics: Any) -> RecordDict:
    """A training reply's content: weights `w` (none if None) and its metrics."""
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: num_examples, **metrics})})
    if values_ is not None:
        content[ARRAYS] = weights(*values_)
    return content


def round_input(
    sampled: list[int],
    globals_: dict[str, ArrayRecord] | None = None,
    phase: Phase = STUDENT,
    server_round: int = 1,
    connected: list[int] | None = None,
    test=None,
) -> RoundInput:
    return RoundInput(phase, server_round, globals_ or {}, sampled, connected or sorted(sampled), test)


# An answer to one message of an Ask: a reply's content, an error's reason, or None for no reply in time.
Answer = Callable[[Message], RecordDict | str | None]


def drive(
    steps: Generator[Ask, list[Reply], RoundResult], answer: Answer
) -> tuple[RoundResult, list[Ask], list[list[Reply]]]:
    """Run a round generator, answering each message of each Ask with `answer(message)`; every reply with content
    is handed back, in the Ask's order, as a plain `Reply` (no screening). Returns the result, the Asks and what
    each received."""
    asks, handed = [], []
    replies = None
    while True:
        try:
            ask = steps.send(replies)
        except StopIteration as stop:
            return stop.value, asks, handed
        asks.append(ask)
        replies = []
        for i, message in enumerate(ask.messages):
            content = answer(message)
            if isinstance(content, RecordDict):
                replies.append(Reply(message.metadata.dst_node_id, i, content))
        handed.append(replies)


def exchanged(messages: list[Message], answer: Answer, **fields: Any) -> Exchange:
    """The Exchange a Grid would give back for `messages`: ids m0, m1, ... in the order sent, each node answering
    `answer(message)`; replies arrive in the reverse order."""
    ids, replies, missing = [], [], []
    for i, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"m{i}"
        ids.append(f"m{i}")
        content = answer(message)
        if content is None:
            missing.append(message.metadata.dst_node_id)
        elif isinstance(content, str):
            replies.append(Message(Error(code=1, reason=content), reply_to=message))
        else:
            replies.append(Message(content, reply_to=message))
    sent_to = {i: m.metadata.dst_node_id for i, m in zip(ids, messages)}
    return Exchange(replies=replies[::-1], missing=missing, message_ids=ids, sent_to=sent_to, **fields)


def screening_loop(nodes: Nodes, cfg: RunConfig | None = None) -> RoundLoop:
    """A RoundLoop whose only use is `screen`: it needs the nodes' names and the run config's caps."""
    return RoundLoop(None, cfg or parse_run_config({}), {}, None, nodes, None)


def drive_screened(
    steps: Generator[Ask, list[Reply], RoundResult], answer: Answer, nodes: Nodes, sampled: list[int]
) -> tuple[RoundResult, RoundTrace, list[Ask]]:
    """Run a round generator as the loop does, minus the Grid: each Ask's messages answered by `answer`, the
    replies screened by the loop's `screen`. Returns the result, the loop's trace of the round and the Asks."""
    loop, trace, asks = screening_loop(nodes), RoundTrace(sampled), []
    replies = None
    while True:
        try:
            ask = steps.send(replies)
        except StopIteration as stop:
            return stop.value, trace, asks
        asks.append(ask)
        trace.exchanges.append(ex := exchanged(ask.messages, answer))
        replies = loop.screen(ex, ask, trace)
