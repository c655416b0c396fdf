"""evaluate: a global model of any method scored on the node's local test split."""

from flwr.app import Message, MetricRecord, RecordDict

from client_app.node import Node, setting
from common.models import build_model, load_record
from common.protocol import ARRAYS, METRICS, MODEL, NUM_EXAMPLES


def evaluate_global(msg: Message, node: Node) -> Message:
    """Score the sent global model, of the message's architecture, on the local test split."""
    model = load_record(build_model(str(setting(msg, MODEL)), node.task), msg.content[ARRAYS])
    metrics = node.eval_metrics(model)
    metrics[NUM_EXAMPLES] = len(node.data.test)
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
