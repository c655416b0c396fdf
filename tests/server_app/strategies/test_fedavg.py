"""FedAvg's round driven by hand: what it sends each sampled node, how it screens and averages the replies; FedProx's
proximal term travels with the training config."""

import numpy as np
import pytest

from common.models import initial_model, to_record
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVALUATE_INCOMING,
    MODEL,
    PROXIMAL_MU,
    SERVER_ROUND,
    TRAIN_LOSS,
    TRAIN_SUPERVISED,
)
from tests.server_app.helpers import Nodes, drive, drive_screened, round_input, strategy, trained, values, weights

NODES = {1: ("a", "mlp-32"), 2: ("b", "mlp-32"), 3: ("c", "cnn")}


def answers(by_node: dict):
    return lambda message: by_node.get(message.metadata.dst_node_id)


def test_each_sampled_node_gets_its_groups_model_to_train(task_identity):
    fedavg = strategy("fedavg", NODES)
    start = {"mlp-32": weights(0, 0), "cnn": weights(9, 9, 9)}
    steps = fedavg.round(round_input([3, 1], start, server_round=2))
    _, (ask,), _ = drive(steps, answers({}))
    assert [m.metadata.dst_node_id for m in ask.messages] == [3, 1]
    assert all(m.metadata.message_type == TRAIN_SUPERVISED for m in ask.messages)
    assert [values(m.content[ARRAYS]) for m in ask.messages] == [[9, 9, 9], [0, 0]]
    assert [dict(m.content[CONFIG]) for m in ask.messages] == [
        {SERVER_ROUND: 2, EVALUATE_INCOMING: True, MODEL: "cnn"},
        {SERVER_ROUND: 2, EVALUATE_INCOMING: True, MODEL: "mlp-32"},
    ]
    assert ask.answers_round and ask.label == "reply" and len(ask.checks) == 2
    # Round 1's models are the seeded ones, which no node has scored: nothing to evaluate on arrival.
    _, (first,), _ = drive(fedavg.round(round_input([1], start)), answers({}))
    assert first.messages[0].content[CONFIG][EVALUATE_INCOMING] is False


def test_the_groups_are_averaged_and_the_round_reports_the_replies_metrics(task_identity):
    fedavg = strategy("fedavg", NODES)
    start = {"mlp-32": weights(0, 0), "cnn": weights(9, 9, 9)}
    result, _, _ = drive(
        fedavg.round(round_input([1, 2, 3], start, server_round=2)),
        answers(
            {
                1: trained([1.0, 2.0], 100, **{TRAIN_LOSS: 1.0}),
                2: trained([3.0, 6.0], 300, **{TRAIN_LOSS: 2.0}),
                3: trained([1.0, 1.0, 1.0], 7, **{TRAIN_LOSS: 0.5}),
            }
        ),
    )
    np.testing.assert_allclose(values(result.globals["mlp-32"]), [2.5, 5.0])
    np.testing.assert_allclose(values(result.globals["cnn"]), [1.0, 1.0, 1.0])
    assert result.metrics == {"clipped-updates": 0, "train-loss": pytest.approx((100 + 600 + 3.5) / 407)}
    assert result.scores is None and result.scores_previous


def test_a_round_with_no_usable_reply_keeps_the_models(task_identity):
    fedavg = strategy("fedavg", NODES)
    start = {"mlp-32": weights(0, 0)}
    result, _, _ = drive(fedavg.round(round_input([1, 2], start)), answers({}))
    assert values(result.globals["mlp-32"]) == [0.0, 0.0] and result.metrics == {"clipped-updates": 0}


def test_the_clip_norm_of_the_run_config_bounds_each_update(task_identity):
    fedavg = strategy("fedavg", NODES, **{"clip-norm": 1.0})
    result, _, _ = drive(
        fedavg.round(round_input([1, 2], {"mlp-32": weights(0, 0)})),
        answers({1: trained([3.0, 4.0], 10), 2: trained([0.6, 0.0], 10)}),
    )
    np.testing.assert_allclose(values(result.globals["mlp-32"]), [0.6, 0.4], rtol=1e-6)
    assert result.metrics["clipped-updates"] == 1


def test_a_node_of_an_architecture_without_a_group_trains_its_seeded_model(task_identity):
    fedavg = strategy("fedavg", NODES, seed=3)
    seeded = to_record(initial_model("cnn", "digits", 3))
    result, (ask,), _ = drive(fedavg.round(round_input([1, 3], {"mlp-32": weights(0, 0)})), answers({}))
    sent = ask.messages[1].content[ARRAYS]
    assert list(sent.keys()) == list(seeded.keys())
    assert all(np.array_equal(sent[k].numpy(), seeded[k].numpy()) for k in seeded.keys())
    assert list(result.globals) == ["mlp-32", "cnn"]


def test_each_reply_is_checked_against_its_own_groups_model(task_identity):
    fedavg = strategy("fedavg", NODES, **{"max-num-examples": 50})
    start = {"mlp-32": weights(0, 0), "cnn": weights(9, 9, 9)}
    result, trace, _ = drive_screened(
        fedavg.round(round_input([1, 2, 3], start)),
        answers(
            {
                1: trained([1.0, 1.0, 1.0], 10),  # the cnn's shape
                2: trained([2.0, 4.0], 60),  # more examples than allowed
                3: trained([3.0, 3.0, 3.0], 10),
            }
        ),
        Nodes(NODES),
        [1, 2, 3],
    )
    assert [(f.node, f.reason) for f in trace.rejected] == [
        (1, "reply rejected: 'w' is float32[3], expected float32[2]"),
        (2, "reply rejected: num-examples = 60; allowed: 1 to 50"),
    ]
    assert trace.accepted == [3]
    assert values(result.globals["mlp-32"]) == [0.0, 0.0] and values(result.globals["cnn"]) == [3.0, 3.0, 3.0]


def test_fedprox_sends_its_proximal_mu_and_averages_as_fedavg(task_identity):
    fedprox = strategy("fedprox", NODES, **{"fedprox.proximal-mu": 0.25})
    result, (ask,), _ = drive(
        fedprox.round(round_input([1, 2], {"mlp-32": weights(0, 0)})),
        answers({1: trained([1.0, 2.0], 1), 2: trained([3.0, 4.0], 3)}),
    )
    assert [m.content[CONFIG][PROXIMAL_MU] for m in ask.messages] == [0.25, 0.25]
    np.testing.assert_allclose(values(result.globals["mlp-32"]), [2.5, 3.5])
    _, (plain,), _ = drive(strategy("fedavg", NODES).round(round_input([1], {"mlp-32": weights(0, 0)})), answers({}))
    assert PROXIMAL_MU not in plain.messages[0].content[CONFIG]
