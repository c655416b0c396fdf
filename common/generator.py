"""A conditional generator of inputs for data-free distillation (feddf-datafree)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.distill import BatchFn, ensemble_logits
from common.loss import soft_loss
from common.training import Adam

NOISE_DIM = 32


class Generator(nn.Module):
    """(noise, class) -> input features; sigmoid outputs for pixel data in [0, 1]."""

    def __init__(self, num_features: int, num_classes: int, bounded: bool) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.net = nn.Sequential(
            nn.Linear(NOISE_DIM + num_classes, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(),
            nn.Linear(256, num_features), nn.Sigmoid() if bounded else nn.Identity(),
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Inputs meant to be classified as `labels`."""
        return self.net(torch.cat([noise, F.one_hot(labels, self.num_classes).float()], dim=1))

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n inputs with classes drawn uniformly, and those classes."""
        labels = torch.randint(self.num_classes, (n,), generator=generator)
        return self(torch.randn(n, NOISE_DIM, generator=generator), labels), labels


def train_generator(
    gen: Generator,
    teachers: Sequence[nn.Module],
    students: Sequence[nn.Module],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    temperature: float,
    seed: int,
) -> float:
    """Fit `gen` so the ensemble of `teachers` labels its samples as asked (cross-entropy) while
    the `students` disagree with the ensemble on them (minus their distillation loss): inputs
    that carry the ensemble's knowledge where the students still lack it. Returns the last loss.
    """
    frozen = [m.requires_grad_(False).eval() for m in (*teachers, *students)]
    optimizer = Adam(gen.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    gen.train()
    for _ in range(steps):
        x, labels = gen.sample(batch_size, generator)
        ensemble = torch.stack([t(x) for t in teachers]).mean(0)
        disagreement = torch.stack([soft_loss(s(x), ensemble, temperature) for s in students]).mean()
        loss = F.cross_entropy(ensemble, labels) - disagreement
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for m in frozen:
        m.requires_grad_(True)
    return loss.item()


def generated_batches(gen: Generator, teachers: Sequence[nn.Module], batch_size: int, seed: int) -> BatchFn:
    """Mini-batches of generated inputs with the ensemble's logits as targets."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = gen.sample(batch_size, generator)
        return x, ensemble_logits(teachers, x)

    return batch
