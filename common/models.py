"""The model registry (MLPs of any widths, a small CNN) and conversion to Flower records."""

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from common.config import check_model_name, mlp_widths
from common.data import dataset_shape, image_shape
from common.protocol import LOGITS_ARRAY
from common.seeds import Stream, derive_seed


def build_mlp(num_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """A ReLU MLP: num_features -> hidden... -> num_classes logits."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(image: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Two 3x3 conv layers (16, 32 channels) and a linear head; flat inputs are reshaped to `image`.

    Adaptive pooling to 2x2 makes one network fit the 8x8 digits and the 28x28 MNIST images.
    """
    return nn.Sequential(
        nn.Unflatten(1, image),
        nn.Conv2d(image[0], 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4, num_classes),
    )


def build_model(name: str, dataset: str) -> nn.Sequential:
    """The registry: `mlp-<w>[x<w>...]` for any dataset, `cnn` for image datasets."""
    check_model_name(name)
    features, classes = dataset_shape(dataset)
    if (widths := mlp_widths(name)) is not None:
        return build_mlp(features, widths, classes)
    if (image := image_shape(dataset)) is None:
        raise ValueError(f"model 'cnn' needs image inputs; dataset {dataset!r} has flat features, use an mlp-...")
    return build_cnn(image, classes)


def initial_model(name: str, dataset: str, seed: int) -> nn.Sequential:
    """build_model with weights drawn from (`seed`, `name`), leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, Stream.INITIAL_WEIGHTS, zlib.crc32(name.encode())))
        return build_model(name, dataset)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def to_record(model: nn.Module) -> ArrayRecord:
    """The model's weights as an ArrayRecord."""
    return ArrayRecord(model.state_dict())


def load_record(model: nn.Module, record: ArrayRecord) -> nn.Module:
    """Load an ArrayRecord's weights into `model` (strict: keys and shapes must match)."""
    model.load_state_dict(record.to_torch_state_dict(), strict=True)
    return model


def logits_to_record(logits: torch.Tensor, dtype: str) -> ArrayRecord:
    """Logits as they travel: float32, or float16 (run config `logits-dtype`) for half the bytes."""
    return ArrayRecord({LOGITS_ARRAY: Array(logits.numpy().astype(np.dtype(dtype)))})


def logits_from_record(record: ArrayRecord) -> torch.Tensor:
    """Logits received in either dtype, as float32."""
    return torch.as_tensor(record[LOGITS_ARRAY].numpy().astype(np.float32))
