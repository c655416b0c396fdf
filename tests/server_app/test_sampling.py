"""Seeded node sampling over the names nodes report, against a Grid of nodes that answer at once or never: small
federations identified whole, large ones as they are sampled; and the federated accuracy's standard error."""

import math

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from common.config import MODEL_FAMILIES
from common.protocol import MODEL, NAME, NODE, QUERY_IDENTIFY
from common.task import INPUT_SHAPE, NUM_CLASSES, Task
from server_app.sampling import NodeSampler, accuracy_standard_error


class IdentifyGrid:
    """The Grid calls of the sampler; node id -> reported name, how many first `query.identify`s it ignores, and
    what it reports of its data ((shape, classes); none: a report the sampler cannot read)."""

    def __init__(
        self,
        names: dict[int, str],
        silent: dict[int, int] | None = None,
        data: dict[int, tuple[list[int], int]] | None = None,
    ) -> None:
        self.names, self.silent, self.data = names, silent or {}, data or {}
        self.asked: dict[int, int] = {n: 0 for n in names}
        self.replies: dict[str, Message] = {}
        # The nodes of each identify exchange, in the order pushed.
        self.exchanges: list[list[int]] = []

    def get_node_ids(self):
        return list(self.names)

    def push_messages(self, messages):
        ids = []
        self.exchanges.append([])
        for i, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            assert msg.metadata.message_type == QUERY_IDENTIFY
            self.asked[node] += 1
            self.exchanges[-1].append(node)
            msg.metadata.__dict__["_message_id"] = message_id = f"{node}-{self.asked[node]}-{i}"
            if self.asked[node] > self.silent.get(node, 0):
                info = ConfigRecord({NAME: self.names[node], MODEL: f"mlp-{node + 1}"})
                if node in self.data:
                    info[INPUT_SHAPE], info[NUM_CLASSES] = self.data[node]
                self.replies[message_id] = Message(RecordDict({NODE: info}), reply_to=msg)
            ids.append(message_id)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


def partitions(ids: list[int]) -> dict[int, str]:
    """Node id -> `partition-<i>`, the i-th id holding partition i, as a simulation names its nodes."""
    return {node: f"partition-{i}" for i, node in enumerate(ids)}


def test_a_node_that_does_not_identify_is_asked_once_more_then_keeps_its_id_as_name(task_identity):
    # Node 3 never answers; node 4 misses the first question (a slow start) and answers the second.
    grid = IdentifyGrid({1: "b", 2: "a", 3: "c", 4: "d"}, silent={3: 10, 4: 1})
    sampler = NodeSampler(seed=1, timeout=0.05)
    assert sampler.nodes(grid, 1) == [2, 1, 3, 4]  # a, b, node-3, node-4
    assert grid.asked == {1: 1, 2: 1, 3: 1, 4: 1}
    assert sampler.nodes(grid, 1) == [2, 1, 4, 3]  # a, b, d, node-3
    assert grid.asked == {1: 1, 2: 1, 3: 2, 4: 2}
    assert sampler.name(4) == "d" and sampler.model(4) == "mlp-5"
    for _ in range(3):
        assert sampler.nodes(grid, 1) == [2, 1, 4, 3]
    assert grid.asked == {1: 1, 2: 1, 3: 2, 4: 2}
    assert sampler.name(3) == "node-3" and sampler.model(3) == "mlp-32"


def test_the_same_seed_samples_the_same_names_whatever_the_node_ids(task_identity):
    names = [f"partition-{i}" for i in range(10)]

    def sampled(seed: int, ids: list[int]) -> list[list[str]]:
        # Listed by id, as a SuperLink may list them: other ids, another order of the names.
        grid = IdentifyGrid(dict(sorted(zip(ids, names))))
        sampler = NodeSampler(seed=seed, timeout=1)
        return [sorted(sampler.name(n) for n in sampler.sample(grid, 0.3, 2).nodes) for _ in range(5)]

    first = sampled(42, list(range(100, 110)))
    assert all(len(names_) == 3 for names_ in first)
    assert sampled(42, [9_001, 17, 512, 3, 77_777, 640, 21, 8, 1_234, 99]) == first
    assert sampled(43, list(range(100, 110))) != first


@pytest.mark.parametrize("fraction, minimum, size", [(0.3, 2, 3), (0.1, 2, 2), (0.1, 4, 4), (1.0, 2, 10)])
def test_the_sample_is_the_fraction_of_connected_nodes_but_at_least_the_minimum(task_identity, fraction, minimum, size):
    sample = NodeSampler(seed=1, timeout=1).sample(
        IdentifyGrid({n: f"partition-{n}" for n in range(10)}), fraction, minimum
    )
    assert len(set(sample.nodes)) == size and sample.population == 10


