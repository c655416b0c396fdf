"""The ClientApp's handlers with differential privacy on (`dp-epsilon` > 0), through the real ClientApp router."""

from functools import cache

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from client_app.app import app
from common.data import builtin_task
from common.models import initial_model, logits_to_record, to_record
from common.protocol import (
    ARRAYS,
    CLIENT_SECONDS,
    CONFIG,
    CONSENSUS,
    DIGEST_EPOCHS,
    DP_EPSILON,
    EVALUATE_INCOMING,
    INDICES,
    LOGITS_DTYPE,
    METRICS,
    MODEL,
    NUM_EXAMPLES,
    PRIVATE_EPOCHS,
    PUBLIC,
    QUERY_LOGITS,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    SOURCE,
    SOURCE_OWN,
    SPLIT,
    TEMPERATURE,
    TRAIN_DIGEST,
    TRAIN_SUPERVISED,
    TRANSFER_EPOCHS,
)

TASK = builtin_task("synthetic").to_config()  # what the ServerApp sends with every message
TEACHER = "mlp-128x64"

# 200 training examples, batches of 50: q = 0.25, 4 steps an epoch. Two-stage's horizon, which its server
# sends as `private-epochs`: 2 teacher and 2 student rounds of 1 epoch, 16 steps, so the budget allows exactly
# four trainings.
DP = {
    "dataset": "synthetic",
    "partitioner": "iid",
    "local-epochs": 1,
    "batch-size": 50,
    "dp-epsilon": 4.0,
}
RATE, STEPS, HORIZON = 0.25, 4, 16


def dp_context(**config):
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 4, **config},
        state=RecordDict(),
        run_config=dict(DP),
    )


@cache
def calibrated() -> float:
    return get_noise_multiplier(
        target_epsilon=4.0, target_delta=1e-5, sample_rate=RATE, steps=HORIZON, accountant="rdp"
    )


@cache
def expected_epsilon(trainings: int) -> float:
    """Opacus's accountant, computed directly for the node's sample rate, steps and calibrated noise."""
    sigma = calibrated()
    accountant = RDPAccountant()
    for _ in range(trainings * STEPS):
        accountant.step(noise_multiplier=sigma, sample_rate=RATE)
    return accountant.get_epsilon(1e-5)


def message(server_round: int = 1) -> Message:
    config = ConfigRecord(
        {SERVER_ROUND: server_round, EVALUATE_INCOMING: True, MODEL: TEACHER, PRIVATE_EPOCHS: 4, **TASK}
    )
    msg = Message(RecordDict({ARRAYS: SENT, CONFIG: config}), dst_node_id=7, message_type=TRAIN_SUPERVISED)
    msg.metadata.__dict__["_message_id"] = f"supervised-{server_round}"
    return msg


def weights(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


SENT = to_record(initial_model(TEACHER, "synthetic", 42))


def test_each_reply_reports_the_epsilon_of_opacus_accountant_and_a_node_at_its_budget_refuses(task_identity):
    context = dp_context()
    for trainings in range(1, 5):
        reply = app(message(trainings), context)
        assert reply.content[METRICS][DP_EPSILON] == pytest.approx(expected_epsilon(trainings), rel=1e-9)
    assert reply.content[METRICS][DP_EPSILON] <= 4.0
    # The local test split is private too: with DP on, no exact counts on it leave the node, nor the training loss
    # on the private batches (unnoised, uncharged); what leaves is the model, its example count, ε and time.
    assert set(reply.content[METRICS]) == {NUM_EXAMPLES, DP_EPSILON, CLIENT_SECONDS}
    with pytest.raises(
        Exception,
        match=r"privacy budget exhausted: 4 more DP-SGD steps .* over run config "
        r"'dp-epsilon' = 4.0 at 'dp-delta' = 1e-05; refused",
    ):
        app(message(5), context)


def test_dp_training_is_reproducible_bit_for_bit_and_noisy(task_identity):
    a = weights(app(message(), dp_context()).content[ARRAYS])
    b = weights(app(message(), dp_context()).content[ARRAYS])
    assert all(torch.equal(a[k], b[k]) for k in a)
    off = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 1, "num-partitions": 4},
        state=RecordDict(),
        run_config={**DP, "dp-epsilon": 0.0},
    )
    plain = app(message(), off).content
    assert DP_EPSILON not in plain[METRICS]
    assert any(not torch.equal(a[k], weights(plain[ARRAYS])[k]) for k in a)


def test_state_dir_keeps_the_spent_budget_across_a_restart_and_a_resumed_run(task_identity, tmp_path):
    app(message(1), dp_context(**{"state-dir": str(tmp_path)}))
    # A restarted SuperNode: empty context.state, the same state-dir.
    reply = app(message(2), dp_context(**{"state-dir": str(tmp_path)}))
    assert reply.content[METRICS][DP_EPSILON] == pytest.approx(expected_epsilon(2), rel=1e-9)
    # A resumed run: a new run id, `resume-from` and `output-dir` changed.
    resumed = dp_context(**{"state-dir": str(tmp_path)})
    resumed.run_id = 2
    resumed.run_config.update({"resume-from": "/runs/a", "output-dir": "/runs"})
    reply = app(message(3), resumed)
    assert reply.content[METRICS][DP_EPSILON] == pytest.approx(expected_epsilon(3), rel=1e-9)


def test_fedmd_charges_its_private_trainings_and_not_its_public_ones(task_identity):
    # FedMD's horizon: the first private training and 2 revisits of 1 epoch, 12 steps. Transfer learning
    # (public data), the digest (public inputs) and the logits on public inputs cost nothing.
    context = dp_context()
    sigma = get_noise_multiplier(target_epsilon=4.0, target_delta=1e-5, sample_rate=RATE, steps=12, accountant="rdp")

    def accountant_after(steps):
        accountant = RDPAccountant()
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=RATE)
        return accountant.get_epsilon(1e-5)

    fedmd = {SPLIT: PUBLIC, INDICES: [0, 1, 2], TRANSFER_EPOCHS: 1, LOGITS_DTYPE: "float32", PRIVATE_EPOCHS: 3}
    query = ConfigRecord({**fedmd, SOURCE: SOURCE_OWN, SERVER_ROUND: 1, **TASK})
    msg = Message(RecordDict({CONFIG: query}), dst_node_id=7, message_type=QUERY_LOGITS)
    msg.metadata.__dict__["_message_id"] = "query"
    assert app(msg, context).content[METRICS][DP_EPSILON] == pytest.approx(accountant_after(4), rel=1e-9)
    digest = ConfigRecord(
        {**fedmd, SERVER_ROUND: 1, REPORT_TEST_LOGITS: False, TEMPERATURE: 3.0, DIGEST_EPOCHS: 1, **TASK}
    )
    msg = Message(
        RecordDict({CONSENSUS: logits_to_record(torch.zeros(3, 10), "float32"), CONFIG: digest}),
        dst_node_id=7,
        message_type=TRAIN_DIGEST,
    )
    msg.metadata.__dict__["_message_id"] = "digest"
    assert app(msg, context).content[METRICS][DP_EPSILON] == pytest.approx(accountant_after(8), rel=1e-9)


def test_a_dp_message_without_the_servers_horizon_is_refused_by_name(task_identity):
    msg = message()
    del msg.content[CONFIG][PRIVATE_EPOCHS]
    with pytest.raises(Exception, match="message config 'private-epochs' is missing with run config 'dp-epsilon' > 0"):
        app(msg, dp_context())
