"""The messages between fedkd's ServerApp and ClientApp: message types, record names, keys.

Both apps import these names. The strings are what travels, so changing one breaks the exchange
with nodes that run another version of the app.

The rule for what a node learns from where: the run config's common keys (common/config.py) are the run, and
every node reads them (its data, local training, privacy); a strategy's settings reach a node only in the
CONFIG of the message that needs them, under the keys below.
"""

from flwr.app import MessageType


class Action:
    """The actions of the ClientApp's handlers, registered as `@app.<kind>(Action.X)`."""

    SUPERVISED = "supervised"  # train: the sent global model on local labels
    DISTILL = "distill"  # train: the sent global student, distilled from the node's local teacher
    DIGEST = "digest"  # train: FedMD's own model toward the consensus, then on local labels
    FEDGEN = "fedgen"  # train: the sent global model on local labels, regularised by FedGen's generator
    LOGITS = "logits"  # query: a model's logits on public inputs
    IDENTIFY = "identify"  # query: the node's stable name and architecture


def message_type(kind: str, action: str) -> str:
    """The type Flower routes to the handler registered as `@app.<kind>(action)`."""
    return f"{kind}.{action}"


# --- what most messages carry ---------------------------------------------------------------
ARRAYS = "arrays"  # model weights (ArrayRecord), sent and returned
CONFIG = "config"  # the server's instructions (ConfigRecord)
METRICS = "metrics"  # a reply's counts, losses and time (MetricRecord)
SERVER_ROUND = "server-round"  # CONFIG: the round number; the node seeds its shuffles with it
MODEL = "model"  # CONFIG: the architecture of the sent ARRAYS; NODE: the node's own architecture
# METRICS: the reply's weight in the server's averages (local training examples; evaluate: test examples).
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"  # METRICS: the mean batch loss of local training
CLIENT_SECONDS = "client-seconds"  # METRICS: the handler's wall time
# METRICS of every reply of a node that trained with DP (run config `dp-epsilon` > 0): the ε it has spent in the run.
DP_EPSILON = "dp-epsilon"
# CONFIG of every message when DP is on: the most epochs over its private data a node may train in the run if
# sampled every round, as the strategy plans it; the node calibrates its noise to spend `dp-epsilon` over them.
PRIVATE_EPOCHS = "private-epochs"
# METRICS: a model scored on the local test split, as sums, so that the server weights nodes by their test sizes.
EVAL_EXAMPLES = "eval-examples"
EVAL_CORRECT = "eval-correct"
EVAL_LOSS_SUM = "eval-loss-sum"

# --- train.supervised, train.distill: a global model to train, returned in ARRAYS ---------------
TRAIN_SUPERVISED = message_type(MessageType.TRAIN, Action.SUPERVISED)
# CONFIG: score the sent model on the local test split before training (evaluation fused into training).
EVALUATE_INCOMING = "evaluate-incoming"
# CONFIG of train.supervised: weight mu of FedProx's proximal term mu/2 * ||w - w_sent||^2; absent: 0.
PROXIMAL_MU = "proximal-mu"
# The final global teacher (ArrayRecord), sent only to nodes that may not hold it yet (also with query.logits).
TEACHER = "teacher"
# CONFIG of train.distill and of query.logits from the local teacher: the teacher's architecture, and the epochs
# a node fine-tunes it on its data when it arrives (two-stage's `teacher-model`, `teacher-finetune-epochs`).
TEACHER_MODEL = "teacher-model"
FINETUNE_EPOCHS = "finetune-epochs"
# CONFIG of train.distill and train.digest: the distillation temperature T; train.distill: the soft loss's weight.
TEMPERATURE = "temperature"
ALPHA = "alpha"

# --- train.fedgen: train.supervised with FedGen's generator; the reply also counts the node's labels ----
GENERATOR = "generator"  # the generator's body and the output layer of the node's feature width (ArrayRecord)
GENERATOR_LABELS = "generator-labels"  # CONFIG: the classes the generator learned, which the node samples
LABEL_COUNTS = "label-counts"  # METRICS: the node's training examples per class (list of int)
# CONFIG: the weights of the generator's two terms in the node's loss (fedgen's `alpha`, `beta`).
GENERATOR_ALPHA = "generator-alpha"
GENERATOR_BETA = "generator-beta"

# --- query.logits, train.digest: logits on public inputs (FedMD, the ensemble teacher) -------
QUERY_LOGITS = message_type(MessageType.QUERY, Action.LOGITS)
TRAIN_DIGEST = message_type(MessageType.TRAIN, Action.DIGEST)
SPLIT = "split"  # CONFIG: the data INDICES point into; PUBLIC is the only one
PUBLIC = "public"
INDICES = "indices"  # CONFIG: rows of the public data
SOURCE = "source"  # CONFIG of query.logits: whose logits, SOURCE_TEACHER or SOURCE_OWN
SOURCE_TEACHER = "teacher"  # the node's local teacher
SOURCE_OWN = "own"  # the node's own model (FedMD)
LOGITS = "logits"  # query.logits reply: the logits record
CONSENSUS = "consensus"  # train.digest: the logits record the node's model digests
REPORT_TEST_LOGITS = "report-test-logits"  # CONFIG of train.digest: also reply with TEST_LOGITS
TEST_LOGITS = "test-logits"  # train.digest reply: logits on the server's test inputs, which the server scores
DIGEST_LOSS = "digest-loss"  # METRICS of train.digest
LOGITS_DTYPE = "logits-dtype"  # CONFIG of query.logits and train.digest: how the reply's logits travel
# CONFIG of query.logits and train.digest (FedMD): epochs on the labelled public data when a node creates its own
# model, and epochs toward the consensus.
TRANSFER_EPOCHS = "transfer-epochs"
DIGEST_EPOCHS = "digest-epochs"
LOGITS_ARRAY = "logits"  # the one array of a logits record (LOGITS, CONSENSUS, TEST_LOGITS)

# --- query.identify: a name that stays the same across runs, for seeded sampling -------------
QUERY_IDENTIFY = message_type(MessageType.QUERY, Action.IDENTIFY)
NODE = "node"  # reply (ConfigRecord): NAME, MODEL, and its data's common.task INPUT_SHAPE and NUM_CLASSES or DATA_ERROR
NAME = "name"
DATA_ERROR = "data-error"  # NODE: why the node's data cannot be read

# --- evaluate: the sent ARRAYS of architecture MODEL scored on the local test split (EVAL_* METRICS)
EVALUATE = MessageType.EVALUATE