def drawn_names(sampler: NodeSampler, grid: IdentifyGrid, rounds: list[int], fraction: float, minimum: int) -> list:
    """Each phase's rounds (as the round loop draws them), then its final evaluation (fraction-evaluate 0.5,
    min-evaluate-nodes 1): the sorted names of every draw."""
    out = []
    for phase_rounds in rounds:
        for _ in range(phase_rounds):
            node_ids = sampler.connected(grid, minimum)
            out.append(sorted(sampler.name(n) for n in sampler.draw(grid, node_ids, fraction, minimum).nodes))
        out.append(sorted(sampler.name(n) for n in sampler.sample(grid, 0.5, 1).nodes))
    return out


# What fedkd sampled before lazy identification (commit de1d106), seed 42, ten partitions, fraction-train 0.3,
# min-train-nodes 2, 3 + 2 rounds, each phase ending with its final evaluation.
BEFORE_LAZY_IDENTIFICATION = [
    ["partition-0", "partition-3", "partition-7"],
    ["partition-0", "partition-2", "partition-7"],
    ["partition-2", "partition-7", "partition-9"],
    ["partition-1", "partition-3", "partition-5", "partition-7", "partition-9"],
    ["partition-4", "partition-5", "partition-7"],
    ["partition-0", "partition-3", "partition-4"],
    ["partition-0", "partition-1", "partition-2", "partition-3", "partition-4"],
]


@pytest.mark.parametrize("ids", [list(range(100, 110)), [9_001, 17, 512, 3, 77_777, 640, 21, 8, 1_234, 99]])
def test_a_small_federation_samples_the_names_it_sampled_before_lazy_identification(task_identity, ids):
    grid = IdentifyGrid(partitions(ids))
    sampler = NodeSampler(seed=42, timeout=1)
    assert drawn_names(sampler, grid, [3, 2], 0.3, 2) == BEFORE_LAZY_IDENTIFICATION
    # Identified whole, once, before the first draw.
    assert grid.exchanges == [sorted(ids)]


def test_a_large_federation_asks_only_the_nodes_it_draws(task_identity):
    ids = [7 * k + 3 for k in range(60)]
    grid = IdentifyGrid(partitions(ids))
    sampler = NodeSampler(seed=42, timeout=1, identify_all_max_nodes=59)
    first = sampler.sample(grid, 0.1, 2)
    assert len(first.nodes) == 6 and first.population == 60
    # One exchange with the six drawn nodes; nothing kept of the other 54.
    assert grid.exchanges == [first.nodes]
    assert set(sampler.names) == set(first.nodes) == set(sampler.asked)
    seen = set(first.nodes)
    for _ in range(4):
        sample = sampler.sample(grid, 0.1, 2)
        # A node drawn again is not asked again.
        assert grid.exchanges[-1] == [n for n in sample.nodes if n not in seen]
        seen |= set(sample.nodes)
    assert set(sampler.names) == seen and sum(grid.asked.values()) == len(seen) < 60
    assert sampler.known(ids) == sorted(seen, key=sampler.name)


def test_a_large_federation_samples_alike_from_the_same_ids_and_otherwise_differently(task_identity):
    def names(ids: list[int]) -> list:
        grid = IdentifyGrid(partitions(ids))
        return drawn_names(NodeSampler(seed=42, timeout=1, identify_all_max_nodes=10), grid, [3, 2], 0.1, 2)

    ids = list(range(500, 540))
    first = names(ids)
    assert [len(draw) for draw in first] == [4, 4, 4, 20, 4, 4, 20]
    # Seeded within a run: the same registration gives the same draws ...
    assert names(ids) == first
    # ... but other ids for the same names give others: names are learned only by asking.
    assert names(ids[::-1]) != first


def test_a_large_federation_replaces_a_drawn_node_whose_data_does_not_fit(task_identity):
    ids = list(range(1, 41))
    # Every third node's examples have another shape than the task's.
    data = {n: ([3] if n % 3 == 0 else [5], 2) for n in ids}
    grid = IdentifyGrid(partitions(ids), data=data)
    sampler = NodeSampler(seed=3, timeout=1, identify_all_max_nodes=10)
    sampler.fix_task(Task((5,), 2))
    refused: set[int] = set()
    for _ in range(8):
        # A quarter of the nodes not refused so far, all of them nodes that fit.
        size = int((40 - len(refused)) * 0.25)
        sample = sampler.sample(grid, 0.25, 2)
        refused |= {n for exchange in grid.exchanges for n in exchange if n % 3 == 0}
        assert len(sample.nodes) == size and all(n % 3 for n in sample.nodes)
        assert sample.population == 40 - len(refused)
    assert refused and set(sampler.refused) == refused
    assert all(grid.asked[n] == 1 for n in refused)


