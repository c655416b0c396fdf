"""feddf-datafree's generator: class-conditional inputs that the clients' ensemble labels as asked."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.distill import BatchFn, ensemble_soft_targets, log_mean_probabilities
from common.feature_generator import NOISE_DIM, draw
from common.loss import diversity_loss
from common.training import fit_generator

# Channels of the image generator's quarter-size and half-size feature maps.
CHANNELS = (64, 32)


class Generator(nn.Module):
    """(noise, class) -> a flat input. For images, two transposed convolutions up from a quarter-size map,
    so samples have the local structure a CNN responds to; for flat data, an MLP. Image outputs pass a
    sigmoid, into the data's [0, 1]."""

    def __init__(self, num_features: int, num_classes: int, image: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.num_classes = num_classes
        inputs = NOISE_DIM + num_classes
        if image is None:
            self.net = nn.Sequential(
                nn.Linear(inputs, 128),
                nn.ReLU(),
                nn.Linear(128, 256),
                nn.ReLU(),
                nn.Linear(256, num_features),
            )
            return
        channels, height, width = image
        if height % 4 or width % 4 or channels * height * width != num_features:
            raise ValueError(
                f"the generator makes images whose sides are multiples of 4, of {num_features} "
                f"features; got {channels}x{height}x{width}"
            )
        wide, narrow = CHANNELS
        self.net = nn.Sequential(
            nn.Linear(inputs, wide * (height // 4) * (width // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (wide, height // 4, width // 4)),
            nn.ConvTranspose2d(wide, narrow, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(narrow, channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
            nn.Flatten(),
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Inputs meant to be classified as `labels`."""
        return self.net(torch.cat([noise, F.one_hot(labels, self.num_classes).float()], dim=1))

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n inputs with classes drawn uniformly, and those classes."""
        noise, labels = draw(range(self.num_classes), n, generator)
        return self(noise, labels), labels


def generator_loss(
    gen: Generator, teachers: Sequence[nn.Module], noise: torch.Tensor, labels: torch.Tensor, *, diversity: float
) -> torch.Tensor:
    """The generator's objective on one batch: the negative log of the teachers' mean probability (at
    temperature 1) of the asked class, plus `diversity` x the diversity loss of the batch."""
    x = gen(noise, labels)
    nll = F.nll_loss(log_mean_probabilities([t(x) for t in teachers], 1.0), labels)
    return nll + diversity * diversity_loss(noise, x)


def train_generator(
    gen: Generator,
    teachers: Sequence[nn.Module],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    diversity: float,
    seed: int,
) -> float:
    """Fit `gen` to the frozen `teachers` with Adam; returns the last loss. The teachers judge in eval mode
    (as at inference) and are left in it.

    `diversity` weighs the diversity loss; 1.0 is FedGen's default and what feddf-datafree has used: without
    the term the samples of a class collapse to one input (a generated validation loss near 1e-7 that early
    stopping cannot use).
    """
    for t in teachers:
        t.eval()
    return fit_generator(
        gen,
        teachers,
        lambda rng: generator_loss(gen, teachers, *draw(range(gen.num_classes), batch_size, rng), diversity=diversity),
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
    )


def generated_batches(
    gen: Generator, teachers: Sequence[nn.Module], batch_size: int, temperature: float, seed: int
) -> BatchFn:
    """Mini-batches of generated inputs with the ensemble's soft targets (mean of probabilities)."""
    rng = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = gen.sample(batch_size, rng)
        return x, ensemble_soft_targets(teachers, x, temperature)

    return batch
