"""Datasets from anywhere `datasets.load_dataset` reads, and how their rows become tensors.

A source is a Hugging Face hub id (`uoft-cs/cifar10`) or a local path: a parquet, CSV, JSON or arrow file, a
directory `datasets` reads (parquet or CSV files, an image folder with one subdirectory per class), or a directory
written by `save_to_disk`. `federated_kwargs` says how flwr-datasets' FederatedDataset loads it; `decode` turns
rows into examples:

- the input column (run config `input-column`; by default the first of INPUT_COLUMNS present) holds images or
  arrays: each becomes an example of shape (channels, height, width) (`layout` below); with no such column the
  example is every numeric column but the label's and the partitioner's (a table, (features,));
- the label column (`label-column`; by default the first of LABEL_COLUMNS present) holds integer class ids; text
  labels are encoded as class ids in sorted order over the whole source (`encode_labels`).

Images stored as 8-bit integers are scaled to [0, 1] (x / 255), the built-in datasets' scale; other values are kept
as they are. The same rule runs on every node, so every node's pixels mean the same.
"""

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

INPUT_COLUMNS = ("image", "img", "pixel_values", "pixels", "x", "features")
LABEL_COLUMNS = ("label", "labels", "fine_label", "character", "y", "target", "class")
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
CHANNELS = (1, 3, 4)  # what a channel axis can hold: grey, RGB, RGBA


class SourceError(ValueError):
    """A dataset source cannot be read, or its columns or values do not fit a task; says which and why."""


def federated_kwargs(source: str, train_split: str) -> dict[str, Any]:
    """FederatedDataset's `dataset` and `load_dataset` arguments for `source` (see the module's docstring)."""
    path = Path(source).expanduser()
    if path.is_file():
        builder = BUILDERS.get("".join(path.suffixes[-1:]).lower())
        if builder is None:
            raise SourceError(f"{source!r}: a file of type {path.suffix!r}; allowed: {', '.join(BUILDERS)}")
        return {"dataset": builder, "data_files": {train_split: str(path)}}
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():  # save_to_disk of a DatasetDict: one directory per split
            splits = [p.name for p in sorted(path.iterdir()) if (p / "state.json").is_file()]
            return {"dataset": "arrow", "data_files": {s: sorted(glob.glob(str(path / s / "*.arrow"))) for s in splits}}
        if (path / "state.json").is_file():  # save_to_disk of one Dataset: its rows are the training split
            return {"dataset": "arrow", "data_files": {train_split: sorted(glob.glob(str(path / "*.arrow")))}}
        return {"dataset": str(path)}
    if source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise SourceError(f"{source!r} does not exist; allowed: a hub id such as 'uoft-cs/cifar10', or a local path")
    return {"dataset": source}


def pick(columns: Sequence[str], wanted: str, defaults: Sequence[str], what: str) -> str | None:
    """The column named `wanted`, or the first of `defaults` present; a SourceError if `wanted` is absent."""
    if wanted:
        if wanted not in columns:
            raise SourceError(f"run config '{what}' = {wanted!r} is not a column; the data has {list(columns)}")
        return wanted
    return next((c for c in defaults if c in columns), None)


def label_column(columns: Sequence[str], wanted: str) -> str:
    """The label column: `wanted`, or the first of LABEL_COLUMNS present."""
    found = pick(columns, wanted, LABEL_COLUMNS, "label-column")
    if found is None:
        raise SourceError(
            f"no label column among {list(columns)}; name it with run config 'label-column' "
            f"(by default the first of {list(LABEL_COLUMNS)})"
        )
    return found


def layout(x: np.ndarray, where: str) -> np.ndarray:
    """Examples as (samples, features) for a table or (samples, channels, height, width) for images, as float32.

    (N, F) is a table; (N, H, W) grey images; (N, H, W, C) and (N, C, H, W) images, told apart by which axis has
    1, 3 or 4 entries (channels first when both could). 8-bit integers are scaled to [0, 1]."""
    if x.dtype.kind not in "biuf":
        raise SourceError(f"{where} holds {x.dtype} values; allowed: integer or floating-point numbers")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in CHANNELS:
        if x.shape[3] not in CHANNELS:
            raise SourceError(
                f"{where} holds arrays of shape {list(x.shape)}: neither axis 1 nor axis 3 has 1, 3 or 4 channels; "
                "allowed: (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)"
            )
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim not in (2, 4):
        raise SourceError(
            f"{where} holds arrays of shape {list(x.shape)}; allowed: (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, which callers report
        scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.ascontiguousarray(scaled)


def _as_array(values: Any, column: str, where: str) -> np.ndarray:
    """A column's values (images, arrays or numbers) stacked into one array; a SourceError if they differ in shape."""
    arrays = [np.asarray(v) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise SourceError(
            f"{where}: column {column!r} holds examples of {len(shapes)} shapes ({sorted(shapes)[:3]}...); "
            "allowed: one shape (resize the images first)"
        )
    return np.stack(arrays) if arrays else np.zeros((0, 1), np.float32)


def encode_labels(dataset: Any, column: str) -> Any:
    """`dataset` (a DatasetDict or Dataset) with text labels in `column` encoded as class ids, in sorted order over
    all its splits."""
    from datasets import DatasetDict, Value

    features = next(iter(dataset.values())).features if isinstance(dataset, DatasetDict) else dataset.features
    feature = features[column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return dataset.class_encode_column(column)
    return dataset


def num_classes(features: Any, column: str, labels: Sequence[np.ndarray]) -> int:
    """Classes of a label column: its ClassLabel's names, else the largest label seen plus one."""
    from datasets import ClassLabel

    if isinstance(features.get(column), ClassLabel):
        return features[column].num_classes
    return max((int(y.max()) + 1 for y in labels if len(y)), default=0)


def decode(
    dataset: Any, input_column: str, label_col: str, exclude: Sequence[str], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """A `datasets.Dataset`'s rows as (examples (N, *shape) float32, labels (N,) int64); see the module docstring."""
    columns = dataset.column_names
    labels = np.asarray(dataset[label_col])
    if labels.ndim != 1 or labels.dtype.kind not in "iub":
        raise SourceError(
            f"{where}: label column {label_col!r} holds {labels.dtype} values of shape {list(labels.shape)}; "
            "allowed: integer class ids or text (encoded in sorted order)"
        )
    picked = pick(columns, input_column, INPUT_COLUMNS, "input-column")
    if picked is not None:
        x = _as_array(dataset[picked], picked, where)
    else:
        numeric = [
            c
            for c in columns
            if c != label_col and c not in exclude and getattr(dataset.features[c], "dtype", "") in _NUMERIC
        ]
        if not numeric:
            raise SourceError(
                f"{where}: no input column among {columns}; name it with run config 'input-column' "
                f"(by default the first of {list(INPUT_COLUMNS)}, else every numeric column)"
            )
        x = np.column_stack([np.asarray(dataset[c], dtype=np.float64) for c in numeric])
    return layout(x, where), labels.astype(np.int64)


_NUMERIC = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
}
