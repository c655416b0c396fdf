"""Seeded node sampling over stable node names, with nodes identified only as far as sampling needs.

Flower gives each node a random id when it registers, so a seed can only pick the same clients in every run if the
draw is made over names the nodes report (`query.identify`: a name, an architecture, what the data holds). Asking
that costs a message per node, which in a simulation of thousands of nodes dominates the run. So:

- A federation of at most `identify-all-max-nodes` nodes (default 1,000) is identified whole the first time the
  sampler lists it, and every draw is `rng.sample` over the connected nodes sorted by name: the same seed samples
  the same names in every run, whatever ids the nodes got (fedkd's behaviour before lazy identification).
- A larger federation is identified lazily: a draw is `rng.sample` over the connected node ids in numeric order,
  and only the drawn nodes not yet identified are asked, in one exchange. A drawn node whose data does not fit
  the run's task is refused then, never sampled again, and replaced by a further draw. Within a run the draws are
  seeded; across runs they are not reproducible in names, and cannot be: a node's name is learned only by asking
  it, and before anything is asked the only handle on a node is its random id, so the names of any first batch
  are a random choice of the registration. Only asking every node (the small-federation rule, raised with
  `identify-all-max-nodes`) gets the same names for one seed. See docs/architecture.md#determinism.

A node that does not answer its identification keeps its id as name and the default architecture; it is asked once
more the next time it is listed (small federation) or drawn (large), at most IDENTIFY_TRIES times in all.
"""

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from logging import WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.config import check_model_name
from common.models import build_model
from common.protocol import CONFIG, DATA_ERROR, MODEL, NAME, NODE, QUERY_IDENTIFY
from common.seeds import Stream, derive_seed
from common.task import INPUT_SHAPE, NUM_CLASSES, Task, describe
from server_app.transport import exchange, retrying

WAIT_POLL_SECONDS = 1.0
IDENTIFY_TRIES = 2
MAX_NAME = 200  # characters of a node's name: it lands in logs, history.json and file names
# The run config's default of `identify-all-max-nodes`, for a sampler built without one (tests).
IDENTIFY_ALL_MAX_NODES = 1000


@dataclass(frozen=True)
class Sample:
    """Nodes drawn for one exchange, and how many eligible nodes they were drawn from (the connected nodes not
    refused), which a sampled estimate's finite-population correction needs."""

    nodes: list[int]
    population: int


