import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.models import build_mlp
from common.training import Adam, evaluate, fit_generator, predict_logits, train


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    ours, theirs = build_mlp(8, (16,), 3), build_mlp(8, (16,), 3)
    theirs.load_state_dict(ours.state_dict())
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    mine, ref = Adam(ours.parameters(), lr=0.01), torch.optim.Adam(theirs.parameters(), lr=0.01)
    for step in range(20):
        batch = slice(step % 4 * 16, step % 4 * 16 + 16)
        for model, opt in ((ours, mine), (theirs, ref)):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fit_generator_is_adam_on_the_seeded_step_losses_with_the_judges_frozen_meanwhile():
    torch.manual_seed(4)
    gen, judge = nn.Linear(3, 2), nn.Linear(2, 1)
    reference = nn.Linear(3, 2)
    reference.load_state_dict(gen.state_dict())
    frozen_while_running = []

    def step_loss(rng: torch.Generator) -> torch.Tensor:
        frozen_while_running.append([p.requires_grad for p in judge.parameters()])
        return judge(gen(torch.randn(4, 3, generator=rng))).pow(2).mean()

    gen.eval()
    last = fit_generator(gen, [judge], step_loss, steps=6, learning_rate=0.1, seed=3)
    # Written out with torch.optim.Adam, the same draws from a generator seeded 3.
    optimizer, rng = torch.optim.Adam(reference.parameters(), lr=0.1), torch.Generator().manual_seed(3)
    for _ in range(6):
        loss = judge(reference(torch.randn(4, 3, generator=rng))).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for a, b in zip(gen.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert last == pytest.approx(loss.item(), rel=1e-5) and gen.training
    assert frozen_while_running == [[False, False]] * 6
    assert all(p.requires_grad for p in judge.parameters())
    assert fit_generator(gen, [judge], step_loss, steps=0, learning_rate=0.1, seed=3) == 0.0


def test_training_learns_and_is_seeded():
    torch.manual_seed(1)
    x = torch.randn(200, 8)
    y = (x[:, 0] > 0).long()
    model = build_mlp(8, (16,), 2)
    before = evaluate(model, x, y)[1]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, x, (y,), epochs=5, batch_size=32, learning_rate=0.01, seed=3)
    assert evaluate(model, x, y)[1] >= 180 > before + 40
    again = build_mlp(8, (16,), 2)
    again.load_state_dict(start)
    train(again, x, (y,), epochs=5, batch_size=32, learning_rate=0.01, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_the_proximal_term_is_fedprox_objective_minimised_by_adam():
    """train(proximal_mu=mu) against torch.optim.Adam on loss + mu/2 * ||w - w_start||^2, written out."""
    torch.manual_seed(2)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    ours, reference = build_mlp(6, (8,), 3), build_mlp(6, (8,), 3)
    reference.load_state_dict(ours.state_dict())
    start = [p.detach().clone() for p in reference.parameters()]
    mu = 0.5
    reported = train(ours, x, (y,), epochs=3, batch_size=16, learning_rate=0.05, seed=7, proximal_mu=mu)
    optimizer, generator, losses = (
        torch.optim.Adam(reference.parameters(), lr=0.05),
        torch.Generator().manual_seed(7),
        [],
    )
    for _ in range(3):
        order = torch.randperm(40, generator=generator)
        for batch in order.split(16):
            optimizer.zero_grad()
            loss = F.cross_entropy(reference(x[batch]), y[batch])
            (loss + mu / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(reference.parameters(), start))).backward()
            optimizer.step()
            losses.append(loss.item())
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The reported loss is the task's alone.
    assert reported == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_a_larger_mu_keeps_the_weights_nearer_where_they_started():
    torch.manual_seed(3)
    x, y = torch.randn(100, 6), torch.randint(0, 3, (100,))
    initial = build_mlp(6, (8,), 3)
    drift = {}
    for mu in (0.0, 0.1, 10.0):
        model = build_mlp(6, (8,), 3)
        model.load_state_dict(initial.state_dict())
        train(model, x, (y,), epochs=5, batch_size=20, learning_rate=0.05, seed=1, proximal_mu=mu)
        drift[mu] = sum(float(((p - q) ** 2).sum()) for p, q in zip(model.parameters(), initial.parameters())) ** 0.5
    assert drift[0.0] > drift[0.1] > drift[10.0] > 0


def test_a_fresh_process_trains_without_importing_dynamo():
    code = (
        "import sys, torch\nfrom common.models import build_mlp\nfrom common.training import train\n"
        "train(build_mlp(4, (8,), 2), torch.randn(10, 4), (torch.zeros(10, dtype=torch.long),),"
        " epochs=1, batch_size=4, learning_rate=0.1, seed=0)\nprint('torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_on_the_cpu_train_is_the_plain_loop_bit_for_bit():
    """The device handling adds nothing on the CPU: train() is Adam over randperm batches of a CPU generator."""
    torch.manual_seed(5)
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    ours, reference = build_mlp(6, (8,), 3), build_mlp(6, (8,), 3)
    reference.load_state_dict(ours.state_dict())
    reported = train(ours, x, (y,), epochs=2, batch_size=16, learning_rate=0.05, seed=9)
    optimizer, generator, losses = Adam(reference.parameters(), lr=0.05), torch.Generator().manual_seed(9), []
    reference.train()
    for _ in range(2):
        order = torch.randperm(50, generator=generator)
        for start in range(0, 50, 16):
            batch = order[start : start + 16]
            optimizer.zero_grad()
            loss = F.cross_entropy(reference(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))
    assert reported == sum(losses) / len(losses)
    assert all(p.device.type == "cpu" for p in ours.parameters())


def test_evaluate_and_logits_come_back_on_the_cpu_with_the_model_where_it_was():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 0, 0])
    logits = predict_logits(model, x)
    assert logits.device.type == "cpu" and torch.equal(logits, x) and not logits.requires_grad
    loss, correct = evaluate(model, x, y)
    assert correct == 2 and loss == pytest.approx(float(F.cross_entropy(x, y)), rel=1e-6)
    assert isinstance(loss, float) and isinstance(correct, int)
    assert all(p.device.type == "cpu" for p in model.parameters()) and not model.training
