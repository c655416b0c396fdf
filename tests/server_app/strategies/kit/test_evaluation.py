"""`evaluate` messages: the model and its architecture, to one node."""

from common.protocol import ARRAYS, CONFIG, EVALUATE, MODEL
from server_app.strategies.kit.evaluation import evaluate_message
from tests.server_app.helpers import values, weights


def test_an_evaluate_message_carries_the_weights_and_names_their_architecture(task_identity):
    message = evaluate_message(3, "cnn", weights(1.0, 2.0))
    assert (message.metadata.dst_node_id, message.metadata.message_type) == (3, EVALUATE)
    assert values(message.content[ARRAYS]) == [1.0, 2.0] and message.content[CONFIG][MODEL] == "cnn"
