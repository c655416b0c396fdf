"""fedkd's strategy contract and its registry.

A strategy says what to send and how to combine what came back; the round loop (server_app/loop.py) is the only
code that talks to the Grid. A round is a generator: it yields an `Ask` (messages, and how to screen each reply),
receives the accepted `Reply`s, and returns a `RoundResult`, so a strategy's maths runs on plain records in a test.
docs/architecture.md's contract table lists every member the loop and the ServerApp use; a test keeps it equal to
this class.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from typing import ClassVar

from flwr.app import ArrayRecord

from common.config import RunConfig, Settings
from common.data import Split
from common.models import build_model, initial_model, load_record, to_record
from common.task import Task
from common.training import evaluate
from server_app.round import Ask, Globals, Nodes, Phase, Reply, RoundInput, RoundResult, Scores

# A round: yields exchanges to make, receives their accepted replies, returns what the round ends with.
RoundSteps = Generator[Ask, list[Reply], RoundResult]


class NoSettings(Settings):
    """A strategy with no settings of its own."""


class Strategy(ABC):
    """A federated method, as the round loop and the ServerApp see it.

    Not a Flower `Strategy`, whose `start` runs one phase of one model: a fedkd method runs phases over groups of
    architectures (weights are averaged only within a group of one architecture, a node's architecture being
    what it reported), with screening, deadlines and checkpoints that the loop provides.
    """

    # Its run-config `strategy` name, set by `@register`.
    name: ClassVar[str]
    # Its own run-config keys, in the run config's table of its name (`fedprox.proximal-mu`).
    Settings: ClassVar[type[Settings]] = NoSettings
    # The run's task, which its models are built for; the loop sends it with every message.
    task: Task

    def __init__(self, cfg: RunConfig, settings: Settings, nodes: Nodes, task: Task) -> None:
        self.cfg = cfg
        self.task = task
        self.settings = settings
        self.nodes = nodes

    @classmethod
    def check_config(cls, cfg: RunConfig, settings: Settings) -> None:
        """Raise ConfigError for settings the method cannot run under; the ServerApp asks before round 1."""

    def phases(self) -> tuple[Phase, ...]:
        """Its phases in order; the last trains the delivered models. One phase of `num-student-rounds` here."""
        return (Phase("student", self.cfg.num_student_rounds),)

    def architecture(self, node: int, phase: Phase) -> str:
        """The model `node` trains and is scored with in `phase`: the architecture it chose, here."""
        return self.nodes.model(node)

    def initial(self, phase: Phase, connected: list[int], previous: Globals | None) -> Globals:
        """The models `phase` starts from (`previous`: the phase before's final ones): seeded weights for every
        architecture among the `connected` nodes, here."""
        return {name: self.initial_weights(name) for name in sorted({self.architecture(n, phase) for n in connected})}

    def initial_weights(self, name: str) -> ArrayRecord:
        """Seeded initial weights of architecture `name`: the same on every run of one seed."""
        return to_record(initial_model(name, self.task, self.cfg.seed))

    @abstractmethod
    def round(self, r: RoundInput) -> RoundSteps:
        """One round: yield each `Ask`, receive its accepted replies, return the `RoundResult`."""

    def state(self) -> dict[str, ArrayRecord]:
        """What it keeps between rounds besides the global models, for the checkpoint."""
        return {}

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Take back `state()` from a checkpoint."""

    def score(self, globals_: Globals, test: Split) -> Scores:
        """Each architecture's (loss, accuracy) on the server's test set: its global model's, here."""
        scores = {}
        for name, arrays in globals_.items():
            loss, correct = evaluate(load_record(build_model(name, self.task), arrays), test.x, test.y)
            scores[name] = (loss, correct / len(test))
        return scores

    def teacher_model(self) -> str | None:
        """The architecture summary.json compares the student's size to; None for a method without a teacher."""
        return None

    def private_epochs(self) -> int:
        """The most epochs over its private data a node may train in the run if sampled every round: with DP, the
        loop sends it with every message and each node spends its budget over them. `local-epochs` a round, here."""
        return sum(phase.rounds for phase in self.phases()) * self.cfg.local_epochs


# Run-config `strategy` name -> class; filled by `@register` as server_app.strategies imports every module.
STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy available as run config `strategy = name`."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy name {name!r} is taken by {STRATEGIES[name].__qualname__}")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return add
