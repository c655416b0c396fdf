"""`fedgen`: FedGen (Zhu, Hong and Zhou, ICML 2021), FedAvg whose nodes learn from a generator of features
that the server fits to their prediction layers and label counts; no data on the server."""

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from pydantic import Field

from common.config import ConfigError, RunConfig, Settings
from common.feature_generator import FeatureGenerator, feature_width, head, train_feature_generator
from common.privacy import not_covered
from common.protocol import (
    GENERATOR,
    GENERATOR_ALPHA,
    GENERATOR_BETA,
    GENERATOR_LABELS,
    LABEL_COUNTS,
    METRICS,
    Action,
)
from common.seeds import Stream, derive_seed
from server_app.round import Phase, RoundInput
from server_app.strategies.contract import RoundSteps, register
from server_app.strategies.fedavg import FedAvg

LABELS = "labels"


class FedGenSettings(Settings):
    """The generator and the weights of its terms in the nodes' loss."""

    # The budget and diversity weight are the authors' code's for MNIST (50 generator steps, 1). Their alpha and
    # beta of 10 are for SGD; under fedkd's Adam they swamped the task loss (digits, Dirichlet 0.1, seed 42: 0.597
    # against FedAvg's 0.644), where 1 and 1 gave 0.700 (docs/strategies.md).
    alpha: float = Field(
        1.0,
        ge=0,
        description="weight of the cross-entropy of a node's head on generated features in local training "
        "(decays by 0.98 a round)",
    )
    beta: float = Field(
        1.0,
        ge=0,
        description="weight of the KL term pulling a node's predictions toward its head on generated features of "
        "the same classes (decays by 0.98 a round)",
    )
    generator_steps: int = Field(50, ge=1, description="Adam steps of the generator per round")
    diversity: float = Field(1.0, ge=0, description="weight of the generator's diversity loss")
    generator_learning_rate: float = Field(0.001, gt=0, description="Adam learning rate of the generator")


@register("fedgen")
class FedGen(FedAvg):
    """Each round the sampled nodes train their group's model on local labels, from the second round on
    regularised by the generator (common.feature_generator.regularised_loss); the server averages each group
    and fits the generator to the received heads, each class taught by the nodes holding its examples."""

    Settings = FedGenSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generator = FeatureGenerator(self.task.num_classes, [], self.cfg.seed)
        self.labels: list[int] = []  # the classes the generator has learned; none before the first round

    @classmethod
    def check_config(cls, cfg: RunConfig, settings: Settings) -> None:
        """FedGen sends each node's label counts to the server, which DP-SGD does not protect."""
        if cfg.dp_epsilon > 0:
            raise ConfigError(not_covered(cls.name, "reports each node's label counts in the clear", cfg.dp_epsilon))

    def action(self, phase: Phase) -> str:
        """Local training regularised by the generator."""
        return Action.FEDGEN

    def round(self, r: RoundInput) -> RoundSteps:
        """Grouped FedAvg of `train.fedgen`, then the generator fitted to the replies' heads and label counts."""
        result, replies = yield from self.train_and_average(r)
        if not replies:
            return result
        s = self.settings
        heads = [head(self.client_model(reply, r)) for reply in replies]
        counts = torch.tensor([list(reply.content[METRICS][LABEL_COUNTS]) for reply in replies], dtype=torch.long)
        result.metrics["generator-loss"], self.labels = train_feature_generator(
            self.generator,
            heads,
            counts,
            steps=s.generator_steps,
            batch_size=self.cfg.batch_size,
            learning_rate=s.generator_learning_rate,
            diversity=s.diversity,
            seed=derive_seed(self.cfg.seed, Stream.FEDGEN_TRAINING, r.server_round),
        )
        return result

    def train_records(self, node: int, r: RoundInput) -> dict[str, ArrayRecord]:
        """The generator's part for the node's feature width, once it has learned something."""
        if not self.labels:
            return {}
        width = feature_width(self.architecture(node, r.phase), self.task)
        if width not in self.generator.widths:
            # A node whose architecture joined after the last round: its output layer has learned nothing yet.
            return {}
        return {GENERATOR: ArrayRecord(self.generator.for_width(width))}

    def train_config(self, r: RoundInput) -> dict:
        """The classes a node draws generated features of, and the weights of the generator's terms."""
        labels = {GENERATOR_LABELS: self.labels} if self.labels else {}
        return {**labels, GENERATOR_ALPHA: self.settings.alpha, GENERATOR_BETA: self.settings.beta}

    def check_reply(self, content: RecordDict) -> str | None:
        """A reply must count the node's examples of each class (the loop's metrics check has made sure that any
        counts are whole, not negative, and sum to its `num-examples`)."""
        counts = content[METRICS].get(LABEL_COUNTS)
        if not isinstance(counts, list) or len(counts) != self.task.num_classes:
            return f"'{LABEL_COUNTS}' is {counts!r}, expected {self.task.num_classes} counts of 0 or more"
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
