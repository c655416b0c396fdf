"""FedAvgM: each group's average applied by Flower's server momentum step, computed by hand; its momentum survives
state() and restore(), one per architecture."""

import numpy as np
import pytest

from server_app.strategies.fedavgm import FedAvgMSettings
from tests.server_app.helpers import drive, round_input, strategy, trained, values, weights

NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn")}
# Momentum 0.9, learning rate 1.0 (the defaults): m_t = 0.9 m_(t-1) + (old - average), new = old - 1.0 m_t.
MOMENTUM = {"fedavgm.server-momentum": 0.9, "fedavgm.server-learning-rate": 1.0}


def answers(by_node: dict):
    return lambda message: by_node.get(message.metadata.dst_node_id)


def step(fedavgm, globals_, by_node, server_round):
    """One round of `fedavgm` from `globals_`, the sampled nodes answering `by_node`; the new models."""
    r = round_input(sorted(by_node), globals_, server_round=server_round)
    result, _, _ = drive(fedavgm.round(r), answers(by_node))
    return result.globals


# Round 1: old (1, 2), average of (0, 0) and (0, 2) = (0, 1): m = (1, 1), new = (0, 1).
ROUND_1 = {1: trained([0.0, 0.0], 5), 2: trained([0.0, 2.0], 5)}
# Round 2: old (0, 1), average (-1, 3): pseudo-gradient (1, -2), m = 0.9 (1, 1) + (1, -2) = (1.9, -1.1),
# new = (0, 1) - (1.9, -1.1) = (-1.9, 2.1).
ROUND_2 = {1: trained([-1.0, 3.0], 1)}


def test_the_defaults_are_momentum_09_and_learning_rate_1():
    assert FedAvgMSettings() == FedAvgMSettings(server_learning_rate=1.0, server_momentum=0.9)


def test_two_rounds_of_one_group_by_hand(task_identity):
    fedavgm = strategy("fedavgm", NODES, **MOMENTUM)
    first = step(fedavgm, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)
    np.testing.assert_allclose(values(first["mlp-32"]), [0.0, 1.0])
    np.testing.assert_allclose(values(fedavgm.state()["momentum/mlp-32"], "0"), [1.0, 1.0])
    second = step(fedavgm, first, ROUND_2, 2)
    np.testing.assert_allclose(values(second["mlp-32"]), [-1.9, 2.1], rtol=1e-6)
    np.testing.assert_allclose(values(fedavgm.state()["momentum/mlp-32"], "0"), [1.9, -1.1], rtol=1e-6)
    # The model keeps the dtype the nodes train in.
    assert second["mlp-32"]["w"].numpy().dtype == np.float32


def test_the_learning_rate_scales_the_step(task_identity):
    fedavgm = strategy("fedavgm", NODES, **{"fedavgm.server-momentum": 0.0, "fedavgm.server-learning-rate": 0.5})
    # No momentum: new = old - 0.5 (old - average) = (1, 2) - 0.5 (1, 1).
    out = step(fedavgm, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)
    np.testing.assert_allclose(values(out["mlp-32"]), [0.5, 1.5])
    assert fedavgm.state() == {}


def test_momentum_restored_from_state_gives_the_same_next_step(task_identity):
    trained_ = strategy("fedavgm", NODES, **MOMENTUM)
    first = step(trained_, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)
    resumed, fresh = strategy("fedavgm", NODES, **MOMENTUM), strategy("fedavgm", NODES, **MOMENTUM)
    resumed.restore(trained_.state())
    expected = values(step(trained_, first, ROUND_2, 2)["mlp-32"])
    assert values(step(resumed, first, ROUND_2, 2)["mlp-32"]) == expected
    # Without its momentum, round 2 is a first step: new = old - (old - average) = (-1, 3).
    np.testing.assert_allclose(values(step(fresh, first, ROUND_2, 2)["mlp-32"]), [-1.0, 3.0])
    assert values(resumed.state()["momentum/mlp-32"], "0") == values(trained_.state()["momentum/mlp-32"], "0")


def test_each_architecture_keeps_its_own_momentum(task_identity):
    fedavgm = strategy("fedavgm", NODES, **MOMENTUM)
    start = {"mlp-32": weights(1.0, 2.0), "cnn": weights(4.0)}
    # Round 1: mlp-32 as above; cnn from 4 to the average 2: m = 2, new = 2.
    first = step(fedavgm, start, {**ROUND_1, 3: trained([2.0], 1)}, 1)
    np.testing.assert_allclose(values(first["cnn"]), [2.0])
    assert sorted(fedavgm.state()) == ["momentum/cnn", "momentum/mlp-32"]
    # Round 2: only mlp-32 replies; cnn's model and momentum stay.
    second = step(fedavgm, first, ROUND_2, 2)
    assert values(second["cnn"]) == [2.0] and values(fedavgm.state()["momentum/cnn"], "0") == [2.0]
    # Round 3: cnn from 2 to the average 1: m = 0.9 x 2 + 1 = 2.8, new = 2 - 2.8 = -0.8; mlp-32's momentum is not
    # mixed in.
    third = step(fedavgm, second, {3: trained([1.0], 1)}, 3)
    np.testing.assert_allclose(values(third["cnn"]), [-0.8], rtol=1e-6)
    np.testing.assert_allclose(values(fedavgm.state()["momentum/mlp-32"], "0"), [1.9, -1.1], rtol=1e-6)


@pytest.mark.parametrize("momentum", [-0.1, 1.0])
def test_a_momentum_outside_0_to_1_is_refused(momentum):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match=r"run config 'fedavgm.server-momentum'"):
        strategy("fedavgm", **{"fedavgm.server-momentum": momentum})