class NodeSampler:
    """Samples nodes with its own generator; names nodes by what they report, not by their random ids."""

    def __init__(
        self,
        seed: int,
        timeout: float,
        default_model: str = "mlp-32",
        identify_all_max_nodes: int = IDENTIFY_ALL_MAX_NODES,
    ) -> None:
        self.rng = random.Random(derive_seed(seed, Stream.SAMPLING))
        self.default_model = default_model
        self.timeout = timeout
        self.identify_all_max_nodes = identify_all_max_nodes
        # Only nodes that were asked have entries: in a large federation, those drawn so far.
        self.names: dict[int, str] = {}
        # Name -> node, so that a reply's name is checked against the others' in constant time, not a pass over
        # every node identified (quadratic when a federation of thousands is identified whole).
        self.owners: dict[str, int] = {}
        self.models: dict[int, str] = {}
        self.asked: dict[int, int] = {}
        # What each node said its data holds: (one example's shape, its largest label + 1), or why it is unreadable.
        self.data: dict[int, tuple[tuple[int, ...], int] | str] = {}
        self.task: Task | None = None
        self.refused: dict[int, str] = {}  # node -> why it is never sampled
        # Why a node's identify reply cannot be trusted to sample it by (its name or architecture).
        self.problems: dict[int, str] = {}
        self.buildable: dict[str, str | None] = {}  # architecture -> why it cannot be built for the task, or None

    def identify(self, grid: Grid, node_ids: Sequence[int]) -> None:
        """Ask those of `node_ids` that have not answered yet, and were asked fewer than IDENTIFY_TRIES times, for
        their stable name, architecture and data report (`query.identify`), in one exchange."""
        new = [n for n in node_ids if n not in self.names and self.asked.get(n, 0) < IDENTIFY_TRIES]
        if not new:
            return
        for n in new:
            self.asked[n] = self.asked.get(n, 0) + 1
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=n, message_type=QUERY_IDENTIFY) for n in new
        ]
        for reply in exchange(grid, messages, self.timeout).ok():
            node = reply.metadata.src_node_id
            record = reply.content.config_records.get(NODE, ConfigRecord())
            name, model = record.get(NAME), record.get(MODEL)
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                self.problems[node] = f"its identify reply names it {name!r}; allowed: 1 to {MAX_NAME} characters"
            elif self.owners.get(name, node) != node:
                self.problems[node] = f"its name {name!r} is another node's"
            else:
                self.names[node] = name
                self.owners[name] = node
            if (reason := _model_problem(model)) is not None:
                self.problems.setdefault(node, reason)
            else:
                self.models[node] = model
            self.data[node] = _data_report(record)
            self._check(node)

    def fix_task(self, task: Task) -> None:
        """The run's task, once known: every node whose data does not fit it is refused from now on."""
        self.task = task
        for node in sorted(self.data, key=self.name):
            self._check(node)

    def _check(self, node: int) -> None:
        """Refuse `node` (never sampled, logged with the reason) if its identify reply is unusable, or, once the
        task is known, its data cannot be read or does not fit, or its architecture cannot be built for the task."""
        report, task = self.data.get(node), self.task
        if node in self.problems:
            reason = self.problems[node]
        elif report is None or task is None:
            return
        elif (problem := self._unbuildable(self.model(node))) is not None:
            reason = problem
        elif isinstance(report, str):
            reason = f"its data cannot be used: {report}"
        elif not task.accepts(report[0]):
            shapes = describe(report[0]), describe(task.input_shape)
            reason = "its data holds examples of shape {}; the run's task has {}".format(*shapes)
        elif report[1] > task.num_classes:
            reason = f"its data holds labels up to {report[1] - 1}; the run's task has {task.num_classes} classes"
        else:
            return
        if node not in self.refused:
            log(WARNING, "fedkd: node %s refused: %s", self.name(node), reason)
        self.refused[node] = reason

    def _unbuildable(self, model: str) -> str | None:
        """Why architecture `model` cannot be built for the task (a model of another kind of input), or None."""
        if model not in self.buildable:
            try:
                build_model(model, self.task)
                self.buildable[model] = None
            except ValueError as exc:
                self.buildable[model] = f"its architecture {model!r} cannot be built for the task: {exc}"
        return self.buildable[model]

    def identifies_all(self, connected: int) -> bool:
        """Whether a federation of `connected` nodes is identified whole (small) rather than as it is sampled."""
        return connected <= self.identify_all_max_nodes

    def connected(self, grid: Grid, minimum: int, wait: float | None = None) -> list[int]:
        """Ids of the connected nodes in numeric order, waiting up to `wait` (default: the timeout) for `minimum`.
        A small federation's nodes not asked yet are identified now."""
        wait = self.timeout if wait is None else wait
        deadline = time.monotonic() + wait
        while len(node_ids := retrying(lambda: list(grid.get_node_ids()), wait, "list the nodes")) < minimum:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"only {len(node_ids)} nodes connected within {wait:.0f} s; "
                    f"the run needs at least {minimum} (min-train-nodes)"
                )
            time.sleep(WAIT_POLL_SECONDS)
        node_ids.sort()
        if self.identifies_all(len(node_ids)):
            self.identify(grid, node_ids)
        return node_ids

    def known(self, node_ids: Sequence[int]) -> list[int]:
        """Those of `node_ids` that were asked to identify and are not refused, sorted by name: every connected
        node in a small federation, the nodes drawn so far in a large one."""
        return sorted((n for n in node_ids if self._asked(n) and n not in self.refused), key=self.name)

    def _asked(self, node: int) -> bool:
        """Whether `node` was asked to identify (or is named already)."""
        return node in self.asked or node in self.names

    def nodes(self, grid: Grid, minimum: int, wait: float | None = None) -> list[int]:
        """The connected nodes the sampler knows (see `known`), waiting up to `wait` for `minimum` to connect."""
        return self.known(self.connected(grid, minimum, wait))

    def sample(self, grid: Grid, fraction: float, minimum: int) -> Sample:
        """max(fraction x eligible, minimum) of the connected nodes, at most all of them, drawn by this sampler's
        generator; `minimum` is the least sample, not a number of nodes to wait for (the final evaluation's)."""
        return self.draw(grid, self.connected(grid, 1), fraction, minimum)

    def draw(self, grid: Grid, node_ids: list[int], fraction: float, minimum: int) -> Sample:
        """max(fraction x eligible, minimum) of `node_ids` (the connected ones, in numeric order), at most all of
        them: over their names in a small federation, over their ids, identified as drawn, in a large one."""
        if self.identifies_all(len(node_ids)):
            eligible = self.known(node_ids)
            return Sample(self.rng.sample(eligible, _size(len(eligible), fraction, minimum)), len(eligible))
        eligible = [n for n in node_ids if n not in self.refused]
        size, chosen = _size(len(eligible), fraction, minimum), []
        remaining = eligible
        # A drawn node refused for its data is replaced by drawing again among those not drawn yet.
        while len(chosen) < size and remaining:
            drawn = self.rng.sample(remaining, min(size - len(chosen), len(remaining)))
            self.identify(grid, drawn)
            chosen += [n for n in drawn if n not in self.refused]
            taken = set(drawn)
            remaining = [n for n in remaining if n not in taken]
        return Sample(chosen, len([n for n in eligible if n not in self.refused]))

    def identify_batch(self, grid: Grid, fraction: float, readable: int) -> None:
        """Before round 1, with no test set on the server to define the task: identify nodes until at least
        `readable` of them reported data that can be read, as many new ones per exchange as a round samples
        (max(fraction x connected, readable)), drawn by this sampler's generator. A small federation is identified
        whole already, and draws nothing here."""
        node_ids = self.connected(grid, readable)
        size = _size(len(node_ids), fraction, readable)
        while sum(not isinstance(r, str) for r in self.data.values()) < readable:
            unasked = [n for n in node_ids if not self._asked(n)]
            if not unasked:
                return
            self.identify(grid, self.rng.sample(unasked, min(size, len(unasked))))

    def model(self, node_id: int) -> str:
        """The architecture a node reported; `default_model` if it has not answered."""
        return self.models.get(node_id, self.default_model)

    def name(self, node_id: int) -> str:
        """The stable name of a node."""
        return self.names.get(node_id, f"node-{node_id}")


