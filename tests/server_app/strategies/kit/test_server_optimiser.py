"""A Flower strategy's server step applied to one averaged record: the step alone acts, in the model's dtypes."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as flower

from server_app.strategies.kit.server_optimiser import flower_step
from tests.server_app.helpers import values, weights


def test_without_a_server_optimiser_the_step_is_the_average(task_identity):
    plain = flower.FedAvgM(server_learning_rate=1.0, server_momentum=0.0)
    plain.current_arrays = weights(1.0, 2.0)
    assert values(flower_step(plain, weights(1.0, 2.0), weights(0.5, 4.0), 1)) == [0.5, 4.0]


def test_the_step_keeps_each_arrays_dtype_and_key_order(task_identity):
    base = ArrayRecord({"w": Array(np.array([1.0, 2.0], dtype=np.float32)), "b": Array(np.array([0.5]))})
    averaged = ArrayRecord({"w": Array(np.array([1.5, 1.0], dtype=np.float32)), "b": Array(np.array([1.5]))})
    adam = flower.FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=0.001)
    adam.current_arrays = {key: array.numpy() for key, array in base.items()}
    out = flower_step(adam, base, averaged, 1)
    assert list(out.keys()) == ["w", "b"]
    assert (out["w"].numpy().dtype, out["b"].numpy().dtype) == (np.float32, np.float64)
    # Flower's step itself: x + eta sqrt(1 - 0.99^2) / (1 - 0.9^2) x 0.1 delta / (sqrt(0.01 delta^2) + 0.001), with
    # delta = (0.5, -1) for w and 1 for b.
    eta = 0.1 * np.sqrt(0.0199) / 0.19
    assert values(out, "b") == pytest.approx([0.5 + eta * 0.1 / 0.101])
    assert values(out) == pytest.approx([1 + eta * 0.05 / 0.051, 2 - eta * 0.1 / 0.101], rel=1e-6)
