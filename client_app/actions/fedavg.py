"""train.supervised: a global model trained on local labels (FedAvg, FedProx, FedDF, two-stage's teacher phase)."""

from flwr.app import Message

from client_app.node import Node
from common.protocol import CONFIG, PROXIMAL_MU


def train_supervised(msg: Message, node: Node) -> Message:
    """Train the sent global model on local labels, with FedProx's proximal term when the message carries
    `proximal-mu`."""
    mu = float(msg.content[CONFIG].get(PROXIMAL_MU, 0.0))
    return node.fit(msg, targets=(node.data.train.y,), proximal_mu=mu)