def test_a_large_federations_silent_node_is_asked_when_drawn_at_most_twice(task_identity):
    grid = IdentifyGrid(partitions([1, 2, 3, 4, 5, 6]), silent={4: 10})
    sampler = NodeSampler(seed=1, timeout=0.05, identify_all_max_nodes=5)
    for _ in range(3):
        # Every node drawn every time; node 4 is sampled under its id all the same.
        assert sorted(sampler.sample(grid, 1.0, 1).nodes) == [1, 2, 3, 4, 5, 6]
    # Asked with the others at the first draw, alone at the second, not at the third.
    assert [sorted(nodes) for nodes in grid.exchanges] == [[1, 2, 3, 4, 5, 6], [4]]
    assert grid.asked == {1: 1, 2: 1, 3: 1, 4: 2, 5: 1, 6: 1}
    assert sampler.name(4) == "node-4" and sampler.model(4) == "mlp-32"


def test_the_standard_error_of_the_federated_accuracy_by_hand():
    # Four nodes of eight scored: (correct, examples) = (8, 10), (5, 10), (9, 20), (2, 10).
    counts = [(8, 10), (5, 10), (9, 20), (2, 10)]
    # R = 24 / 50 = 0.48; residuals c - R n: 3.2, 0.2, -0.6, -2.8; their squares sum to 18.48, / (m - 1) = 6.16;
    # nbar = 50 / 4 = 12.5, m nbar^2 = 625; the finite-population factor 1 - 4 / 8 = 0.5.
    assert accuracy_standard_error(counts, 8) == pytest.approx(math.sqrt(0.5 * 6.16 / 625))
    assert accuracy_standard_error(counts, 8) == pytest.approx(0.0702, abs=5e-5)
    # Drawn from a federation ten times larger, the factor is 1 - 4 / 80 = 0.95.
    assert accuracy_standard_error(counts, 80) == pytest.approx(math.sqrt(0.95 * 6.16 / 625))
    # Every node scored: the federated accuracy is that of the whole federation, with no sampling error.
    assert accuracy_standard_error(counts, 4) == 0.0
    # Nodes that all score the same share have no spread between them.
    assert accuracy_standard_error([(5, 10), (10, 20), (1, 2)], 100) == 0.0
    # One node, or no examples: no standard error.
    assert accuracy_standard_error([(8, 10)], 8) is None
    assert accuracy_standard_error([(0, 0), (0, 0)], 8) is None


def test_unusable_identify_replies_refuse_their_node_by_reason_and_the_rest_are_sampled(task_identity):
    from common.data import builtin_task

    names = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e", 5: "f"}
    grid = IdentifyGrid(names, data={0: ([32], 10), 5: ([32], 10)})
    real_push = grid.push_messages

    def push(messages):
        ids = real_push(messages)
        contents = {
            1: RecordDict({"not-node": ConfigRecord({NAME: "x"})}),
            2: RecordDict({NODE: ConfigRecord({NAME: "a", MODEL: "mlp-3"})}),
            3: RecordDict({NODE: ConfigRecord({NAME: "d", MODEL: "transformer"})}),
            4: RecordDict({NODE: ConfigRecord({NAME: "e", MODEL: "cnn", INPUT_SHAPE: [32], NUM_CLASSES: 10})}),
        }
        for msg, message_id in zip(messages, ids):
            node = msg.metadata.dst_node_id
            if node in contents:
                grid.replies[message_id] = Message(contents[node], reply_to=msg)
        return ids

    grid.push_messages = push
    sampler = NodeSampler(seed=1, timeout=1)
    sampler.nodes(grid, 1)
    sampler.fix_task(builtin_task("synthetic"))
    assert sampler.refused == {
        1: "its identify reply names it None; allowed: 1 to 200 characters",
        2: "its name 'a' is another node's",
        3: "its identify reply gives unknown model 'transformer'; allowed: " + MODEL_FAMILIES,
        4: "its architecture 'cnn' cannot be built for the task: model 'cnn' needs image inputs; the task has inputs "
        "of shape (32,), use an mlp-...",
    }
    assert sorted(sampler.sample(grid, 1.0, 1).nodes) == [0, 5]
