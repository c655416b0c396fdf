"""Factories for the model zoo's tests: model names "tests.common.model_factories:<name>"."""

import math

from torch import nn

NOT_CALLABLE = 3


def tiny(input_shape, num_classes):
    """A linear model on the flattened input: an nn.Sequential ending in its head."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


class Net(nn.Module):
    """A model that is no nn.Sequential: its head, `fc`, is its last child module."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 8), nn.ReLU())
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        assert x.shape[1:] == self.shape, "the model gets its batch as (batch, *input_shape)"
        return self.fc(self.body(x))


def net(input_shape, num_classes):
    model = Net(input_shape, num_classes)
    model.shape = tuple(input_shape)
    model.body.eval()  # a part the user keeps in eval mode, which the build's check must leave so
    return model


class Misordered(Net):
    """Its last child is a linear layer, but not the one that gives its output."""

    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes)
        self.shape = tuple(input_shape)
        self.unused = nn.Linear(num_classes, num_classes)


def misordered(input_shape, num_classes):
    return Misordered(input_shape, num_classes)


def no_head(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes), nn.LogSoftmax(dim=1))


def wrong_classes(input_shape, num_classes):
    return tiny(input_shape, num_classes + 1)


def not_a_module(input_shape, num_classes):
    return tiny(input_shape, num_classes).state_dict()


def raises(input_shape, num_classes):
    raise RuntimeError("no GPU here")


def bad_forward(input_shape, num_classes):
    return nn.Linear(5, num_classes)


class Pair(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        return logits, logits


def pair(input_shape, num_classes):
    return Pair(input_shape, num_classes)
