"""Small datasets written to disk in the forms `datasets` reads, for tests (no hub access here).

Each has a shape or a class count no built-in dataset has: 3-channel 12x10 images of 4 classes, a table of 5
columns and 7 classes. The images are learnable: each class is a colour plus noise.
"""

import io
from pathlib import Path

import numpy as np

IMAGE_SHAPE = (3, 12, 10)  # (channels, height, width)
IMAGE_CLASSES = 4
TABLE_FEATURES = 5
TABLE_CLASSES = 7


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12, 10, 3) uint8 images whose class sets the mean of each channel, and their labels 0..3."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % IMAGE_CLASSES
    rng.shuffle(y)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
    noise = rng.normal(0, 40, (n, IMAGE_SHAPE[1], IMAGE_SHAPE[2], 3))
    return np.clip(colours[y][:, None, None, :] + noise, 0, 255).astype(np.uint8), y


def _png(pixels: np.ndarray) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def image_dataset(pixels: np.ndarray, labels: np.ndarray, column: str = "img", classes: int | None = None, **extra):
    """A `datasets.Dataset` of PNG images in `column` and a ClassLabel `label` (plus `extra` columns)."""
    import datasets

    features = {column: datasets.Image(), "label": datasets.ClassLabel(num_classes=classes or IMAGE_CLASSES)}
    features.update({k: datasets.Value("int64") for k in extra})
    rows = {column: [_png(p) for p in pixels], "label": labels.tolist(), **{k: list(v) for k, v in extra.items()}}
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


def image_parquet(path: Path, n: int = 240, seed: int = 0, **extra) -> Path:
    """A parquet file of `n` images (`images`)."""
    image_dataset(*images(n, seed), **extra).to_parquet(str(path))
    return path


def image_folder(root: Path, n: int = 120, seed: int = 0) -> Path:
    """An image folder: root/class-<k>/<i>.png, the layout `datasets`' imagefolder reads."""
    from PIL import Image

    pixels, labels = images(n, seed)
    for i, (p, y) in enumerate(zip(pixels, labels, strict=True)):
        (root / f"class-{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(p).save(root / f"class-{y}" / f"{i:04d}.png")
    return root


def table(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5) features on scales far from 1 (the standardisation has work to do) and labels 0..6."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, TABLE_CLASSES, n)
    x = rng.normal(0, 1, (n, TABLE_FEATURES))
    x[:, 0] += 1.5 * y  # a learnable signal in column a
    x[:, 1] = x[:, 1] * 1000 + 5000
    return x, y


def table_csv(path: Path, n: int = 420, seed: int = 0, label: str = "target") -> Path:
    """A CSV of `table`: columns a..e, the label, and a text column that is not a feature."""
    import pandas as pd

    x, y = table(n, seed)
    frame = pd.DataFrame(x, columns=list("abcde"))
    frame[label] = y
    frame["note"] = "free text"
    frame.to_csv(path, index=False)
    return path
