"""FedAdam: each group's average applied by Flower's server Adam step (flwr.serverapp.strategy.FedAdam over FedOpt),
computed by hand; its moments survive state() and restore(), one pair per architecture."""

import math

import numpy as np
import pytest

from server_app.strategies.fedadam import FedAdamSettings
from tests.server_app.helpers import Nodes, drive, drive_screened, round_input, strategy, trained, values, weights

NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn")}
ETA, BETA_1, BETA_2, TAU = 0.1, 0.9, 0.99, 0.001
ADAM = {"fedadam.server-learning-rate": ETA, "fedadam.beta-1": BETA_1, "fedadam.beta-2": BETA_2, "fedadam.tau": TAU}


def answers(by_node: dict):
    return lambda message: by_node.get(message.metadata.dst_node_id)


def step(fedadam, globals_, by_node, server_round):
    r = round_input(sorted(by_node), globals_, server_round=server_round)
    result, _, _ = drive(fedadam.round(r), answers(by_node))
    return result.globals


def adam(x, average, m, v, t):
    """Flower's FedAdam step, one coordinate: delta = average - x; m = b1 m + (1 - b1) delta;
    v = b2 v + (1 - b2) delta^2; x + eta sqrt(1 - b2^(t+1)) / (1 - b1^(t+1)) m / (sqrt(v) + tau)."""
    delta = average - x
    m = BETA_1 * m + (1 - BETA_1) * delta
    v = BETA_2 * v + (1 - BETA_2) * delta**2
    eta = ETA * math.sqrt(1 - BETA_2 ** (t + 1)) / (1 - BETA_1 ** (t + 1))
    return x + eta * m / (math.sqrt(v) + TAU), m, v


# Round 1 from (1, 2): the average of (1, 0) and (2, 2) = (1.5, 1).
ROUND_1 = {1: trained([1.0, 0.0], 2), 2: trained([2.0, 2.0], 2)}
ROUND_2 = {1: trained([0.5, 3.0], 1)}


def test_the_defaults():
    assert FedAdamSettings() == FedAdamSettings(server_learning_rate=0.1, beta_1=0.9, beta_2=0.99, tau=0.001)


def test_one_round_by_hand(task_identity):
    fedadam = strategy("fedadam", NODES, **ADAM)
    out = values(step(fedadam, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)["mlp-32"])
    # delta = (0.5, -1): m = (0.05, -0.1), v = (0.0025, 0.01), so m / (sqrt(v) + tau) = (0.05 / 0.051, -0.1 / 0.101),
    # times eta sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.1 sqrt(0.0199) / 0.19 = 0.07425.
    factor = 0.1 * math.sqrt(0.0199) / 0.19
    assert out == pytest.approx([1 + factor * 0.05 / 0.051, 2 - factor * 0.1 / 0.101], rel=1e-6)
    assert out == pytest.approx([adam(1.0, 1.5, 0, 0, 1)[0], adam(2.0, 1.0, 0, 0, 1)[0]], rel=1e-6)
    state = fedadam.state()
    assert sorted(state) == ["m_t/mlp-32", "v_t/mlp-32"]
    assert values(state["m_t/mlp-32"]) == pytest.approx([0.05, -0.1])
    assert values(state["v_t/mlp-32"]) == pytest.approx([0.0025, 0.01])


def test_two_rounds_by_hand(task_identity):
    fedadam = strategy("fedadam", NODES, **ADAM)
    first = step(fedadam, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)
    second = values(step(fedadam, first, ROUND_2, 2)["mlp-32"])
    want = []
    for x0, avg1, avg2 in ((1.0, 1.5, 0.5), (2.0, 1.0, 3.0)):
        x1, m, v = adam(x0, avg1, 0.0, 0.0, 1)
        want.append(adam(x1, avg2, m, v, 2)[0])
    assert second == pytest.approx(want, rel=1e-5)


def test_moments_restored_from_state_give_the_same_next_step(task_identity):
    trained_ = strategy("fedadam", NODES, **ADAM)
    first = step(trained_, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)
    resumed, fresh = strategy("fedadam", NODES, **ADAM), strategy("fedadam", NODES, **ADAM)
    resumed.restore(trained_.state())
    for key, record in trained_.state().items():
        assert values(resumed.state()[key]) == values(record)
    expected = values(step(trained_, first, ROUND_2, 2)["mlp-32"])
    assert values(step(resumed, first, ROUND_2, 2)["mlp-32"]) == expected
    # Moments from zero give another step.
    assert values(step(fresh, first, ROUND_2, 2)["mlp-32"]) != pytest.approx(expected)


def test_each_architecture_keeps_its_own_moments(task_identity):
    fedadam = strategy("fedadam", NODES, **ADAM)
    start = {"mlp-32": weights(1.0, 2.0), "cnn": weights(4.0)}
    first = step(fedadam, start, {**ROUND_1, 3: trained([2.0], 1)}, 1)
    x1, m, v = adam(4.0, 2.0, 0.0, 0.0, 1)
    assert values(first["cnn"]) == pytest.approx([x1], rel=1e-6)
    assert sorted(fedadam.state()) == ["m_t/cnn", "m_t/mlp-32", "v_t/cnn", "v_t/mlp-32"]
    # Round 2: mlp-32 alone; cnn's model and moments stay.
    second = step(fedadam, first, ROUND_2, 2)
    assert values(second["cnn"]) == values(first["cnn"])
    assert values(fedadam.state()["m_t/cnn"]) == pytest.approx([m]) and values(fedadam.state()["v_t/cnn"]) == (
        pytest.approx([v])
    )
    # Round 3: cnn's step from its own moments of round 1.
    third = step(fedadam, second, {3: trained([1.0], 1)}, 3)
    assert values(third["cnn"]) == pytest.approx([adam(x1, 1.0, m, v, 3)[0]], rel=1e-5)


def test_the_model_keeps_the_dtype_nodes_train_in_so_their_round_2_replies_are_accepted(task_identity):
    # Flower's FedAdam computes in float64 under NumPy 2; a float64 model would have every float32 reply rejected.
    fedadam = strategy("fedadam", NODES, **ADAM)
    first = step(fedadam, {"mlp-32": weights(1.0, 2.0)}, ROUND_1, 1)
    _, trace, _ = drive_screened(
        fedadam.round(round_input([1], first, server_round=2)), answers(ROUND_2), Nodes(NODES), [1]
    )
    assert trace.rejected == [] and trace.accepted == [1]
    assert first["mlp-32"]["w"].numpy().dtype == np.float32
