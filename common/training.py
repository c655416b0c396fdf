"""Local training and evaluation loops over in-memory tensors."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[..., torch.Tensor]


def device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    loss_fn: LossFn = F.cross_entropy,
) -> float:
    """Adam over shuffled mini-batches of loss_fn(model(x), *targets); returns the mean batch loss.

    Slicing pre-built tensors instead of a DataLoader keeps a round of the
    seed-sized task in milliseconds; the shuffle has its own generator so a
    client's order depends only on `seed`.
    """
    dev = device()
    model.to(dev).train()
    x = x.to(dev)
    targets = tuple(t.to(dev) for t in targets)
    n = len(x)
    # The fused kernel does one pass over all parameters: the cheapest step for small models.
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    generator = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(dev)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), *(t[idx] for t in targets))
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
    model.cpu()
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(mean cross-entropy, number correct) of `model` on (x, y)."""
    if len(y) == 0:
        return 0.0, 0
    model.eval()
    logits = model(x)
    return F.cross_entropy(logits, y).item(), int((logits.argmax(1) == y).sum())


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of `model` on x, without gradients."""
    model.eval()
    return model(x)
