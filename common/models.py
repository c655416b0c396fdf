"""Teacher and student networks, and their conversion to Flower records."""

from collections.abc import Sequence

import torch
from torch import nn

from flwr.app import ArrayRecord

from common.config import RunConfig
from common.data import dataset_shape
from common.seeds import derive_seed

# Stream keys for common.seeds.derive_seed: one per role so teacher and student inits differ.
ROLES = {"teacher": 0, "student": 1}


def build_mlp(num_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """A ReLU MLP: num_features -> hidden... -> num_classes logits."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def init_mlp(num_features: int, hidden: Sequence[int], num_classes: int, seed: int) -> nn.Sequential:
    """build_mlp with weights drawn from `seed`, leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_mlp(num_features, hidden, num_classes)


def _layout(cfg: RunConfig, role: str) -> tuple[int, tuple[int, ...], int]:
    features, classes = dataset_shape(cfg.dataset)
    return features, cfg.teacher_hidden if role == "teacher" else cfg.student_hidden, classes


def make_model(cfg: RunConfig, role: str) -> nn.Sequential:
    """The run's teacher or student network, to load received weights into."""
    return build_mlp(*_layout(cfg, role))


def initial_model(cfg: RunConfig, role: str) -> nn.Sequential:
    """The run's teacher or student network, initialised from the run's seed."""
    return init_mlp(*_layout(cfg, role), derive_seed(cfg.seed, 10, ROLES[role]))


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
