"""client_app.ledger: the DP ledger, calibrated once, charged by private training, kept in state and state-dir."""

import json

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_app.ledger import PRIVACY, budget, privacy_metrics, train_private
from client_app.node import Node
from common.models import initial_model
from common.privacy import noise_multiplier, spent_epsilon
from common.protocol import CONFIG, DP_EPSILON, PRIVATE_EPOCHS
from common.training import train

# 200 training examples in batches of 50: sample rate 0.25, 4 steps an epoch.
DP = {"dataset": "synthetic", "partitioner": "iid", "local-epochs": 1, "batch-size": 50, "dp-epsilon": 4.0}


def node(run_config=DP, **node_config) -> Node:
    config = {"partition-id": 1, "num-partitions": 4, **node_config}
    return Node.load(Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config=dict(run_config)))


def message(private_epochs: int) -> Message:
    config = ConfigRecord({PRIVATE_EPOCHS: private_epochs})
    return Message(RecordDict({CONFIG: config}), dst_node_id=7, message_type="train.supervised")


def held(n: Node) -> dict:
    return json.loads(str(n.context.state[PRIVACY][PRIVACY]))


def test_without_dp_private_training_is_plain_training_and_keeps_no_ledger(task_identity):
    plain = node({**DP, "dp-epsilon": 0.0})
    a, b = initial_model("mlp-32", "synthetic", 1), initial_model("mlp-32", "synthetic", 1)
    loss = train_private(plain, message(4), a, 9, targets=(plain.data.train.y,))
    assert loss == train(b, plain.data.train.x, (plain.data.train.y,), **plain.train_kwargs(9))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert PRIVACY not in plain.context.state.config_records and privacy_metrics(plain) == {}


def test_the_noise_is_calibrated_once_to_the_horizon_the_first_message_sends(task_identity):
    n = node()
    assert privacy_metrics(n) == {DP_EPSILON: 0.0}
    train_private(n, message(4), initial_model("mlp-32", "synthetic", 1), 9, targets=(n.data.train.y,))
    sigma = noise_multiplier(4.0, 1e-5, 0.25, 16)
    assert held(n) == {"noise_multiplier": sigma, "history": [[sigma, 0.25, 4]]}
    # A later horizon does not recalibrate: the noise was fixed when the node started spending.
    train_private(n, message(8), initial_model("mlp-32", "synthetic", 1), 10, 2, targets=(n.data.train.y,))
    assert held(n) == {"noise_multiplier": sigma, "history": [[sigma, 0.25, 4], [sigma, 0.25, 8]]}
    spent = spent_epsilon([(sigma, 0.25, 4), (sigma, 0.25, 8)], 1e-5)
    assert privacy_metrics(n) == {DP_EPSILON: spent} and 0 < spent <= 4.0


def test_a_training_past_the_budget_is_refused_and_charges_nothing(task_identity):
    n = node()
    model = initial_model("mlp-32", "synthetic", 1)
    train_private(n, message(1), model, 9, targets=(n.data.train.y,))
    before = held(n)
    with pytest.raises(Exception, match="privacy budget exhausted"):
        train_private(n, message(1), model, 10, targets=(n.data.train.y,))
    assert held(n) == before


def test_the_state_dir_keeps_one_ledger_per_dataset_of_the_node_whatever_the_run(task_identity, tmp_path):
    first = node(**{"state-dir": str(tmp_path)})
    train_private(first, message(4), initial_model("mlp-32", "synthetic", 1), 9, targets=(first.data.train.y,))
    [saved] = tmp_path.glob("privacy-*.json")
    assert json.loads(saved.read_text()) == held(first)
    spent = privacy_metrics(first)[DP_EPSILON]
    assert spent > 0
    # A resumed run, another seed or learning rate: the same data, the same ledger; a new seed does not reset it.
    for run_config in ({**DP, "resume-from": "/runs/a"}, {**DP, "seed": 7}, {**DP, "learning-rate": 0.5}):
        assert privacy_metrics(node(run_config, **{"state-dir": str(tmp_path)})) == {DP_EPSILON: spent}
    # Other data (another partition, or a named node's file) has a ledger of its own.
    other = node(**{"state-dir": str(tmp_path), "partition-id": 2})
    assert privacy_metrics(other) == {DP_EPSILON: 0.0}


def test_the_operators_ceiling_caps_the_runs_budget_and_refuses_a_run_without_dp(task_identity):
    capped = node(**{"dp-max-epsilon": 1.0})
    assert budget(capped) == 1.0 and budget(node(**{"dp-max-epsilon": 9.0})) == 4.0
    train_private(capped, message(4), initial_model("mlp-32", "synthetic", 1), 9, targets=(capped.data.train.y,))
    # Calibrated to spend 1.0, not the server's 4.0, over the horizon: one epoch of four spends about a quarter.
    assert 0 < privacy_metrics(capped)[DP_EPSILON] <= 1.0
    plain = node({**DP, "dp-epsilon": 0.0}, **{"dp-max-epsilon": 1.0})
    with pytest.raises(ValueError, match=r"'dp-max-epsilon' = 1.0: this node's data leaves it only under"):
        train_private(plain, message(4), initial_model("mlp-32", "synthetic", 1), 9, targets=(plain.data.train.y,))
    with pytest.raises(ValueError, match="'dp-max-epsilon' = 'lots'; allowed: a finite number above 0"):
        budget(node(**{"dp-max-epsilon": "lots"}))


@pytest.mark.parametrize("epochs", [0, -2, True, 10**7, 2.5])
def test_a_server_sent_horizon_out_of_range_is_refused(task_identity, epochs):
    n = node()
    with pytest.raises(ValueError, match=rf"'private-epochs' = {epochs!r}; allowed: 1 to 1000000"):
        train_private(n, message(epochs), initial_model("mlp-32", "synthetic", 1), 9, targets=(n.data.train.y,))


def test_a_batch_norm_model_is_refused_under_dp_before_anything_is_charged(task_identity, tmp_path):
    from common.models import build_model

    n = node(**{"state-dir": str(tmp_path)})
    with pytest.raises(ValueError, match=r"^dp-epsilon = 4.0: it has batch norm"):
        train_private(n, message(4), build_model("resnet-8", "mnist5k"), seed=1)
    assert PRIVACY not in n.context.state.config_records and not list(tmp_path.rglob("privacy-*.json"))
