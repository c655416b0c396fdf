"""FedGen's generator: its objective against a hand computation, its weights per width, its training."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.feature_generator import (
    NOISE_DIM,
    FeatureGenerator,
    draw,
    generator_loss,
    head,
    label_weights,
    regularised_loss,
    train_feature_generator,
)
from common.models import build_model
from common.training import train


def linear(weight, bias):
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def constant_generator(features):
    """A generator of width len(features) whose every output is `features` (body and weights zero)."""
    gen = FeatureGenerator(num_classes=2, widths=[len(features)], seed=0)
    with torch.no_grad():
        for p in gen.parameters():
            p.zero_()
        gen.heads[str(len(features))].bias.copy_(torch.tensor(features))
    return gen


def test_the_objective_weights_each_clients_cross_entropy_by_its_share_of_the_class_by_hand():
    gen = constant_generator([1.0, 2.0])
    # Client 1 reads the features as logits [1, 2], client 2 as [2, 1].
    heads = [linear([[1, 0], [0, 1]], [0, 0]), linear([[0, 1], [1, 0]], [0, 0])]
    weights, labels = label_weights(torch.tensor([[3, 1], [1, 3]]))
    assert weights.tolist() == [[0.75, 0.25], [0.25, 0.75]] and labels == [0, 1]
    y = torch.tensor([0, 1])
    noise = torch.randn(2, NOISE_DIM, generator=torch.Generator().manual_seed(0))
    big, small = math.log(1 + math.e), math.log(1 + 1 / math.e)  # CE of the lower and the higher logit
    client1 = (0.75 * big + 0.25 * small) / 2
    client2 = (0.25 * small + 0.75 * big) / 2
    # Every sample has the same features: the diversity loss is exp(0) = 1, times its weight 0.5.
    assert generator_loss(gen, heads, weights, noise, y, diversity=0.5).item() == pytest.approx(
        client1 + client2 + 0.5, rel=1e-6
    )


def test_label_weights_skip_classes_no_client_holds_more_than_one_example_of():
    weights, labels = label_weights(torch.tensor([[5, 1, 0, 0], [0, 1, 2, 0]]))
    assert labels == [0, 2]
    assert weights.tolist() == [[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 0.0]]


def test_each_widths_output_layer_depends_on_the_seed_and_width_not_the_order_widths_came_in():
    a = FeatureGenerator(10, [32, 128], seed=7)
    b = FeatureGenerator(10, [128], seed=7)
    b.add_width(32)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(FeatureGenerator(10, [32], seed=8).heads["32"].weight, a.heads["32"].weight)
    assert sorted(a.for_width(32)) == ["body.0.bias", "body.0.weight", "heads.32.bias", "heads.32.weight"]
    out = a(*draw([3, 4], 5, torch.Generator().manual_seed(0)))
    assert {w: tuple(f.shape) for w, f in out.items()} == {32: (5, 32), 128: (5, 128)}
    assert min(f.min().item() for f in out.values()) >= 0  # post-ReLU, as the features a head sees


def test_the_generator_learns_features_each_clients_head_assigns_to_the_classes_it_holds():
    torch.manual_seed(0)
    x = torch.randn(400, 32)
    y = (x[:, :2].sum(1) > 0).long() + 2 * (x[:, 2] > 0).long()  # 4 classes
    models = [build_model("mlp-32", "synthetic"), build_model("mlp-128x64", "synthetic")]
    for m in models:
        train(m, x, (y,), epochs=5, batch_size=32, learning_rate=0.01, seed=0)
    heads = [head(m) for m in models]
    # Client 1 holds classes 0 and 1, client 2 classes 2 and 3.
    counts = torch.tensor([[100, 100, 0, 0] + [0] * 6, [0, 0, 100, 100] + [0] * 6])
    gen = FeatureGenerator(10, [], seed=3)

    def hits():
        noise, labels = draw([0, 1, 2, 3], 400, torch.Generator().manual_seed(9))
        features = gen(noise, labels)
        owner = (labels >= 2).long()
        return sum(
            int(heads[o](features[heads[o].in_features][i]).argmax() == labels[i]) for i, o in enumerate(owner.tolist())
        )

    assert gen.widths == []
    loss, labels = train_feature_generator(
        gen, heads, counts, steps=200, batch_size=32, learning_rate=0.01, diversity=1.0, seed=5
    )
    assert gen.widths == [32, 64] and labels == [0, 1, 2, 3]
    assert hits() > 0.95 * 400 and loss < 1.5


def test_the_clients_loss_is_cross_entropy_plus_its_decayed_generator_terms():
    model = build_model("mlp-32", "synthetic")
    gen = FeatureGenerator(10, [32], seed=1)
    logits, y = torch.randn(8, 10), torch.randint(10, (8,))
    plain = F.cross_entropy(logits, y).item()
    assert regularised_loss(model, gen, [0, 1], alpha=0, beta=0, server_round=2, seed=0)(
        logits, y
    ).item() == pytest.approx(plain)
    with_alpha = regularised_loss(model, gen, [0, 1], alpha=1, beta=0, server_round=1, seed=0)(logits, y).item() - plain
    decayed = regularised_loss(model, gen, [0, 1], alpha=1, beta=0, server_round=11, seed=0)(logits, y).item() - plain
    assert with_alpha > 0 and decayed == pytest.approx(with_alpha * 0.98**10, rel=1e-5)
    # The generated features train the head alone: the layers below it get no gradient from them.
    regularised_loss(model, gen, [0, 1], alpha=1, beta=0, server_round=1, seed=0)(logits, y).backward()
    assert head(model).weight.grad.abs().sum() > 0 and model[0].weight.grad is None
