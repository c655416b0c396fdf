import numpy as np
import pytest
import torch

from common.config import parse_run_config
from common.data import _digits_pool, _partition_indices, dataset_shape, load_client_data, load_server_testset


def digits(partitioner, seed=42, **extra):
    return parse_run_config({"dataset": "digits", "partitioner": partitioner, "seed": seed, **extra})


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "pathological"])
def test_digits_partitions_are_disjoint_and_cover_only_the_pool(partitioner):
    cfg = digits(partitioner)
    parts = _partition_indices(partitioner, 10, cfg.dirichlet_alpha, cfg.classes_per_partition, cfg.seed)
    everything = np.concatenate(parts)
    assert len(everything) == len(set(everything.tolist()))
    pool_size = len(_digits_pool(cfg.seed)[1])
    assert everything.min() >= 0 and everything.max() < pool_size
    if partitioner == "iid":
        assert len(everything) == pool_size and {len(p) for p in parts} <= {143, 144}


def test_client_train_and_test_splits_partition_the_clients_share():
    cfg = digits("dirichlet")
    data = load_client_data(cfg, 3, 10)
    idx = _partition_indices("dirichlet", 10, cfg.dirichlet_alpha, cfg.classes_per_partition, cfg.seed)[3]
    pool_x = _digits_pool(cfg.seed)[0]
    split_rows = sorted(map(tuple, data.train.x.tolist() + data.test.x.tolist()))
    assert split_rows == sorted(map(tuple, pool_x[idx].tolist()))
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
    assert len(test) == 360 and len(test) + len(_digits_pool(cfg.seed)[1]) == 1797
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
    assert dataset_shape("digits") == (64, 10) and dataset_shape("synthetic") == (32, 10)
