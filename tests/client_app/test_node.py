"""client_app.node: the node loaded from its context, its kept models, the message's settings."""

import zlib

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client_app.node import Node, identity, setting
from common.config import parse_run_config
from common.data import builtin_task, load_client_data, load_node_file
from common.models import initial_model
from common.protocol import CONFIG, DATA_ERROR, EVAL_CORRECT, EVAL_EXAMPLES, EVAL_LOSS_SUM, MODEL, NAME, TEMPERATURE
from common.task import INPUT_SHAPE, TaskError
from common.training import evaluate

RUN_CONFIG = {"dataset": "synthetic", "partitioner": "iid"}
TASK = builtin_task("synthetic").to_config()
CFG = parse_run_config(RUN_CONFIG)


def context(run_config=RUN_CONFIG, **node_config) -> Context:
    return Context(run_id=3, node_id=7, node_config=node_config, state=RecordDict(), run_config=dict(run_config))


def test_a_partition_node_is_keyed_by_its_partition_and_holds_that_partition():
    node = Node.load(context(**{"partition-id": 2, "num-partitions": 4}))
    expected = load_client_data(CFG, 2, 4)
    assert node.stream == 2 and node.cfg == CFG
    assert torch.equal(node.data.train.x, expected.train.x) and torch.equal(node.data.test.y, expected.test.y)


def test_a_data_file_node_is_keyed_by_a_checksum_of_its_name(tmp_path):
    path = tmp_path / "node.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(50, 32)).astype(np.float32), y=rng.integers(0, 10, 50))
    node = Node.load(context(**{"data-path": str(path), "name": "hospital-a"}))
    assert node.stream == zlib.crc32(b"hospital-a")
    assert torch.equal(node.data.test.x, load_node_file(str(path), CFG, zlib.crc32(b"hospital-a")).test.x)
    assert len(node.data.train) == 40 and len(node.data.test) == 10


def test_a_data_file_that_does_not_fit_the_messages_task_is_refused_naming_both(tmp_path, task_identity):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 32), dtype=np.float32), y=np.array([0, 1, 2, 99]))
    node = context(**{"data-path": str(tmp_path / "bad.npz"), "name": "clinic"})
    msg = Message(RecordDict({CONFIG: ConfigRecord(TASK)}), dst_node_id=7, message_type="train.supervised")
    with pytest.raises(TaskError, match=r"node 'clinic''s data holds labels 0..99; the run's task has 10 classes"):
        Node.load(node, msg)
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 3, 5, 5), dtype=np.float32), y=np.array([0, 1, 2, 3]))
    with pytest.raises(TaskError, match=r"holds examples of shape \(3, 5, 5\); the run's task has \(32,\)"):
        Node.load(node, msg)
    # The identify reply reports the shape instead, for the server to refuse the node by name.
    assert identity(node)[INPUT_SHAPE] == [3, 5, 5]


@pytest.mark.parametrize(
    "config, expected",
    [
        ({}, "node config 'partition-id' is missing; start the SuperNode with --node-config"),
        ({"partition-id": "abc", "num-partitions": 4}, "node config 'partition-id' = 'abc'; allowed: a whole number"),
        ({"partition-id": 1.5, "num-partitions": 4}, "node config 'partition-id' = 1.5; allowed: a whole number"),
        ({"partition-id": True, "num-partitions": 4}, "node config 'partition-id' = True; allowed: a whole number"),
        ({"partition-id": 0, "num-partitions": 0}, "node config 'num-partitions' = 0; allowed: 1 or more"),
        ({"partition-id": 0}, "node config 'num-partitions' is missing"),
    ],
)
def test_malformed_node_config_is_refused_with_what_is_allowed(config, expected):
    with pytest.raises(ValueError) as refused:
        Node.load(context(**config))
    assert str(refused.value).startswith(expected)


def test_identity_names_the_node_by_its_name_its_file_or_its_partition():
    reported = dict(identity(context(**{"partition-id": 1})))
    assert {k: reported[k] for k in (NAME, MODEL)} == {NAME: "partition-1", MODEL: "mlp-32"}
    # A node whose data cannot be read says why, rather than failing to answer.
    assert "node config 'num-partitions' is missing" in reported[DATA_ERROR]
    assert identity(context(**{"data-path": "/data/a.npz"}))[NAME] == "/data/a.npz"
    assert identity(context(**{"data-path": "/data/a.npz"}))[DATA_ERROR].endswith("does not exist")
    assert identity(context(**{"data-path": "/data/a.npz", "name": "hospital-a"}))[NAME] == "hospital-a"
    assert identity(context())[NAME] == "node-7"


def test_kept_models_come_back_from_the_state_dir_after_a_restart(tmp_path):
    node = Node.load(context(**{"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path)}))
    kept = initial_model("mlp-32", "synthetic", 5)
    node.keep("some-model", kept)
    assert (tmp_path / "run-3" / "some-model.pt").is_file()
    restarted = Node.load(context(**{"partition-id": 0, "num-partitions": 2, "state-dir": str(tmp_path)}))
    model = initial_model("mlp-32", "synthetic", 6)
    assert restarted.restore("some-model", model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), kept.state_dict().values()))
    # Restored into the state, for the next message of this run.
    assert "some-model" in restarted.context.state.array_records
    assert not restarted.restore("other-model", model)


def test_without_a_state_dir_models_live_in_the_state_alone(tmp_path):
    node = Node.load(context(**{"partition-id": 0, "num-partitions": 2}))
    node.keep("some-model", initial_model("mlp-32", "synthetic", 5))
    assert list(node.context.state.array_records) == ["some-model"]
    fresh = Node.load(context(**{"partition-id": 0, "num-partitions": 2}))
    assert not fresh.restore("some-model", initial_model("mlp-32", "synthetic", 6))


def test_eval_metrics_are_sums_on_the_local_test_split_and_none_with_dp():
    model = initial_model("mlp-32", "synthetic", 5)
    node = Node.load(context(**{"partition-id": 0, "num-partitions": 2}))
    loss, correct = evaluate(model, node.data.test.x, node.data.test.y)
    n = len(node.data.test)
    assert node.eval_metrics(model) == {EVAL_EXAMPLES: n, EVAL_CORRECT: correct, EVAL_LOSS_SUM: loss * n}
    private = Node.load(context({**RUN_CONFIG, "dp-epsilon": 1.0}, **{"partition-id": 0, "num-partitions": 2}))
    assert private.eval_metrics(model) == {}


def test_setting_reads_the_message_config_and_names_what_is_missing(task_identity):
    msg = Message(RecordDict({CONFIG: ConfigRecord({TEMPERATURE: 2.5})}), dst_node_id=7, message_type="train.distill")
    assert setting(msg, TEMPERATURE) == 2.5
    with pytest.raises(ValueError) as refused:
        setting(msg, "alpha")
    assert str(refused.value) == (
        "message config 'alpha' is missing from train.distill: the ServerApp sends it; "
        "it must run the same fedkd version as this node"
    )
