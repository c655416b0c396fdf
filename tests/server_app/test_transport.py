"""A SuperLink that fails a call with HTTP 500 (SQLite busy) costs a retry, not the run."""

import httpx
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from server_app import transport
from server_app.transport import exchange, retrying

TRANSIENT = httpx.HTTPStatusError(
    "database is locked", request=httpx.Request("POST", "https://superlink/pull"), response=httpx.Response(500)
)
REFUSED = httpx.HTTPStatusError(
    "forbidden", request=httpx.Request("POST", "https://superlink/pull"), response=httpx.Response(403)
)


class BusyGrid:
    """The Grid calls fedkd makes, against nodes that answer at once; each call first fails `busy[call]` times."""

    def __init__(self, busy: dict[str, int], error: Exception = TRANSIENT) -> None:
        self.busy, self.error, self.calls, self.sent = busy, error, {}, {}

    def _maybe_fail(self, call: str) -> None:
        self.calls[call] = self.calls.get(call, 0) + 1
        if self.calls[call] <= self.busy.get(call, 0):
            raise self.error

    def get_node_ids(self):
        self._maybe_fail("get_node_ids")
        return [1, 2]

    def push_messages(self, messages):
        self._maybe_fail("push")
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent[f"m{i}"] = m
        return list(self.sent)

    def pull_messages(self, ids):
        self._maybe_fail("pull")
        return [Message(RecordDict({"reply": ConfigRecord({"ok": 1})}), reply_to=self.sent[i]) for i in ids]


class BackwardGrid(BusyGrid):
    """Nodes whose replies arrive in the reverse of the order they were sent, one per pull."""

    def pull_messages(self, ids):
        last = max(ids, key=lambda i: int(i[1:]))
        return [Message(RecordDict({"reply": ConfigRecord({"ok": 1})}), reply_to=self.sent[last])]


def _messages(nodes=(1, 2)):
    return [Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=n, message_type="train") for n in nodes]


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(transport, "RETRY_SECONDS", 0.01)


def test_failed_pushes_and_pulls_are_tried_again_and_every_reply_arrives(task_identity):
    grid = BusyGrid({"push": 2, "pull": 3})
    result = exchange(grid, _messages(), timeout=10)
    assert grid.calls["push"] == 3 and grid.calls["pull"] == 4
    assert len(result.ok()) == 2 and result.missing == [] and result.failures() == []


def test_a_superlink_busy_past_the_deadline_leaves_the_nodes_missing(task_identity):
    result = exchange(BusyGrid({"pull": 10**6}), _messages(), timeout=0.2)
    assert result.missing == [1, 2]
    assert [f.reason for f in result.failures()] == ["no reply before round-timeout"] * 2


def test_a_refusal_is_not_retried():
    grid = BusyGrid({"get_node_ids": 1}, REFUSED)
    with pytest.raises(httpx.HTTPStatusError, match="forbidden"):
        retrying(grid.get_node_ids, 10, "list the nodes")
    assert grid.calls["get_node_ids"] == 1
    assert retrying(BusyGrid({"get_node_ids": 2}).get_node_ids, 10, "list the nodes") == [1, 2]


def test_replies_are_recorded_in_the_order_sent_whatever_order_they_arrive_in(task_identity, monkeypatch):
    monkeypatch.setattr(transport, "FAST_POLL_SECONDS", 0.0)
    result = exchange(BackwardGrid({}), _messages((3, 1, 2)), timeout=10)
    assert [m.metadata.src_node_id for m in result.replies] == [3, 1, 2]
    assert [m.metadata.reply_to_message_id for m in result.replies] == result.message_ids == ["m0", "m1", "m2"]
