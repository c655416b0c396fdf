"""Ensembles of logits and the distillation loop toward them, shared by FedMD, FedDF and two-stage.

The loop and the logits compute on common.device's `compute_device()` (CUDA when present); batches and seeded
draws are made on the CPU and moved there, and the model is handed back where it was."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from common.device import compute_device, module_device
from common.loss import soft_loss
from common.training import Adam, predict_logits

# (step) -> (inputs, target logits) of one mini-batch
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
# model -> a validation loss, lower is better
ValidationFn = Callable[[nn.Module], float]

# Validation every this many steps; `patience` counts validations.
VALIDATE_EVERY = 10


# A bound on a centred logit: softmax saturates long before (e^30 against 1), so an honest model loses nothing.
LOGIT_BOUND = 30.0


def consensus(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parties' logits on the same inputs agreed, each party counting equally (FedMD's mean), and no party able
    to decide a row alone: each party's rows are centred (a row's logits minus their mean, which softmax ignores)
    and clipped to +-LOGIT_BOUND, then combined by the coordinate-wise median, which one extreme party among three
    or more cannot move past the honest ones (of two, the median is their mean)."""
    if not logits:
        raise ValueError("consensus of no logits")
    stacked = torch.stack([t.float() for t in logits])
    centred = (stacked - stacked.mean(dim=2, keepdim=True)).clamp(-LOGIT_BOUND, LOGIT_BOUND)
    # The median interpolated between the middle two for an even count: of two parties, their mean.
    return centred.quantile(0.5, dim=0)


def log_mean_probabilities(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """log of the mean over parties of softmax(logits / temperature): an ensemble's log-probabilities (FedDF).

    Computed in log space, so a party sure of another class cannot underflow the mean to log(0)."""
    log_probs = torch.stack([torch.log_softmax(t / temperature, dim=1) for t in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


def ensemble_soft_targets(models: Sequence[nn.Module], x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits whose softmax at `temperature` is the mean of the models' softmax at it (FedDF).

    Distilling toward them has the gradient of averaging the KL losses toward each model, as
    FedDF's code does by default; a model that never saw a class cannot outvote the others on
    it with large logits, as it can in a mean of logits.
    """
    return temperature * log_mean_probabilities([predict_logits(m, x) for m in models], temperature)


@dataclass(frozen=True)
class DistillReport:
    """How a distillation ended."""

    steps: int
    start_validation_loss: float
    best_validation_loss: float


def labelled_error(x: torch.Tensor, y: torch.Tensor) -> ValidationFn:
    """Validation by the error rate on labelled samples (FedDF's early stopping on a validation split)."""
    return lambda model: int((predict_logits(model, x).argmax(1) != y).sum()) / len(y)


def ensemble_disagreement(x: torch.Tensor, targets: torch.Tensor, temperature: float) -> ValidationFn:
    """Validation by the distillation loss toward an ensemble's targets, where no labels exist."""
    return lambda model: float(soft_loss(predict_logits(model, x), targets, temperature))


def public_validation(
    x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, labelled: bool, temperature: float
) -> ValidationFn:
    """Early stopping on public data: the error rate on its labels when they are the task's (`labelled`: a slice
    of the run's dataset); else (`public-dataset`, another task's labels or none) the distillation loss toward the
    ensemble's `targets` on it."""
    return labelled_error(x, y) if labelled else ensemble_disagreement(x, targets, temperature)


def distill(
    model: nn.Module,
    batches: BatchFn,
    validation: ValidationFn,
    *,
    steps: int,
    patience: int,
    learning_rate: float,
    temperature: float,
) -> DistillReport:
    """Adam on soft_loss(model(x), targets) over `batches`, at most `steps` steps, on the compute device.

    Early stopping as FedDF does it: every VALIDATE_EVERY steps `validation` is measured (on the model as it is,
    on the compute device); the best weights (the starting ones included) are kept, and `patience` checks without
    improvement stop it.
    """
    dev, home = compute_device(), module_device(model)
    model.to(dev)
    try:
        optimizer = Adam(model.parameters(), lr=learning_rate)
        start = best = validation(model)
        best_state, stale, step = _state_copy(model), 0, 0
        while step < steps and stale < patience:
            model.train()
            for _ in range(min(VALIDATE_EVERY, steps - step)):
                x, targets = batches(step)
                optimizer.zero_grad()
                soft_loss(model(x.to(dev)), targets.to(dev), temperature).backward()
                optimizer.step()
                step += 1
            loss = validation(model)
            if loss < best:
                best, best_state, stale = loss, _state_copy(model), 0
            else:
                stale += 1
        model.load_state_dict(best_state)
    finally:
        model.to(home)
    return DistillReport(step, start, best)


def random_batches(x: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int) -> BatchFn:
    """Mini-batches of (x, targets) drawn at random, from their own generator."""
    generator = torch.Generator().manual_seed(seed)

    def batch(_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        return x[idx], targets[idx]

    return batch


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights, detached from it, to restore the best ones."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
