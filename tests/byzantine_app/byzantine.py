"""fedkd's ClientApp, except that the first k partitions (partition-id < k) attack the federation one way.

Each attack kind and k is one ClientApp object, `<kind>_<k>`, which the app's pyproject names as its
`clientapp` (tests/byzantine_app/__init__.py writes it): no run-config key of fedkd's is added, and the ServerApp
runs unchanged. Every attacker first answers as fedkd's ClientApp would, then changes what it sends:

- scaled: its weight update (reply minus the sent global model) multiplied by 100;
- sign_flip: its update negated, a step away from what its data says;
- huge: every weight 1e30, finite in float32, so only a bound on the update stops it;
- lying_counts: honest weights claiming `max-num-examples` examples, the most screening lets through;
- extreme_logits: logits of float32's (or float16's) largest value on class 0 and 0 elsewhere, finite in the
  dtype asked for (FedMD's logits, two-stage's ensemble teacher);
- label_flip: trains on labels c -> classes-1-c where it trains on its labels, claiming `max-num-examples`.
"""

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp import ClientApp

from client_app.actions import fedavg
from client_app.app import app as fedkd_app
from client_app.node import Node
from common.config import parse_run_config
from common.data import ClientData, Split
from common.protocol import ARRAYS, LOGITS, LOGITS_ARRAY, METRICS, NUM_EXAMPLES, QUERY_LOGITS, TRAIN_SUPERVISED

Attack = Callable[[Message, Context], Message]
SCALE = 100.0
HUGE = 1e30


def _weights(transform: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Attack:
    """An attack on the weights of every train reply: `transform(sent, trained)` of each floating array."""

    def attack(message: Message, context: Context) -> Message:
        reply = fedkd_app(message, context)
        train = message.metadata.message_type.startswith(MessageType.TRAIN)
        if train and reply.has_content() and ARRAYS in reply.content.array_records:
            sent, trained = message.content[ARRAYS], reply.content[ARRAYS]
            for key in trained.keys():
                values = trained[key].numpy()
                # Integer buffers (a batch-norm's step count) are not weights an average moves.
                if np.issubdtype(values.dtype, np.floating):
                    trained[key] = Array(transform(sent[key].numpy(), values).astype(values.dtype))
        return reply

    return attack


def _claim_most(reply: Message, context: Context) -> Message:
    """`reply` claiming the most training examples screening accepts, if it claims any."""
    if reply.has_content() and METRICS in reply.content.metric_records and NUM_EXAMPLES in reply.content[METRICS]:
        metrics = dict(reply.content[METRICS])
        metrics[NUM_EXAMPLES] = parse_run_config(context.run_config).max_num_examples
        reply.content[METRICS] = MetricRecord(metrics)
    return reply


def lying_counts(message: Message, context: Context) -> Message:
    reply = fedkd_app(message, context)
    return _claim_most(reply, context) if message.metadata.message_type.startswith(MessageType.TRAIN) else reply


def extreme(logits: np.ndarray) -> np.ndarray:
    """Logits of the largest value `logits`' dtype holds on class 0 and 0 elsewhere: finite in the dtype asked for,
    so they pass screening, and as far from any honest row as that dtype allows."""
    out = np.zeros_like(logits)
    out[:, 0] = np.finfo(logits.dtype).max
    return out


def extreme_logits(message: Message, context: Context) -> Message:
    reply = fedkd_app(message, context)
    if message.metadata.message_type == QUERY_LOGITS and reply.has_content():
        honest = reply.content[LOGITS][LOGITS_ARRAY].numpy()
        reply.content[LOGITS] = ArrayRecord({LOGITS_ARRAY: Array(extreme(honest))})
    return reply


def label_flip(message: Message, context: Context) -> Message:
    if message.metadata.message_type != TRAIN_SUPERVISED:
        return lying_counts(message, context)
    node = Node.load(context, message)
    train = node.data.train
    flipped = Split(train.x, node.task.num_classes - 1 - train.y, train.shape)
    node.data = ClientData(flipped, node.data.test)
    return _claim_most(fedavg.train_supervised(message, node), context)


ATTACKS: dict[str, Attack] = {
    "scaled": _weights(lambda sent, trained: sent + SCALE * (trained - sent)),
    "sign_flip": _weights(lambda sent, trained: sent - (trained - sent)),
    "huge": _weights(lambda sent, trained: np.full_like(trained, HUGE)),
    "lying_counts": lying_counts,
    "extreme_logits": extreme_logits,
    "label_flip": label_flip,
}


class Byzantine(ClientApp):
    """fedkd's ClientApp on partitions `attackers` and above; `ATTACKS[kind]` below them."""

    def __init__(self, kind: str, attackers: int) -> None:
        super().__init__()
        self.attack, self.attackers = ATTACKS[kind], attackers

    def __call__(self, message: Message, context: Context) -> Message:
        if int(context.node_config.get("partition-id", self.attackers)) < self.attackers:
            return self.attack(message, context)
        return fedkd_app(message, context)


# Flower finds a component by an assignment it can see in the module's source, so each is written out.
scaled_1 = Byzantine("scaled", 1)
scaled_2 = Byzantine("scaled", 2)
sign_flip_1 = Byzantine("sign_flip", 1)
sign_flip_2 = Byzantine("sign_flip", 2)
huge_1 = Byzantine("huge", 1)
huge_2 = Byzantine("huge", 2)
lying_counts_1 = Byzantine("lying_counts", 1)
lying_counts_2 = Byzantine("lying_counts", 2)
extreme_logits_1 = Byzantine("extreme_logits", 1)
extreme_logits_2 = Byzantine("extreme_logits", 2)
label_flip_1 = Byzantine("label_flip", 1)
label_flip_2 = Byzantine("label_flip", 2)
