"""fedkd's ClientApp, except that partition i answers `train` messages with bad reply BEHAVIOURS[i]."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord
from flwr.clientapp import ClientApp

from client_app.app import app as fedkd_app
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES


def _arrays(reply: Message) -> ArrayRecord:
    return reply.content[ARRAYS]


def _nan(reply: Message) -> None:
    first = next(iter(_arrays(reply)))
    bad = _arrays(reply)[first].numpy().copy()
    bad.flat[0] = np.nan
    _arrays(reply)[first] = Array(bad)


def _shape(reply: Message) -> None:
    first = next(iter(_arrays(reply)))
    _arrays(reply)[first] = Array(np.zeros((3, 3), dtype=np.float32))


def _dtype(reply: Message) -> None:
    first = next(iter(_arrays(reply)))
    _arrays(reply)[first] = Array(_arrays(reply)[first].numpy().astype(np.float64))


def _keys(reply: Message) -> None:
    first = next(iter(_arrays(reply)))
    _arrays(reply)["extra.weight"] = _arrays(reply)[first]


def _examples(value: float | None):
    def corrupt(reply: Message) -> None:
        metrics = dict(reply.content[METRICS])
        if value is None:
            del metrics[NUM_EXAMPLES]
        else:
            metrics[NUM_EXAMPLES] = value
        reply.content[METRICS] = MetricRecord(metrics)

    return corrupt


def _raise(reply: Message) -> None:
    raise RuntimeError("this client's handler failed")


BEHAVIOURS = {
    1: _nan,
    2: _shape,
    3: _dtype,
    4: _keys,
    5: _examples(None),
    6: _examples(-5),
    7: _examples(10**9),
    8: _examples(2.5),
    9: _raise,
}


class Misbehaving(ClientApp):
    """Runs fedkd's handler, then spoils a train reply the way its partition's behaviour says."""

    def __call__(self, message: Message, context: Context) -> Message:
        reply = fedkd_app(message, context)
        behaviour = BEHAVIOURS.get(int(context.node_config.get("partition-id", 0)))
        if behaviour and message.metadata.message_type.startswith(MessageType.TRAIN):
            behaviour(reply)
        return reply


app = Misbehaving()
