"""`fedgen`: FedGen (Zhu, Hong and Zhou, ICML 2021), FedAvg whose nodes learn from a generator of features
that the server fits to their prediction layers and label counts; no data on the server."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp import Grid

from common.config import ConfigError, RunConfig
from common.data import dataset_shape
from common.feature_generator import FeatureGenerator, feature_width, head, train_feature_generator
from common.protocol import GENERATOR, GENERATOR_LABELS, LABEL_COUNTS, METRICS, NUM_EXAMPLES, Action
from common.seeds import Stream, derive_seed
from server_app.strategies.base import STUDENT_PHASE, Globals, Round, Strategy, register

LABELS = "labels"


@register("fedgen")
class FedGen(Strategy):
    """Each round the sampled nodes train their group's model on local labels, from the second round on
    regularised by the generator (common.feature_generator.regularised_loss); the server averages each group
    and fits the generator to the received heads, each class taught by the nodes holding its examples."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generator = FeatureGenerator(dataset_shape(self.cfg.dataset)[1], [], self.cfg.seed)
        self.labels: list[int] = []  # the classes the generator has learned; none before the first round

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """FedGen sends each node's label counts to the server, which DP-SGD does not protect."""
        if cfg.dp_epsilon > 0:
            raise ConfigError(
                f"run config 'dp-epsilon' = {cfg.dp_epsilon}: strategy 'fedgen' reports each node's "
                "label counts in the clear, which sample-level DP does not cover; allowed: 0 with fedgen"
            )

    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """Grouped FedAvg of `train.fedgen`, then the generator fitted to the replies' heads and label counts."""
        result, replies = self.train_round(
            phase, server_round, globals_, grid, Action.FEDGEN, extra=self._generator_for
        )
        if not replies:
            return result
        heads = [head(m) for m in self.models_of(replies, phase)]
        counts = torch.tensor([list(m.content[METRICS][LABEL_COUNTS]) for m in replies], dtype=torch.long)
        result.metrics["generator-loss"], self.labels = train_feature_generator(
            self.generator,
            heads,
            counts,
            steps=self.cfg.fedgen_generator_steps,
            batch_size=self.cfg.batch_size,
            learning_rate=self.cfg.server_learning_rate,
            diversity=self.cfg.fedgen_diversity,
            seed=derive_seed(self.cfg.seed, Stream.FEDGEN_TRAINING, server_round),
        )
        return result

    def _generator_for(self, node: int) -> dict:
        """The generator's part for the node's feature width, once it has learned something."""
        if not self.labels:
            return {}
        width = feature_width(self.architecture(node, STUDENT_PHASE), self.cfg.dataset)
        if width not in self.generator.widths:
            # A node whose architecture joined after the last round: its output layer has learned nothing yet.
            return {}
        return {GENERATOR: ArrayRecord(self.generator.for_width(width))}

    def train_config(self, phase: str, server_round: int) -> dict:
        """The classes a node draws generated features of."""
        return {GENERATOR_LABELS: self.labels} if self.labels else {}

    def check_train_reply(self, content: RecordDict) -> str | None:
        """A reply must count the node's examples of each class, summing to its `num-examples`."""
        metrics = content[METRICS]
        classes = dataset_shape(self.cfg.dataset)[1]
        counts = metrics.get(LABEL_COUNTS)
        if (
            not isinstance(counts, list)
            or len(counts) != classes
            or not all(isinstance(c, int) and c >= 0 for c in counts)
        ):
            return f"'{LABEL_COUNTS}' is {counts!r}, expected {classes} counts of 0 or more"
        if sum(counts) != metrics[NUM_EXAMPLES]:
            return f"'{LABEL_COUNTS}' sum to {sum(counts)}, not the {metrics[NUM_EXAMPLES]} examples the reply claims"
        return None

    def state(self) -> dict[str, ArrayRecord]:
        """The generator and the classes it learned."""
        return {
            "generator": ArrayRecord(self.generator.state_dict()),
            "generator-labels": ArrayRecord({LABELS: Array(np.array(self.labels, dtype=np.int64))}),
        }

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Continue with the checkpointed generator, rebuilt with the widths it had."""
        weights = state["generator"].to_torch_state_dict()
        for key in weights:
            if key.startswith("heads.") and key.endswith(".bias"):
                self.generator.add_width(int(key.split(".")[1]))
        self.generator.load_state_dict(weights, strict=True)
        self.labels = [int(c) for c in state["generator-labels"][LABELS].numpy()]
