import math

import pytest
import torch

from common.loss import distillation_loss, diversity_loss

STUDENT = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.5]])
TEACHER = torch.tensor([[1.0, 1.0, 0.0], [-1.0, 2.0, 0.0]])
LABELS = torch.tensor([0, 2])


def hand_kl(student, teacher, t):
    """sum_i p_i (log p_i - log q_i) per row, averaged over rows, written out by hand."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for s, tt in zip(s_row, t_row):
            p, q = math.exp(tt / t) / zt, math.exp(s / t) / zs
            total += p * (math.log(p) - math.log(q))
    return total / len(student)


def hand_ce(student, labels):
    total = 0.0
    for row, y in zip(student.tolist(), labels.tolist()):
        total += -row[y] + math.log(sum(math.exp(v) for v in row))
    return total / len(student)


def test_alpha_one_is_the_t_squared_scaled_kl():
    for t in (1.0, 3.0, 5.0):
        got = distillation_loss(STUDENT, TEACHER, LABELS, temperature=t, alpha=1.0).item()
        assert math.isclose(got, t * t * hand_kl(STUDENT, TEACHER, t), rel_tol=1e-5)


def test_alpha_zero_is_plain_cross_entropy():
    got = distillation_loss(STUDENT, TEACHER, LABELS, temperature=3.0, alpha=0.0).item()
    assert math.isclose(got, hand_ce(STUDENT, LABELS), rel_tol=1e-6)


def test_mix_is_the_weighted_sum():
    t, a = 3.0, 0.3
    got = distillation_loss(STUDENT, TEACHER, LABELS, temperature=t, alpha=a).item()
    expected = a * t * t * hand_kl(STUDENT, TEACHER, t) + (1 - a) * hand_ce(STUDENT, LABELS)
    assert math.isclose(got, expected, rel_tol=1e-5)


def test_identical_logits_have_zero_soft_loss_and_gradients_flow():
    student = TEACHER.clone().requires_grad_(True)
    loss = distillation_loss(student, TEACHER, LABELS, temperature=3.0, alpha=1.0)
    assert abs(loss.item()) < 1e-6
    distillation_loss(student, TEACHER + 1.0 * torch.eye(3)[:2], LABELS, 3.0, 1.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_the_diversity_loss_by_hand():
    noise = torch.tensor([[0.0, 0.0], [1.0, 3.0]])
    features = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 1.0]])
    noise_dist = (1 + 9) / 2  # mean squared difference
    feature_dist = (1 + 0 + 2) / 3  # mean absolute difference
    # Four ordered pairs, two of them a row with itself (distance 0).
    assert diversity_loss(noise, features).item() == pytest.approx(math.exp(-2 * noise_dist * feature_dist / 4))
