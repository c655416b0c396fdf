"""The generator-samples benchmark's helpers, on hand-made images and tiny models."""

import torch
from torch import nn

from benchmarks.generator_samples import (
    activation,
    distill,
    mixed,
    shifted,
    total_variation,
    with_batch_norm,
    with_norms,
)
from common.generator import Generator
from common.models import build_model


def test_total_variation_is_zero_for_a_flat_image_and_two_for_a_checkerboard():
    flat = torch.full((1, 16), 0.5)
    board = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float().view(1, 16)
    assert total_variation(flat, 4).item() == 0
    assert total_variation(board, 4).item() == 2


def test_a_shift_moves_each_image_by_at_most_the_limit_and_lets_zeros_in():
    images = torch.zeros(50, 36)
    images[:, 14] = 1.0  # one lit pixel at row 2, column 2 of a 6x6 image
    out = shifted(images, 6, 2, torch.Generator().manual_seed(0))
    assert out.shape == (50, 36) and torch.equal(out.sum(1), torch.ones(50))
    rows, cols = out.view(50, 6, 6).nonzero()[:, 1:].T
    assert rows.min() == 0 and rows.max() == 4 and cols.min() == 0 and cols.max() == 4
    assert len({(r, c) for r, c in zip(rows.tolist(), cols.tolist())}) > 10


def test_mixup_blends_each_input_with_another_of_the_batch():
    x = torch.stack([torch.zeros(3), torch.ones(3)])
    out = mixed(x, torch.Generator().manual_seed(0))
    # Each row is w * itself + (1 - w) * some row: every value of a row is equal and within [0, 1].
    assert out.shape == (2, 3) and torch.all(out == out[:, :1]) and out.min() >= 0 and out.max() <= 1


def test_activation_is_minus_the_mean_absolute_penultimate_feature_over_the_teachers():
    first = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1))
    second = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1))
    with torch.no_grad():
        first[0].weight.copy_(torch.eye(2))
        second[0].weight.copy_(-2 * torch.eye(2))
    x = torch.tensor([[1.0, -3.0]])
    # Features (1, -3) and (-2, 6): mean absolute values 2 and 4.
    assert activation(x, [first, second]).item() == -3.0


def test_the_generator_with_batch_norm_keeps_its_weights_and_normalises_both_feature_maps():
    gen = Generator(784, 10, (1, 28, 28))
    weights = [p.clone() for p in gen.parameters()]
    gen = with_batch_norm(gen)
    norms = [m for m in gen.net if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [64, 32]
    assert all(any(p.shape == w.shape and torch.equal(p, w) for p in gen.parameters()) for w in weights)
    x, labels = gen.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 784) and labels.shape == (8,) and 0 <= x.min() and x.max() <= 1


def test_a_normalisation_layer_follows_each_convolution_and_none_leaves_the_model_as_it_was():
    cnn = build_model("cnn", "mnist5k")
    kinds = {norm: [type(m).__name__ for m in with_norms(cnn, norm)] for norm in ("none", "batch", "group", "instance")}
    assert kinds["none"] == [type(m).__name__ for m in cnn]
    assert (
        kinds["batch"].count("BatchNorm2d") == 2 and kinds["batch"][kinds["batch"].index("Conv2d") + 1] == "BatchNorm2d"
    )
    groups = [m.num_groups for m in with_norms(cnn, "instance") if isinstance(m, nn.GroupNorm)]
    assert groups == [16, 32] and with_norms(cnn, "group")(torch.rand(2, 784)).shape == (2, 10)


def test_distilling_the_head_only_moves_the_last_layer_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [p.clone() for p in model.parameters()]
    targets = torch.tensor([[0.9, 0.1]]).repeat(4, 1)
    distill(
        model,
        lambda step: (torch.rand(4, 3, generator=torch.Generator().manual_seed(step)), targets),
        5,
        head_only=True,
    )
    after = list(model.parameters())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.equal(after[2], before[2]) and not torch.equal(after[3], before[3])
