"""Two-stage's node side: the local teacher (the global teacher, sent once and optionally fine-tuned here),
train.distill (the global student distilled from it), and its logits for the ensemble teacher (query.logits)."""

from functools import partial

import torch
from flwr.app import Message

from client_app.ledger import train_private
from client_app.node import Node, setting
from common.loss import distillation_loss
from common.models import build_model, load_record
from common.protocol import ALPHA, FINETUNE_EPOCHS, TEACHER, TEACHER_MODEL, TEMPERATURE
from common.seeds import Stream, derive_seed
from common.training import predict_logits

LOCAL_TEACHER = "local-teacher"  # the local teacher's key in the node's state and state-dir


def local_teacher(msg: Message, node: Node) -> torch.nn.Module:
    """The node's teacher: the global teacher the server sent once, fine-tuned here for `finetune-epochs`."""
    teacher = build_model(str(setting(msg, TEACHER_MODEL)), node.task)
    if TEACHER in msg.content.array_records:
        load_record(teacher, msg.content[TEACHER])
        if (epochs := int(setting(msg, FINETUNE_EPOCHS))) > 0:
            seed = derive_seed(node.cfg.seed, Stream.TEACHER_FINETUNE, node.stream)
            train_private(node, msg, teacher, seed, epochs, targets=(node.data.train.y,))
        node.keep(LOCAL_TEACHER, teacher)
    elif not node.restore(LOCAL_TEACHER, teacher):
        raise RuntimeError(
            "this node holds no local teacher and the message carried none "
            "(the server sends it again the next time it samples this node)"
        )
    return teacher


def train_distill(msg: Message, node: Node) -> Message:
    """Distill the sent global student from the local teacher on local data."""
    teacher = local_teacher(msg, node)
    # The teacher is frozen, so its logits are computed once, not every batch.
    soft = predict_logits(teacher, node.data.train.x)
    loss = partial(distillation_loss, temperature=float(setting(msg, TEMPERATURE)), alpha=float(setting(msg, ALPHA)))
    return node.fit(msg, targets=(soft, node.data.train.y), loss_fn=loss)


def teacher_logits(msg: Message, node: Node) -> Message:
    """query.logits from the local teacher, which the server ensembles (two-stage's `ensemble-teacher`)."""
    return node.logits_reply(msg, local_teacher(msg, node))
