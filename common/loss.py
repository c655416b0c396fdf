"""Hinton et al. (2015) distillation losses, and the diversity loss of data-free generators."""

import torch
import torch.nn.functional as F


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the soft-target gradients on the scale of hard-label ones.
    """
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha * soft_loss + (1 - alpha) * CE(student, labels)."""
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard


def diversity_loss(noise: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """exp(-mean_ij(d_noise(i, j) * d_features(i, j))) with d_noise the mean squared and d_features the mean
    absolute difference of rows i and j (every pair, i = j too), as FedGen's authors' code has it: small when
    samples of different noise differ, so a generator does not collapse to one output per class."""
    noise_dist = (noise[:, None, :] - noise[None, :, :]).pow(2).mean(2)
    feature_dist = (features[:, None, :] - features[None, :, :]).abs().mean(2)
    return torch.exp(-(noise_dist * feature_dist).mean())
