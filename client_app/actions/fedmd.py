"""FedMD's node side: the node's own model, which never leaves it; its logits on public inputs (query.logits);
train.digest (toward the server's consensus, then on local labels)."""

import time
from functools import partial

import torch
from flwr.app import Message, MetricRecord, RecordDict

from client_app.ledger import budget, privacy_metrics, train_private
from client_app.node import Node, setting
from common.data import load_public, load_server_testset
from common.loss import soft_loss
from common.models import build_model, initial_model, logits_from_record, logits_to_record
from common.protocol import (
    CLIENT_SECONDS,
    CONFIG,
    CONSENSUS,
    DIGEST_EPOCHS,
    DIGEST_LOSS,
    LOGITS_DTYPE,
    METRICS,
    NUM_EXAMPLES,
    REPORT_TEST_LOGITS,
    SERVER_ROUND,
    TEMPERATURE,
    TEST_LOGITS,
    TRAIN_LOSS,
    TRANSFER_EPOCHS,
)
from common.seeds import Stream, derive_seed
from common.training import predict_logits, train

OWN_MODEL = "own-model"  # the own model's key in the node's state and state-dir


def own_model(msg: Message, node: Node) -> torch.nn.Module:
    """The node's own model: created on first use by transfer learning (`transfer-epochs` on the public data,
    then the node's private data), then kept between rounds."""
    cfg = node.cfg
    name = cfg.node_model(node.context.node_config)
    model = build_model(name, node.task)
    if node.restore(OWN_MODEL, model):
        return model
    model = initial_model(name, node.task, derive_seed(cfg.seed, Stream.OWN_MODEL, node.stream))
    if (epochs := int(setting(msg, TRANSFER_EPOCHS))) > 0:
        public = load_public(cfg, node.task)
        seed = derive_seed(cfg.seed, Stream.TRANSFER, node.stream)
        train(model, public.x, (public.y,), **node.train_kwargs(seed, epochs))
    seed = derive_seed(cfg.seed, Stream.OWN_TRAINING, node.stream)
    train_private(node, msg, model, seed, targets=(node.data.train.y,))
    node.keep(OWN_MODEL, model)
    return model


def _server_test_inputs(cfg, task) -> torch.Tensor:
    """The inputs of the server's test set, which FedMD's test logits are computed on (the server scores them)."""
    test = load_server_testset(cfg)
    if test is None:
        raise ValueError("FedMD's test logits need the server's test set on the node; this run has none")
    return test.standardised(task).x


def own_logits(msg: Message, node: Node) -> Message:
    """query.logits from the node's own model, which the server averages into the consensus."""
    return node.logits_reply(msg, own_model(msg, node))


def train_digest(msg: Message, node: Node) -> Message:
    """Digest (distill the own model toward the consensus on its public inputs), then revisit (train on local data)."""
    start = time.perf_counter()
    cfg = node.cfg
    model = own_model(msg, node)
    server_round = int(setting(msg, SERVER_ROUND))
    consensus = logits_from_record(msg.content[CONSENSUS])
    loss = partial(soft_loss, temperature=float(setting(msg, TEMPERATURE)))
    seed = derive_seed(cfg.seed, Stream.DIGEST, server_round, node.stream)
    epochs = int(setting(msg, DIGEST_EPOCHS))
    digest = train(model, node.public_inputs(msg), (consensus,), loss_fn=loss, **node.train_kwargs(seed, epochs))
    seed = derive_seed(cfg.seed, Stream.REVISIT, server_round, node.stream)
    revisit = train_private(node, msg, model, seed, targets=(node.data.train.y,))
    node.keep(OWN_MODEL, model)
    metrics = {
        **node.eval_metrics(model),
        NUM_EXAMPLES: len(node.data.train),
        # Under DP the loss on private batches stays on the node (post-processing covers the model, not it).
        **({TRAIN_LOSS: revisit} if budget(node) == 0 else {}),
        DIGEST_LOSS: digest,
        CLIENT_SECONDS: time.perf_counter() - start,
        **privacy_metrics(node),
    }
    content = RecordDict({METRICS: MetricRecord(metrics)})
    if msg.content[CONFIG].get(REPORT_TEST_LOGITS, False):
        logits = predict_logits(model, _server_test_inputs(cfg, node.task))
        content[TEST_LOGITS] = logits_to_record(logits, str(setting(msg, LOGITS_DTYPE)))
    return Message(content, reply_to=msg)
