"""Training loops (a node's local training, a data-free generator's fitting) and evaluation over in-memory
tensors.

`train`, `evaluate` and `predict_logits` compute on common.device's `compute_device()` (CUDA when present): they
move the model and the tensors there, and hand back the model where it was and results on the CPU. Seeded draws
come from CPU generators, so a CPU run is bit-identical to one before devices were supported. `fit_generator` runs
where its modules are (the server's data-free generators: the CPU)."""

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.device import compute_device, module_device
from common.privacy import DPSGD, dp_sgd

LossFn = Callable[..., torch.Tensor]


class Adam:
    """Adam (Kingma & Ba 2015) as torch.optim.Adam computes it with its defaults.

    Written out because constructing any torch.optim optimizer imports torch._dynamo,
    about 1.5 s on 2 cores, and a deployed ClientApp pays that on every message (each
    runs in a fresh process). Checked against torch.optim.Adam in the tests.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        """Drop the gradients of the last step."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter from its gradient."""
        self.steps += 1
        correction1 = 1 - self.beta1**self.steps
        correction2_sqrt = math.sqrt(1 - self.beta2**self.steps)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1 - self.beta2)
            p.addcdiv_(m, (v.sqrt() / correction2_sqrt).add_(self.eps), value=-self.lr / correction1)


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
    proximal_mu: float = 0.0,
    privacy: DPSGD | None = None,
) -> float:
    """Adam over shuffled mini-batches of loss_fn(model(x), *targets); returns the mean batch loss.

    With `proximal_mu` > 0 each step also minimises FedProx's proximal term (Li et al., MLSys 2020)
    mu/2 * ||w - w_start||^2, which keeps the weights near those training started from; the returned
    loss is loss_fn's alone, comparable with training without it.

    Slicing pre-built tensors instead of a DataLoader keeps a round of the
    seed-sized task in milliseconds; the shuffle has its own generator so a
    client's order depends only on `seed`.

    With `privacy`, the steps are DP-SGD (common.privacy.dp_sgd): Poisson-sampled batches drawn by
    `seed`, clipped per-sample gradients and seeded noise, charged to the node's ledger first.
    """
    dev, home = compute_device(), module_device(model)
    model.to(dev).train()
    try:
        x, targets = x.to(dev), tuple(t.to(dev) for t in targets)
        n = len(x)
        optimizer = Adam(model.parameters(), lr=learning_rate)
        anchor = [p.detach().clone() for p in optimizer.params] if proximal_mu > 0 else []
        if privacy is not None:
            proximal_grad = (
                (lambda: [proximal_mu * (p.detach() - p0) for p, p0 in zip(optimizer.params, anchor)])
                if anchor
                else None
            )
            return dp_sgd(
                model,
                optimizer,
                x,
                targets,
                epochs=epochs,
                batch_size=batch_size,
                seed=seed,
                privacy=privacy,
                loss_fn=loss_fn,
                data_independent_grad=proximal_grad,
            )
        rng = torch.Generator().manual_seed(seed)
        total, steps = 0.0, 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=rng).to(x.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(x[idx]), *(t[idx] for t in targets))
                if anchor:
                    proximal = sum(((p - p0) ** 2).sum() for p, p0 in zip(optimizer.params, anchor))
                    (loss + proximal_mu / 2 * proximal).backward()
                else:
                    loss.backward()
                optimizer.step()
                total += loss.item()
                steps += 1
        return total / max(steps, 1)
    finally:
        # Back where it was (callers hold CPU models) even when training stops midway (a DP budget refused).
        model.to(home)


def fit_generator(
    gen: nn.Module,
    frozen: Sequence[nn.Module],
    step_loss: Callable[[torch.Generator], torch.Tensor],
    *,
    steps: int,
    learning_rate: float,
    seed: int,
) -> float:
    """Adam on `gen`'s parameters: `steps` steps on step_loss(rng), whose draws come from `rng`, a
    torch.Generator seeded with `seed`; returns the last loss (0.0 after no steps).

    The data-free generators' loop (common.generator, common.feature_generator): the modules that judge
    the samples are `frozen` (no gradients of their own) while it runs, and trainable again after.
    """
    for m in frozen:
        m.requires_grad_(False)
    optimizer = Adam(gen.parameters(), lr=learning_rate)
    rng = torch.Generator().manual_seed(seed)
    loss = torch.zeros(())
    gen.train()
    for _ in range(steps):
        loss = step_loss(rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for m in frozen:
        m.requires_grad_(True)
    return loss.item()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(mean cross-entropy, number correct) of `model` on (x, y), computed on the compute device."""
    if len(y) == 0:
        return 0.0, 0
    dev, home = compute_device(), module_device(model)
    model.to(dev).eval()
    try:
        logits, y = model(x.to(dev)), y.to(dev)
        return F.cross_entropy(logits, y).item(), int((logits.argmax(1) == y).sum())
    finally:
        model.to(home)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of `model` on x, without gradients, computed on the compute device and handed back on the CPU."""
    dev, home = compute_device(), module_device(model)
    model.to(dev).eval()
    try:
        return model(x.to(dev)).cpu()
    finally:
        model.to(home)
