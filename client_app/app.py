"""fedkd's ClientApp: one handler per message type, each loading the node and handing the message to its action
(client_app/actions/, one module per method family); before any, the process's torch threads are set once
(client_app/threads.py)."""

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client_app.actions import fedavg, fedgen, fedmd, two_stage
from client_app.actions.evaluate import evaluate_global
from client_app.node import Node, identity, setting
from client_app.threads import threads_mod
from common.protocol import NODE, SOURCE, SOURCE_TEACHER, Action

app = ClientApp(mods=[threads_mod])


@app.train(Action.SUPERVISED)
def train_supervised(msg: Message, context: Context) -> Message:
    """Train the sent global model on local labels (FedAvg, FedProx, FedDF, two-stage's teacher phase)."""
    return fedavg.train_supervised(msg, Node.load(context, msg))


@app.train(Action.DISTILL)
def train_distill(msg: Message, context: Context) -> Message:
    """Two-stage phase 2: distill the sent global student from the local teacher."""
    return two_stage.train_distill(msg, Node.load(context, msg))


@app.train(Action.DIGEST)
def train_digest(msg: Message, context: Context) -> Message:
    """FedMD: move the node's own model toward the consensus, then train it on local labels."""
    return fedmd.train_digest(msg, Node.load(context, msg))


@app.train(Action.FEDGEN)
def train_fedgen(msg: Message, context: Context) -> Message:
    """FedGen: train the sent global model on local labels, regularised by the server's generator."""
    return fedgen.train_fedgen(msg, Node.load(context, msg))


@app.query(Action.LOGITS)
def query_logits(msg: Message, context: Context) -> Message:
    """Logits on public inputs: of the local teacher (two-stage's ensemble teacher), else of the own model (FedMD)."""
    node = Node.load(context, msg)
    if setting(msg, SOURCE) == SOURCE_TEACHER:
        return two_stage.teacher_logits(msg, node)
    return fedmd.own_logits(msg, node)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the sent global model on the local test split."""
    return evaluate_global(msg, Node.load(context, msg))


@app.query(Action.IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    """Report a stable name, for the server's seeded sampling, and this node's architecture."""
    return Message(RecordDict({NODE: identity(context)}), reply_to=msg)
