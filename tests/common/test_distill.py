"""Consensus, ensemble and the distillation loops against hand computations."""

import copy
import math

import pytest
import torch
from torch import nn

from common.distill import (
    VALIDATE_EVERY,
    consensus,
    distill,
    ensemble_disagreement,
    ensemble_soft_targets,
    labelled_error,
    log_mean_probabilities,
    random_batches,
)
from common.feature_generator import NOISE_DIM
from common.generator import Generator, generator_loss, train_generator
from common.loss import soft_loss
from common.models import build_model
from common.training import Adam


def linear(weight, bias):
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_consensus_of_two_is_the_mean_of_their_centred_logits_whatever_their_dtype():
    a = torch.tensor([[1.0, 3.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 1.0], [2.0, 2.0]], dtype=torch.float16)
    # Centred: a's rows (-1, 1), (-1, 1); b's (1, -1), (0, 0). Their mean:
    assert torch.equal(consensus([a, b]), torch.tensor([[0.0, 0.0], [-0.5, 0.5]]))


def test_one_extreme_party_among_three_cannot_decide_a_row():
    honest = [torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0]])]
    # float16's largest value on class 2: with a mean of logits it would flip the row to class 2.
    extreme = torch.tensor([[0.0, 0.0, 65504.0]], dtype=torch.float16)
    agreed = consensus([*honest, extreme])
    assert agreed.argmax(1).tolist() == [0] and agreed.abs().max() <= 30.0
    # Shifting a party's whole row changes nothing: softmax ignores it, and so does the consensus.
    assert torch.allclose(consensus([*honest, extreme]), consensus([honest[0] + 1e4, honest[1], extreme]), atol=1e-3)
    with pytest.raises(ValueError, match="consensus of no logits"):
        consensus([])


def test_log_mean_probabilities_by_hand():
    a, b = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[math.log(4.0), 0.0]])  # softmax (1/4, 3/4), (4/5, 1/5)
    mean = [(1 / 4 + 4 / 5) / 2, (3 / 4 + 1 / 5) / 2]
    assert torch.allclose(log_mean_probabilities([a, b], 1.0).exp(), torch.tensor([mean]), atol=1e-6)
    # At temperature 2 each party's logits are halved first.
    halved = log_mean_probabilities([a / 2, b / 2], 1.0)
    assert torch.allclose(log_mean_probabilities([a, b], 2.0), halved, atol=1e-6)
    # A party sure of the other class does not drive the log to -inf.
    assert torch.isfinite(log_mean_probabilities([torch.tensor([[1e4, -1e4]]), a], 1.0)).all()


def test_ensemble_soft_targets_soften_to_the_mean_of_the_models_probabilities():
    x = torch.tensor([[1.0, 2.0]])
    m1 = linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])  # -> (1, 2)
    m2 = linear([[0.0, 0.0], [0.0, 0.0]], [30.0, 0.0])  # -> (30, 0): sure of class 0
    t = 2.0
    p1, p2 = [1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-0.5))], [1 / (1 + math.exp(-15)), 1 / (1 + math.exp(15))]
    mean = torch.tensor([[(p1[0] + p2[0]) / 2, (p1[1] + p2[1]) / 2]])
    targets = ensemble_soft_targets([m1, m2], x, t)
    assert torch.allclose(torch.softmax(targets / t, dim=1), mean, atol=1e-6)
    # The mean of logits, (15.5, 1), would soften to about 0.999 for class 0; the mean of probabilities is 0.69.
    assert float(mean[0, 0]) == pytest.approx(0.6888, abs=1e-4)
    assert torch.isfinite(ensemble_soft_targets([linear([[0.0, 0.0]] * 2, [1e4, -1e4])], x, 1.0)).all()


def test_soft_loss_is_t_squared_kl_of_the_softened_distributions():
    student, teacher, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 2.0
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]  # softmax(teacher / 2)
    kl = sum(pi * math.log(pi / 0.5) for pi in p)
    assert float(soft_loss(student, teacher, t)) == pytest.approx(t * t * kl, rel=1e-5)
    assert float(soft_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_pulls_the_student_to_the_ensemble_and_keeps_its_best_weights():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    teacher = linear([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, -0.5, 0.0]], [0.0, 0.1, -0.1])
    targets = teacher(x).detach()
    student = nn.Linear(4, 3)
    validation = ensemble_disagreement(x[:50], targets[:50], 1.0)
    before = validation(student)
    report = distill(
        student,
        random_batches(x[50:], targets[50:], 32, seed=1),
        validation,
        steps=400,
        patience=3,
        learning_rate=0.05,
        temperature=1.0,
    )
    after = validation(student)
    assert after < 0.1 * before
    assert report.start_validation_loss == pytest.approx(before, rel=1e-5)
    assert report.best_validation_loss == pytest.approx(after, rel=1e-5)
    assert report.steps % VALIDATE_EVERY == 0 and 0 < report.steps <= 400


