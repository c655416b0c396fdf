"""Push messages to nodes and pull their replies under a deadline."""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING
from typing import TypeVar

import httpx
from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

from server_app.round import Failure

# Grid.send_and_receive sleeps 3 s between pulls in deployment. fedkd polls every 5 ms for the
# first second, so a simulated round costs little more than its training, then every 100 ms, so
# that a long wait on deployed nodes does not keep the SuperLink busy answering pulls.
FAST_POLL_SECONDS = 0.005
FAST_POLL_WINDOW_SECONDS = 1.0
SLOW_POLL_SECONDS = 0.1
# A deployed SuperLink answers HTTP 500 when its SQLite state is busy ("database is locked",
# seen with 8 SuperNodes on 2 cores). Such a call is tried again rather than ending the run.
RETRY_SECONDS = 1.0
T = TypeVar("T")


def transient(error: Exception) -> bool:
    """Whether a SuperLink call failed in a way that trying again can mend (5xx, a dropped connection)."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500
    return isinstance(error, httpx.TransportError)


def retrying(call: Callable[[], T], seconds: float, what: str) -> T:
    """`call()`, tried again every RETRY_SECONDS for up to `seconds` while it fails transiently."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except httpx.HTTPError as error:
            if not transient(error) or time.monotonic() >= deadline:
                raise
            log(WARNING, "fedkd: the SuperLink failed to %s (%s); trying again", what, error)
            time.sleep(RETRY_SECONDS)


def record_bytes(content: RecordDict) -> int:
    """Bytes of a message's records, serialised as Flower sends them."""
    return recorddict_to_proto(content).ByteSize()


@dataclass
class Exchange:
    """What one push/pull exchange sent and got back."""

    replies: list[Message] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0
    seconds: float = 0.0
    sent_to: dict[str, int] = field(default_factory=dict)
    # The id the SuperLink gave each message, in the order sent ('' where it refused one).
    message_ids: list[str] = field(default_factory=list)

    def node_of(self, reply: Message) -> int:
        """The node a reply answers for (an error the SuperLink wrote on a node's behalf carries its own id)."""
        return self.sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def ok(self) -> list[Message]:
        """Replies that carry content rather than an error."""
        return [m for m in self.replies if not m.has_error()]

    def failures(self) -> list[Failure]:
        """One per node that answered with an error or not at all."""
        errors = [Failure(self.node_of(m), m.error.reason) for m in self.replies if m.has_error()]
        late = [Failure(n, "no reply before round-timeout") for n in self.missing]
        return errors + late


def exchange(grid: Grid, messages: list[Message], timeout: float) -> Exchange:
    """Send `messages`, wait for their replies until all arrived or `timeout` seconds passed."""
    start = time.perf_counter()
    result = Exchange(bytes_down=sum(record_bytes(m.content) for m in messages))
    # A message the SuperLink refused comes back as a missing id; its node counts as missing.
    pushed = result.message_ids = retrying(
        lambda: list(grid.push_messages(messages)), timeout, "take the round's messages"
    )
    destination = result.sent_to = {i: m.metadata.dst_node_id for i, m in zip(pushed, messages) if i}
    unsent = [m.metadata.dst_node_id for m in messages][len(pushed) :]
    unsent += [m.metadata.dst_node_id for i, m in zip(pushed, messages) if not i]
    pending = set(destination)
    deadline = time.monotonic() + timeout
    fast_until = time.monotonic() + FAST_POLL_WINDOW_SECONDS
    while pending:
        try:
            replies = list(grid.pull_messages(pending))
        except httpx.HTTPError as error:
            if not transient(error):
                raise
            # Nothing lost: the replies stay on the SuperLink until a later pull gets them.
            log(WARNING, "fedkd: the SuperLink failed to hand over replies (%s); trying again", error)
            replies = []
        for reply in replies:
            pending.discard(reply.metadata.reply_to_message_id)
            result.replies.append(reply)
            if not reply.has_error():
                result.bytes_up += record_bytes(reply.content)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(FAST_POLL_SECONDS if time.monotonic() < fast_until else SLOW_POLL_SECONDS)
    # In the order sent, not of arrival, so what a round records is the same on every run.
    sent_order = {message_id: k for k, message_id in enumerate(pushed)}
    result.replies.sort(key=lambda reply: sent_order.get(reply.metadata.reply_to_message_id, len(sent_order)))
    result.missing = unsent + [node for message_id, node in destination.items() if message_id in pending]
    result.seconds = time.perf_counter() - start
    return result
