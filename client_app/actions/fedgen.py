"""train.fedgen: FedGen's node side, train.supervised regularised by the server's generator, with label counts."""

from functools import partial

import torch
from flwr.app import Message

from client_app.ledger import budget
from client_app.node import Node, setting
from common.feature_generator import FeatureGenerator, feature_width, regularised_loss
from common.privacy import not_covered
from common.protocol import (
    GENERATOR,
    GENERATOR_ALPHA,
    GENERATOR_BETA,
    GENERATOR_LABELS,
    LABEL_COUNTS,
    METRICS,
    MODEL,
    SERVER_ROUND,
)
from common.seeds import Stream, derive_seed


def train_fedgen(msg: Message, node: Node) -> Message:
    """Train the sent global model on local labels, regularised by the generator once the server sends it; the
    reply counts the node's examples of each class, which the server fits the generator to."""
    cfg = node.cfg
    if (epsilon := budget(node)) > 0:
        raise ValueError(not_covered("fedgen", "reports each node's label counts in the clear", epsilon))
    num_classes = node.task.num_classes
    loss = None
    if GENERATOR in msg.content.array_records:
        gen = FeatureGenerator(num_classes, [feature_width(str(setting(msg, MODEL)), node.task)], cfg.seed)
        gen.load_state_dict(msg.content[GENERATOR].to_torch_state_dict(), strict=True)
        server_round = int(setting(msg, SERVER_ROUND))
        # The loss reads the head of the model that node.fit trains, so node.fit builds it for that model.
        loss = partial(
            regularised_loss,
            gen=gen,
            labels=list(setting(msg, GENERATOR_LABELS)),
            alpha=float(setting(msg, GENERATOR_ALPHA)),
            beta=float(setting(msg, GENERATOR_BETA)),
            server_round=server_round,
            seed=derive_seed(cfg.seed, Stream.FEDGEN_SAMPLES, server_round, node.stream),
        )
    reply = node.fit(msg, targets=(node.data.train.y,), model_loss=loss)
    counts = torch.bincount(node.data.train.y, minlength=num_classes)
    reply.content[METRICS][LABEL_COUNTS] = [int(c) for c in counts]
    return reply