def test_on_the_cpu_distill_is_the_plain_adam_loop_bit_for_bit():
    """The device handling adds nothing on the CPU: the distilled weights are plain Adam's on the same batches."""
    torch.manual_seed(1)
    x = torch.randn(60, 4)
    targets = linear([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]], [0.0, 0.1])(x).detach()
    student, reference = nn.Linear(4, 2), nn.Linear(4, 2)
    reference.load_state_dict(student.state_dict())
    validation = ensemble_disagreement(x[:20], targets[:20], 2.0)
    report = distill(
        student,
        random_batches(x[20:], targets[20:], 8, seed=4),
        validation,
        steps=2 * VALIDATE_EVERY,
        patience=5,
        learning_rate=0.05,
        temperature=2.0,
    )
    optimizer, batches = Adam(reference.parameters(), lr=0.05), random_batches(x[20:], targets[20:], 8, seed=4)
    for step in range(2 * VALIDATE_EVERY):
        xb, tb = batches(step)
        optimizer.zero_grad()
        soft_loss(reference(xb), tb, 2.0).backward()
        optimizer.step()
    assert report.best_validation_loss == validation(reference)  # the last weights were the best
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), reference.parameters()))
    assert all(p.device.type == "cpu" for p in student.parameters())


def test_labelled_error_is_the_exact_share_of_wrong_predictions():
    model = linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])  # predicts the larger feature's index
    x = torch.tensor([[1.0, 0.0]] * 7 + [[0.0, 1.0]] * 3)
    y = torch.tensor([0] * 6 + [1] * 4)  # one class-0 input labelled 1: 1 wrong of 10
    assert labelled_error(x, y)(model) == 0.1  # an exact fraction, as history.json shows it


def test_early_stopping_gives_up_after_patience_checks_without_improvement():
    x = torch.randn(40, 2)
    student = linear([[0.0, 0.0], [0.0, 0.0]], [0.0, 1.0])  # predicts class 1 everywhere
    start = {k: v.clone() for k, v in student.state_dict().items()}
    # The ensemble says class 0, the labels say class 1: distilling only raises the validation error.
    report = distill(
        student,
        random_batches(x, torch.tensor([[9.0, -9.0]]).expand(40, 2), 8, seed=0),
        labelled_error(x[:10], torch.ones(10, dtype=torch.long)),
        steps=1000,
        patience=2,
        learning_rate=0.1,
        temperature=1.0,
    )
    assert report.steps == 2 * VALIDATE_EVERY
    assert report.start_validation_loss == report.best_validation_loss == 0.0
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())  # the best weights: the start


def constant_generator(output):
    """A flat-data generator whose every sample is `output` (weights zero, last bias `output`)."""
    gen = Generator(len(output), 2, image=None)
    with torch.no_grad():
        for p in gen.parameters():
            p.zero_()
        gen.net[-1].bias.copy_(torch.tensor(output))
    return gen


def test_the_generator_objective_by_hand():
    gen = constant_generator([1.0, 2.0])
    # The two teachers read the sample as logits [1, 2] and [2, 1]: mean probability 1/2 for either class.
    teachers = [linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0]), linear([[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0])]
    noise = torch.randn(3, NOISE_DIM, generator=torch.Generator().manual_seed(0))
    # Every sample is the same input: the diversity loss is exp(0) = 1, times its weight.
    loss = generator_loss(gen, teachers, noise, torch.tensor([0, 1, 1]), diversity=1.0)
    assert loss.item() == pytest.approx(math.log(2) + 1.0, rel=1e-6)
    assert generator_loss(gen, teachers, noise, torch.tensor([0, 1, 1]), diversity=0.25).item() == pytest.approx(
        math.log(2) + 0.25, rel=1e-6
    )
    # One teacher: the cross-entropy of its logits [1, 2] for classes 0, 1, 1.
    loss = generator_loss(gen, teachers[:1], noise, torch.tensor([0, 1, 1]), diversity=1.0)
    big, small = math.log(1 + math.e), math.log(1 + 1 / math.e)
    assert loss.item() == pytest.approx((big + 2 * small) / 3 + 1.0, rel=1e-6)


def test_the_image_generator_makes_images_in_the_pixel_range_and_refuses_odd_sides():
    gen = Generator(28 * 28, 10, image=(1, 28, 28))
    x, labels = gen.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 784) and labels.shape == (5,)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert build_model("cnn", "mnist5k")(x).shape == (5, 10)
    assert Generator(64, 10, image=(1, 8, 8)).sample(2, torch.Generator().manual_seed(0))[0].shape == (2, 64)
    with pytest.raises(ValueError, match="sides are multiples of 4, of 100 features; got 1x10x10"):
        Generator(100, 10, image=(1, 10, 10))


def test_generator_learns_inputs_the_ensemble_labels_as_asked():
    torch.manual_seed(0)
    teachers = [linear([[4.0, 0.0], [0.0, 4.0]], [0.0, 0.0]), linear([[3.0, 0.0], [0.0, 3.0]], [0.5, 0.0])]
    gen = Generator(2, 2, image=None)
    rng = torch.Generator().manual_seed(5)

    def agreement() -> float:
        with torch.no_grad():
            x, labels = gen.sample(256, rng)
            return float((teachers[0](x).argmax(1) == labels).float().mean())

    before = agreement()
    start = copy.deepcopy(gen.state_dict())
    loss = train_generator(gen, teachers, steps=150, batch_size=64, learning_rate=0.01, diversity=1.0, seed=3)
    assert agreement() > 0.95 > before
    # The teachers are trainable again, and left in eval mode.
    assert all(p.requires_grad for t in teachers for p in t.parameters())
    assert not any(t.training for t in teachers)
    # The same start and seed fit the same generator, bit for bit.
    again = Generator(2, 2, image=None)
    again.load_state_dict(start)
    assert train_generator(again, teachers, steps=150, batch_size=64, learning_rate=0.01, diversity=1.0, seed=3) == loss
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in gen.state_dict().items())
