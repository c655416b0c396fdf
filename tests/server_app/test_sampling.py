"""Seeded node sampling over the names nodes report, against a Grid of nodes that answer at once or never."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from common.protocol import MODEL, NAME, NODE, QUERY_IDENTIFY
from server_app.sampling import NodeSampler


class IdentifyGrid:
    """The Grid calls of the sampler; node id -> reported name, and how many first `query.identify`s it ignores."""

    def __init__(self, names: dict[int, str], silent: dict[int, int] | None = None) -> None:
        self.names, self.silent = names, silent or {}
        self.asked: dict[int, int] = {n: 0 for n in names}
        self.replies: dict[str, Message] = {}

    def get_node_ids(self):
        return list(self.names)

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            assert msg.metadata.message_type == QUERY_IDENTIFY
            self.asked[node] += 1
            msg.metadata.__dict__["_message_id"] = message_id = f"{node}-{self.asked[node]}-{i}"
            if self.asked[node] > self.silent.get(node, 0):
                info = ConfigRecord({NAME: self.names[node], MODEL: f"mlp-{node}"})
                self.replies[message_id] = Message(RecordDict({NODE: info}), reply_to=msg)
            ids.append(message_id)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]


def test_a_node_that_does_not_identify_is_asked_once_more_then_keeps_its_id_as_name(task_identity):
    # Node 3 never answers; node 4 misses the first question (a slow start) and answers the second.
    grid = IdentifyGrid({1: "b", 2: "a", 3: "c", 4: "d"}, silent={3: 10, 4: 1})
    sampler = NodeSampler(seed=1, timeout=0.05)
    assert sampler.nodes(grid, 1) == [2, 1, 3, 4]  # a, b, node-3, node-4
    assert grid.asked == {1: 1, 2: 1, 3: 1, 4: 1}
    assert sampler.nodes(grid, 1) == [2, 1, 4, 3]  # a, b, d, node-3
    assert grid.asked == {1: 1, 2: 1, 3: 2, 4: 2}
    assert sampler.name(4) == "d" and sampler.model(4) == "mlp-4"
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
        return [sorted(sampler.name(n) for n in sampler.sample(grid, 0.3, 2)) for _ in range(5)]

    first = sampled(42, list(range(100, 110)))
    assert all(len(names_) == 3 for names_ in first)
    assert sampled(42, [9_001, 17, 512, 3, 77_777, 640, 21, 8, 1_234, 99]) == first
    assert sampled(43, list(range(100, 110))) != first


@pytest.mark.parametrize("fraction, minimum, size", [(0.3, 2, 3), (0.1, 2, 2), (0.1, 4, 4), (1.0, 2, 10)])
def test_the_sample_is_the_fraction_of_connected_nodes_but_at_least_the_minimum(task_identity, fraction, minimum, size):
    sample = NodeSampler(seed=1, timeout=1).sample(
        IdentifyGrid({n: f"partition-{n}" for n in range(10)}), fraction, minimum
    )
    assert len(set(sample)) == size