def _size(eligible: int, fraction: float, minimum: int) -> int:
    """How many of `eligible` nodes a draw takes: max(fraction x eligible, minimum), at most all of them."""
    return min(eligible, max(int(eligible * fraction), minimum))


def accuracy_standard_error(counts: Sequence[tuple[float, float]], population: int) -> float | None:
    """The standard error of the federated accuracy R = sum(correct) / sum(examples) over `counts`, one (correct,
    examples) per node of a simple random sample of `population` nodes, each node a cluster of examples: the ratio
    estimator's (Cochran, Sampling Techniques, 3rd ed., chapter 6),

        SE(R) = sqrt( (1 - m / N) / (m * nbar^2) * sum_i (c_i - R n_i)^2 / (m - 1) ),  nbar = sum(n_i) / m,

    with m nodes scored of N eligible. It measures how far R may be from the accuracy of every eligible node's test
    split together: 0 when every node was scored, None with fewer than two nodes or no examples."""
    m = len(counts)
    examples = sum(n for _, n in counts)
    if m < 2 or examples == 0:
        return None
    ratio = sum(c for c, _ in counts) / examples
    spread = sum((c - ratio * n) ** 2 for c, n in counts) / (m - 1)
    unsampled = max(0.0, 1 - m / population)
    return math.sqrt(unsampled * spread / (m * (examples / m) ** 2))


def _model_problem(model: object) -> str | None:
    """Why an identify reply's architecture is not one a run allows, or None."""
    if not isinstance(model, str):
        return f"its identify reply gives architecture {model!r}; allowed: a model name"
    try:
        check_model_name(model)
    except ValueError as exc:
        return f"its identify reply gives {exc}"
    return None


def _data_report(record) -> tuple[tuple[int, ...], int] | str:
    """A node's identify reply's report of its data, checked: (shape, classes), or why it is not usable."""
    if DATA_ERROR in record:
        return str(record[DATA_ERROR])
    shape, classes = record.get(INPUT_SHAPE), record.get(NUM_CLASSES)
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        or not isinstance(classes, int)
        or isinstance(classes, bool)
        or classes < 0
    ):
        return f"its identify reply reports no data shape ({INPUT_SHAPE} = {shape!r}, {NUM_CLASSES} = {classes!r})"
    return tuple(shape), classes
