"""Seeded node sampling over stable node names, so runs with one seed pick the same clients."""

import random
import time

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.protocol import CONFIG, MODEL, NAME, NODE, QUERY_IDENTIFY
from common.seeds import Stream, derive_seed
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

    def _identify(self, grid: Grid, node_ids: list[int]) -> None:
        """Ask nodes for their stable name and architecture (`query.identify`).

        A node that did not answer (a slow first start) is asked once more at the next call;
        after that it keeps its id as name, so a dead node costs at most two waits.
        """
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord()}), dst_node_id=n, message_type=QUERY_IDENTIFY) for n in node_ids
        ]
        for reply in exchange(grid, messages, self.timeout).ok():
            self.names[reply.metadata.src_node_id] = str(reply.content[NODE][NAME])
            self.models[reply.metadata.src_node_id] = str(reply.content[NODE][MODEL])

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
        return sorted(node_ids, key=self.name)

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
