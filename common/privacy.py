"""Sample-level differential privacy of a node's training: DP-SGD (Abadi et al. 2016) with Opacus.

Pure functions and a small ledger: noise calibration, the accountant of what a node has spent, and
the DP-SGD loop. Opacus (and the torch.optim it imports, ~1.5 s per fresh process) is imported
inside the functions, so a run with DP off never loads it. See docs/privacy.md.
"""

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

# The accountant Opacus calibrates and tracks with: Rényi DP of the subsampled Gaussian mechanism.
ACCOUNTANT = "rdp"


def not_covered(strategy: str, released: str, dp_epsilon: float) -> str:
    """Why `strategy` cannot run under DP: it releases `released`, which sample-level DP does not cover. The
    ServerApp refuses such a run before round 1; a node refuses the action whatever the server asks."""
    return (
        f"run config 'dp-epsilon' = {dp_epsilon}: strategy '{strategy}' {released}, which sample-level DP does "
        f"not cover; allowed: 0 with {strategy}"
    )


class PrivacyBudgetExceeded(RuntimeError):
    """Training would take a node's ε past its `dp-epsilon`; the message gives the numbers."""


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson sampling rate q: each example joins a step's batch with this probability."""
    return min(1.0, batch_size / num_examples)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """DP-SGD steps of one epoch: as many as the shuffled loop takes (an epoch sees each example once in
    expectation)."""
    return math.ceil(num_examples / batch_size)


@functools.cache
def noise_multiplier(epsilon: float, delta: float, rate: float, steps: int) -> float:
    """The smallest noise multiplier (within Opacus's tolerance) for which `steps` steps at `rate` spend at most ε."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=rate,
            steps=steps,
            accountant=ACCOUNTANT,
        )
    )


# What a node has spent: one (noise multiplier, sample rate, steps) per DP training, as Opacus's RDPAccountant keeps it.
History = list[tuple[float, float, int]]


def spent_epsilon(history: History, delta: float) -> float:
    """ε of `history` at `delta`, as Opacus's RDPAccountant computes it; 0 for no training."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    # The accountant's sum of each training's RDP, with the per-step RDP (about 0.5 s a noise and rate) computed
    # once: compute_rdp(steps) is steps x compute_rdp(1), so the floats are the accountant's.
    rdp = sum(steps * _step_rdp(noise, rate) for noise, rate, steps in history)
    return float(get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)[0])


@functools.cache
def _step_rdp(noise: float, rate: float):
    """The RDP of one subsampled Gaussian step at every order of Opacus's accountant."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    return compute_rdp(q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)


@dataclass
class Ledger:
    """A node's budget (`dp-epsilon` at `dp-delta`), its calibrated noise, and what it has spent."""

    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    history: History = field(default_factory=list)

    def spent(self) -> float:
        """ε spent so far."""
        return spent_epsilon(self.history, self.delta)

    def charge(self, rate: float, steps: int) -> None:
        """Record `steps` DP-SGD steps at `rate` about to be taken; refuse them if they would exceed the budget."""
        after = spent_epsilon([*self.history, (self.noise_multiplier, rate, steps)], self.delta)
        if after > self.epsilon:
            raise PrivacyBudgetExceeded(
                f"privacy budget exhausted: {steps} more DP-SGD steps (sample rate {rate:.4g}, noise multiplier "
                f"{self.noise_multiplier:.4g}) would bring this node's ε from {self.spent():.4f} to {after:.4f}, "
                f"over run config 'dp-epsilon' = {self.epsilon} at 'dp-delta' = {self.delta}; refused"
            )
        self.history.append((self.noise_multiplier, rate, steps))


@dataclass(frozen=True)
class DPSGD:
    """How one training is made DP: the node's ledger and the seed of its noise."""

    ledger: Ledger
    noise_seed: int


LossFn = Callable[..., torch.Tensor]


def dp_sgd(
    model: nn.Module,
    optimizer,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    privacy: DPSGD,
    loss_fn: LossFn,
    data_independent_grad: Callable[[], list[torch.Tensor]] | None = None,
) -> float:
    """DP-SGD on (x, targets): Poisson-sampled batches, per-sample gradients clipped to `max_grad_norm`,
    Gaussian noise of std `noise_multiplier * max_grad_norm` on their sum, divided by the expected batch
    size, then `optimizer.step()`. Charges the ledger first (raising PrivacyBudgetExceeded past the
    budget); returns the mean batch loss.

    `loss_fn` must average over the batch. `data_independent_grad` (FedProx's proximal term) is added
    after the noise: it reads no example, so it costs no privacy.
    """
    from opacus.grad_sample import GradSampleModule

    n = len(x)
    ledger = privacy.ledger
    rate = sample_rate(n, batch_size)
    steps = epochs * steps_per_epoch(n, batch_size)
    ledger.charge(rate, steps)
    sampler = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(privacy.noise_seed)
    clip, sigma = ledger.max_grad_norm, ledger.noise_multiplier
    expected = rate * n
    wrapped = GradSampleModule(model, loss_reduction="mean")
    params = optimizer.params
    total, counted = 0.0, 0
    try:
        for _ in range(steps):
            idx = (torch.rand(n, generator=sampler) < rate).nonzero().squeeze(1).to(x.device)
            optimizer.zero_grad()
            if len(idx):
                loss = loss_fn(wrapped(x[idx]), *(t[idx] for t in targets))
                with warnings.catch_warnings():
                    # Opacus's hooks on the first layer, whose input (data) needs no gradient: expected, harmless.
                    warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
                    loss.backward()
                per_sample = [p.grad_sample.reshape(len(idx), -1) for p in params]
                norms = torch.cat(per_sample, dim=1).norm(dim=1)
                scale = (clip / (norms + 1e-6)).clamp(max=1.0)
                summed = [torch.einsum("i,i...->...", scale, p.grad_sample) for p in params]
                total += loss.item()
                counted += 1
            else:
                # An empty Poisson batch still takes its step: noise alone, as the accounting assumes.
                summed = [torch.zeros_like(p) for p in params]
            extra = data_independent_grad() if data_independent_grad else [None] * len(params)
            for p, s, e in zip(params, summed, extra):
                # Noise drawn on the CPU from the seeded generator: the same draws on any device.
                drawn = torch.normal(0.0, sigma * clip, size=p.shape, generator=noise).to(p.device)
                p.grad = (s + drawn) / expected + (e if e is not None else 0)
                p.grad_sample = None
            optimizer.step()
    finally:
        wrapped.to_standard_module()
    return total / max(counted, 1)
