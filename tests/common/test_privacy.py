"""DP-SGD and its accounting, against Opacus's own accountant and calibration."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from common.models import build_cnn, build_mlp
from common.privacy import DPSGD, Ledger, PrivacyBudgetExceeded, dp_sgd, noise_multiplier, sample_rate, spent_epsilon
from common.training import train

X, Y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 2


def dp_train(model, ledger, seed=3, noise_seed=7, **kwargs):
    return train(
        model,
        X,
        (Y,),
        epochs=2,
        batch_size=16,
        learning_rate=0.05,
        seed=seed,
        privacy=DPSGD(ledger, noise_seed),
        **kwargs,
    )


def ledger(epsilon=10.0, sigma=1.5, history=()):
    return Ledger(epsilon, 1e-5, 1.0, sigma, list(history))


def test_spent_epsilon_is_opacus_rdp_accountant_after_the_same_steps():
    accountant = RDPAccountant()
    for _ in range(30):
        accountant.step(noise_multiplier=1.3, sample_rate=0.05)
    for _ in range(20):
        accountant.step(noise_multiplier=1.3, sample_rate=0.1)
    assert spent_epsilon([(1.3, 0.05, 30), (1.3, 0.1, 20)], 1e-5) == pytest.approx(
        accountant.get_epsilon(1e-5), rel=1e-12
    )
    assert spent_epsilon([], 1e-5) == 0.0


def test_training_charges_its_steps_at_the_poisson_rate():
    held = ledger()
    dp_train(build_mlp(8, (4,), 2), held)
    assert held.history == [(1.5, sample_rate(64, 16), 2 * 4)]
    accountant = RDPAccountant()
    for _ in range(8):
        accountant.step(noise_multiplier=1.5, sample_rate=0.25)
    assert held.spent() == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


def test_calibrated_noise_keeps_the_horizon_within_the_budget():
    sigma = noise_multiplier(3.0, 1e-5, 0.1, 500)
    assert sigma == get_noise_multiplier(
        target_epsilon=3.0, target_delta=1e-5, sample_rate=0.1, steps=500, accountant="rdp"
    )
    assert 2.9 < spent_epsilon([(sigma, 0.1, 500)], 1e-5) <= 3.0


def test_training_past_the_budget_is_refused_and_charges_nothing():
    sigma = noise_multiplier(1.0, 1e-5, 0.25, 8)
    held = ledger(epsilon=1.0, sigma=sigma)
    model = build_mlp(8, (4,), 2)
    dp_train(model, held)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(
        PrivacyBudgetExceeded,
        match=r"privacy budget exhausted: 8 more DP-SGD steps .* over run config "
        r"'dp-epsilon' = 1.0 at 'dp-delta' = 1e-05; refused",
    ):
        dp_train(model, held)
    assert len(held.history) == 1 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("build", [lambda: build_mlp(8, (4,), 2), lambda: build_cnn((1, 2, 4), 2)], ids=["mlp", "cnn"])
def test_dp_training_is_reproducible_bit_for_bit_and_depends_on_the_noise_seed(build):
    def trained(noise_seed):
        model = build()
        torch.nn.utils.vector_to_parameters(
            torch.linspace(-0.5, 0.5, sum(p.numel() for p in model.parameters())), model.parameters()
        )
        dp_train(model, ledger(), noise_seed=noise_seed, proximal_mu=0.1)
        return torch.nn.utils.parameters_to_vector(model.parameters())

    assert torch.equal(trained(7), trained(7))
    assert not torch.equal(trained(7), trained(8))
    assert not hasattr(next(build().parameters()), "grad_sample")


class Recorder:
    """fedkd's optimizer interface, keeping each step's gradients instead of applying them."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([p.grad.clone() for p in self.params])


def test_a_step_averages_per_sample_gradients_clipped_to_max_grad_norm_plus_seeded_noise():
    model, clip, sigma = build_mlp(8, (4,), 2), 0.05, 0.7
    # batch_size = n: q = 1, every example in the one step, so the expected batch is the whole set.
    optimizer = Recorder(model.parameters())
    dp_sgd(
        model,
        optimizer,
        X,
        (Y,),
        epochs=1,
        batch_size=64,
        seed=3,
        loss_fn=F.cross_entropy,
        privacy=DPSGD(Ledger(math.inf, 1e-5, clip, sigma), 7),
    )
    clipped = torch.zeros(sum(p.numel() for p in model.parameters()))
    for x, y in zip(X, Y):
        g = torch.autograd.grad(F.cross_entropy(model(x[None]), y[None]), list(model.parameters()))
        g = torch.cat([t.flatten() for t in g])
        clipped += g * min(1.0, clip / (g.norm().item() + 1e-6))
    noise = torch.Generator().manual_seed(7)
    drawn = torch.cat(
        [torch.normal(0.0, sigma * clip, size=p.shape, generator=noise).flatten() for p in model.parameters()]
    )
    got = torch.cat([g.flatten() for g in optimizer.grads[0]])
    assert len(optimizer.grads) == 1
    assert torch.allclose(got, (clipped + drawn) / 64, atol=1e-6)


def test_a_fresh_process_trains_without_dp_without_importing_opacus_or_dynamo():
    # torch imports torch.optim's modules itself; the cost is torch._dynamo, which constructing an optimizer imports.
    code = (
        "import sys, torch\nfrom common.models import build_mlp\nfrom common.training import train\n"
        "train(build_mlp(4, (8,), 2), torch.randn(10, 4), (torch.zeros(10, dtype=torch.long),),"
        " epochs=1, batch_size=4, learning_rate=0.1, seed=0)\n"
        "print(sorted(m for m in ('opacus', 'torch._dynamo') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
