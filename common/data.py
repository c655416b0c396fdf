"""Built-in datasets, their partitions among clients, and the server's test set."""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from common.config import RunConfig

SYNTHETIC_FEATURES = 32
SYNTHETIC_CLASSES = 10
SYNTHETIC_SERVER_TEST_SIZE = 1000
DIGITS_SERVER_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Features and integer labels as tensors."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ClientData:
    """One client's local training data and its local test split."""

    train: Split
    test: Split


def dataset_shape(name: str) -> tuple[int, int]:
    """(number of features, number of classes) of a built-in dataset."""
    if name == "synthetic":
        return SYNTHETIC_FEATURES, SYNTHETIC_CLASSES
    if name == "digits":
        return 64, 10
    raise ValueError(f"unknown dataset {name!r}; allowed: 'digits', 'synthetic'")


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long))


# --- synthetic: the seed script's task, one generator per partition -------------------


def _synthetic(rng: np.random.Generator, n: int, class_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features with +2 on the feature that the label indexes (the seed's task)."""
    y = rng.choice(SYNTHETIC_CLASSES, size=n, p=class_probs)
    x = rng.standard_normal((n, SYNTHETIC_FEATURES), dtype=np.float32)
    x[np.arange(n), y % SYNTHETIC_FEATURES] += 2.0
    return x, y


def _synthetic_label_probs(cfg: RunConfig, rng: np.random.Generator) -> np.ndarray:
    """Label distribution of one synthetic client, drawn by the partitioner's rule."""
    if cfg.partitioner == "iid":
        return np.full(SYNTHETIC_CLASSES, 1.0 / SYNTHETIC_CLASSES)
    if cfg.partitioner == "dirichlet":
        return rng.dirichlet(np.full(SYNTHETIC_CLASSES, cfg.dirichlet_alpha))
    probs = np.zeros(SYNTHETIC_CLASSES)
    k = min(cfg.classes_per_partition, SYNTHETIC_CLASSES)
    probs[rng.choice(SYNTHETIC_CLASSES, size=k, replace=False)] = 1.0 / k
    return probs


def _synthetic_client(cfg: RunConfig, partition_id: int) -> ClientData:
    rng = np.random.default_rng([cfg.seed, 1, partition_id])
    probs = _synthetic_label_probs(cfg, rng)
    n_test = max(1, round(cfg.samples_per_client * cfg.local_test_fraction))
    train = _synthetic(rng, cfg.samples_per_client, probs)
    test = _synthetic(rng, n_test, probs)
    return ClientData(_split(*train), _split(*test))


# --- digits: scikit-learn's bundled 8x8 digits, partitioned by flwr-datasets -----------


@lru_cache(maxsize=4)
def _digits_pool(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_pool, y_pool, x_server_test, y_server_test): a stratified, seeded hold-out."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_pool, x_test, y_pool, y_test = train_test_split(
        x, digits.target, test_size=DIGITS_SERVER_TEST_FRACTION, stratify=digits.target, random_state=seed
    )
    return x_pool, y_pool, x_test, y_test


@lru_cache(maxsize=4)
def _partition_indices(
    partitioner: str, num_partitions: int, alpha: float, classes: int, seed: int
) -> tuple[np.ndarray, ...]:
    """Indices into the digits pool of every partition, from flwr-datasets' partitioners."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    _, y_pool, _, _ = _digits_pool(seed)
    if partitioner == "iid":
        # IidPartitioner shards contiguously; the pool is already shuffled by `seed`.
        part = IidPartitioner(num_partitions=num_partitions)
    elif partitioner == "dirichlet":
        part = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed
        )
    else:
        part = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=classes,
            # Uses every class whenever partitions x classes-per-partition allow it.
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    part.dataset = Dataset.from_dict({"label": y_pool.tolist(), "index": list(range(len(y_pool)))})
    return tuple(np.asarray(part.load_partition(i)["index"], dtype=np.int64) for i in range(num_partitions))


def _digits_client(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    x_pool, y_pool, _, _ = _digits_pool(cfg.seed)
    idx = _partition_indices(
        cfg.partitioner, num_partitions, cfg.dirichlet_alpha, cfg.classes_per_partition, cfg.seed
    )[partition_id]
    order = np.random.default_rng([cfg.seed, 2, partition_id]).permutation(idx)
    n_test = int(round(len(order) * cfg.local_test_fraction)) if len(order) > 1 else 0
    test, train = order[:n_test], order[n_test:]
    return ClientData(_split(x_pool[train], y_pool[train]), _split(x_pool[test], y_pool[test]))


def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The local train and test data of partition `partition_id` of `num_partitions`."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config 'partition-id' = {partition_id} is out of range; "
            f"allowed: 0 to {num_partitions - 1} (num-partitions = {num_partitions})"
        )
    if cfg.dataset == "synthetic":
        return _synthetic_client(cfg, partition_id)
    return _digits_client(cfg, partition_id, num_partitions)


def load_server_testset(cfg: RunConfig) -> Split:
    """The held-out test set the server evaluates global models on."""
    if cfg.dataset == "synthetic":
        rng = np.random.default_rng([cfg.seed, 0])
        uniform = np.full(SYNTHETIC_CLASSES, 1.0 / SYNTHETIC_CLASSES)
        return _split(*_synthetic(rng, SYNTHETIC_SERVER_TEST_SIZE, uniform))
    _, _, x_test, y_test = _digits_pool(cfg.seed)
    return _split(x_test, y_test)
