"""`evaluate` messages: a node scores a model of a given architecture on its local test split."""

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from common.protocol import ARRAYS, CONFIG, EVALUATE, MODEL


def evaluate_message(node: int, architecture: str, arrays: ArrayRecord) -> Message:
    """`evaluate`: the node scores `arrays`, built as `architecture`, on its local test split."""
    return Message(
        RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({MODEL: architecture})}),
        dst_node_id=node,
        message_type=EVALUATE,
    )
