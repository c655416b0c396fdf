"""Seeded node sampling over stable node names, so runs with one seed pick the same clients."""

import random
import time
from logging import WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.protocol import CONFIG, DATA_ERROR, MODEL, NAME, NODE, QUERY_IDENTIFY
from common.seeds import Stream, derive_seed
from common.task import INPUT_SHAPE, NUM_CLASSES, Task, describe
from server_app.transport import exchange, retrying

WAIT_POLL_SECONDS = 1.0
IDENTIFY_TRIES = 2


class NodeSampler:
    """Samples nodes with its own generator; names nodes by what they report, not by their random ids."""

    def __init__(self, seed: int, timeout: float, default_model: str = "mlp-32") -> None:
        self.rng = random.Random(derive_seed(seed, Stream.SAMPLING))
        self.default_model = default_model
        self.timeout = timeout
        self.names: dict[int, str] = {}
        self.models: dict[int, str] = {}
        self.asked: dict[int, int] = {}
        # What each node said its data holds: (one example's shape, its largest label + 1), or why it is unreadable.
        self.data: dict[int, tuple[tuple[int, ...], int] | str] = {}
        self.task: Task | None = None
        self.refused: dict[int, str] = {}  # node -> why it is never sampled

    def _identify(self, grid: Grid, node_ids: list[int]) -> None:
        """Ask nodes for their stable name and architecture (`query.identify`).

        A node that did not answer (a slow first start) is asked once more at the next call;
        after that it keeps its id as name, so a dead node costs at most two waits.
        """
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=n, message_type=QUERY_IDENTIFY) for n in node_ids
        ]
        for reply in exchange(grid, messages, self.timeout).ok():
            node, record = reply.metadata.src_node_id, reply.content[NODE]
            self.names[node] = str(record[NAME])
            self.models[node] = str(record[MODEL])
            self.data[node] = _data_report(record)
            if self.task is not None:
                self._check(node)

    def fix_task(self, task: Task) -> None:
        """The run's task, once known: every node whose data does not fit it is refused from now on."""
        self.task = task
        for node in sorted(self.data, key=self.name):
            self._check(node)

    def _check(self, node: int) -> None:
        """Refuse `node` (never sampled, logged with the reason) if its data cannot be read or does not fit."""
        report, task = self.data.get(node), self.task
        if report is None or task is None:
            return
        if isinstance(report, str):
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

    def nodes(self, grid: Grid, minimum: int, wait: float | None = None) -> list[int]:
        """Connected nodes sorted by name, waiting up to `wait` (default: the timeout) for `minimum`."""
        wait = self.timeout if wait is None else wait
        deadline = time.monotonic() + wait
        while len(node_ids := retrying(lambda: list(grid.get_node_ids()), wait, "list the nodes")) < minimum:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"only {len(node_ids)} nodes connected within {wait:.0f} s; "
                    f"the run needs at least {minimum} (min-train-nodes)"
                )
            time.sleep(WAIT_POLL_SECONDS)
        if new := [n for n in node_ids if n not in self.names and self.asked.get(n, 0) < IDENTIFY_TRIES]:
            for n in new:
                self.asked[n] = self.asked.get(n, 0) + 1
            self._identify(grid, new)
        return sorted((n for n in node_ids if n not in self.refused), key=self.name)

    def sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        """max(fraction x connected, minimum) nodes, drawn by this sampler's generator."""
        return self.sample_from(self.nodes(grid, minimum), fraction, minimum)

    def sample_from(self, nodes: list[int], fraction: float, minimum: int) -> list[int]:
        """max(fraction x len(nodes), minimum) of `nodes` (sorted by name), drawn by this sampler's generator."""
        size = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        return self.rng.sample(nodes, size)

    def model(self, node_id: int) -> str:
        """The architecture a node reported; `default_model` if it has not answered."""
        return self.models.get(node_id, self.default_model)

    def name(self, node_id: int) -> str:
        """The stable name of a node."""
        return self.names.get(node_id, f"node-{node_id}")


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
