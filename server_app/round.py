"""What a strategy and the round loop hand each other: phases, a round's input, the exchanges a round asks
for, the replies it gets back, and what the round ends with. Plain data: no I/O here."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import ArrayRecord, Message, RecordDict

from common.data import Split

# Architecture name -> that group's global weights.
Globals = dict[str, ArrayRecord]
# Architecture name -> (loss, accuracy) on the server's test set.
Scores = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Phase:
    """One phase of a method: `name` is what history.json records as `phase`. The last phase of every method
    trains the models it delivers (summary.json's `student_*`); a phase with `teacher` set trains the teacher
    that summary.json reports and compares the student's size to."""

    name: str
    rounds: int
    teacher: bool = False


class Nodes(Protocol):
    """What a strategy may know of the federation's nodes: their stable names and the architectures they chose."""

    def name(self, node: int) -> str: ...

    def model(self, node: int) -> str: ...


@dataclass(frozen=True)
class RoundInput:
    """What the loop gives a round: the phase and round number, the global models it starts from, the nodes
    sampled for it and the connected nodes identified so far (all of a small federation, those sampled so far of a
    large one: server_app/sampling.py), by name, and the server's test set when there is one."""

    phase: Phase
    server_round: int
    globals: Globals
    sampled: list[int]
    connected: list[int]
    test: Split | None


# A reply's content -> None if it is fit to use, else why not (one line).
Check = Callable[[RecordDict], str | None]


@dataclass
class Ask:
    """One exchange a round asks the loop for: `messages`, each reply screened by `checks[i]` (one per message)
    before the round sees it. `label` starts the reason of a rejected reply ("reply rejected: ..."). When
    `answers_round` is set, the exchange is with the round's sampled nodes and its accepted replies are the
    round's replies, which `min-replies` counts (the last such exchange of a round); a check by other nodes
    (feddf-datafree's judges) sets it False."""

    messages: list[Message]
    checks: list[Check]
    label: str = "reply"
    answers_round: bool = True


@dataclass(frozen=True)
class Reply:
    """An accepted reply: the node it came from, the position in its Ask of the message it answers, its content."""

    node: int
    index: int
    content: RecordDict


@dataclass
class RoundResult:
    """What a round ends with: the global models, its metrics (kebab-case names; docs/outputs.md lists them),
    and scores on the server's test set when the strategy computed them itself (FedMD scores its nodes'
    logits); otherwise the loop scores `globals` with the strategy's `score`. `scores_previous` says that
    the replies' federated metrics score the previous round's models (evaluation fused into training)."""

    globals: Globals
    metrics: dict[str, Any] = field(default_factory=dict)
    scores: Scores | None = None
    scores_previous: bool = True


@dataclass(frozen=True)
class Failure:
    """A node that answered a round with an error, late or not at all, or whose reply was rejected, and why."""

    node: int
    reason: str
