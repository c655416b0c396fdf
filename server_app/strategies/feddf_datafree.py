"""`feddf-datafree`: FedDF with no data on the server; it distills on inputs from a generator it trains, and
keeps a group's distilled model only where the group's nodes find it no worse than FedAvg's."""

from collections.abc import Callable, Generator

import torch
from flwr.app import ArrayRecord, RecordDict
from pydantic import Field

from common.config import ConfigError, RunConfig
from common.distill import BatchFn, ValidationFn, ensemble_disagreement, ensemble_soft_targets
from common.generator import Generator as InputGenerator
from common.generator import generated_batches, train_generator
from common.models import load_record, to_record
from common.privacy import not_covered
from common.protocol import EVAL_CORRECT, EVAL_EXAMPLES, METRICS
from common.seeds import Stream, derive_seed
from server_app.round import Ask, Globals, Reply, RoundInput, RoundResult
from server_app.strategies.contract import RoundSteps, register
from server_app.strategies.feddf import FedDF
from server_app.strategies.kit.distillation import DistillSettings
from server_app.strategies.kit.evaluation import evaluate_message

VALIDATION_SAMPLES = 256
# The two models each judge scores in the keep-or-revert check.
CANDIDATES = ("fedavg", "distilled")


class FedDFDataFreeSettings(DistillSettings):
    """The generator and the distillation on its samples."""

    # Its own budget: each of its steps also runs the generator, and its validation on generated samples is
    # continuous, so it leaves a plateau sooner.
    distill_steps: int = Field(
        300, ge=1, description="generator steps per round, and at most this many distillation steps on its samples"
    )
    distill_patience: int = Field(
        20,
        ge=1,
        description="stop distilling after this many validations without improvement (the validation is the "
        "continuous loss toward the ensemble on generated samples, so it sees progress sooner)",
    )
    distill_learning_rate: float = Field(
        0.001, gt=0, description="Adam learning rate of the generator and of distillation"
    )
    diversity: float = Field(1.0, ge=0, description="weight of the generator's diversity loss (FedGen's default)")


@register("feddf-datafree")
class FedDFDataFree(FedDF):
    """Each round a conditional generator is fitted so that the ensemble of received client models (mean of
    probabilities) labels its samples as asked, with a diversity term; each group's FedAvg model then distills
    from the ensemble on its samples. No server-side signal tells a helpful server step from a harmful one
    (docs/notes/feddf-datafree-generator.md), so the group's judges score both models on their local test splits:
    its connected nodes that were not sampled for this round's training, or, where all of them were, those whose
    training replies were accepted. The group keeps the distilled model only if the judges that scored both count
    at least as many right with it; with none, it keeps FedAvg's."""

    Settings = FedDFDataFreeSettings

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        features, classes = self.task.features, self.task.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, Stream.GENERATOR_INIT))
            self.generator = InputGenerator(features, classes, self.task.input_shape if self.task.is_image else None)

    @classmethod
    def check_config(cls, cfg: RunConfig, settings: Settings) -> None:
        """The judges release exact counts on their test splits each round, which DP does not account."""
        if cfg.dp_epsilon > 0:
            released = "has the nodes score each server step on their local test splits and report exact counts"
            raise ConfigError(not_covered(cls.name, released, cfg.dp_epsilon))

    def state(self) -> dict[str, ArrayRecord]:
        """The generator, trained over the rounds so far."""
        return {"generator": to_record(self.generator)}

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Continue with the checkpointed generator."""
        load_record(self.generator, state["generator"])

    def round(self, r: RoundInput) -> RoundSteps:
        """Grouped FedAvg, the server step on generated inputs, then the judges' keep-or-revert check."""
        result, replies = yield from self.train_and_average(r)
        if replies:
            averaged = result.globals
            distilled = self.distill(r, result, replies)
            result.globals = yield from self.judge(r, averaged, distilled, replies, result)
        return result

    def distillation_data(
        self, teachers: list[torch.nn.Module], result: RoundResult, r: RoundInput
    ) -> tuple[Callable[[str], BatchFn], ValidationFn]:
        """Train the generator this round, then draw distillation batches and a validation set from it."""
        s = self.settings
        result.metrics["generator-loss"] = train_generator(
            self.generator,
            teachers,
            steps=s.distill_steps,
            batch_size=self.cfg.batch_size,
            learning_rate=s.distill_learning_rate,
            diversity=s.diversity,
            seed=derive_seed(self.cfg.seed, Stream.GENERATOR_TRAINING, r.server_round),
        )
        t = s.temperature
        with torch.no_grad():
            rng = torch.Generator().manual_seed(derive_seed(self.cfg.seed, Stream.GENERATOR_VALIDATION, r.server_round))
            x_val, _ = self.generator.sample(VALIDATION_SAMPLES, rng)
            validation = ensemble_disagreement(x_val, ensemble_soft_targets(teachers, x_val, t), t)
        seed = derive_seed(self.cfg.seed, Stream.GENERATED_BATCHES, r.server_round)
        return (lambda name: generated_batches(self.generator, teachers, self.cfg.batch_size, t, seed)), validation

    def judge(
        self, r: RoundInput, averaged: Globals, distilled: Globals, replies: list[Reply], result: RoundResult
    ) -> Generator[Ask, list[Reply], Globals]:
        """Each group's distilled model if its judges (`judges`) count at least as many local test examples right
        with it as with its FedAvg model (a tie keeps it), else the FedAvg model; `distill-kept` says which."""
        judges = self.judges(r, list(distilled), [reply.node for reply in replies])
        asked = [(node, name, which) for name in distilled for node in judges[name] for which in CANDIDATES]
        candidates = dict(zip(CANDIDATES, (averaged, distilled)))
        messages = [evaluate_message(node, name, candidates[which][name]) for node, name, which in asked]
        scored = yield Ask(messages, [count_reason] * len(messages), label="check", answers_round=False)
        correct = {asked[reply.index]: int(reply.content[METRICS][EVAL_CORRECT]) for reply in scored}
        out, kept = dict(averaged), {}
        for name in distilled:
            both = [n for n in judges[name] if all((n, name, w) in correct for w in CANDIDATES)]
            gain = sum(correct[n, name, "distilled"] - correct[n, name, "fedavg"] for n in both)
            kept[name] = bool(both) and gain >= 0
            out[name] = distilled[name] if kept[name] else averaged[name]
        result.metrics["distill-kept"] = kept
        return out

    def judges(self, r: RoundInput, groups: list[str], replied: list[int]) -> dict[str, list[int]]:
        """Per group, the connected nodes of its architecture that were not sent this round's training: FedAvg's
        model was fitted to the trained nodes' data, so their own test splits favour it (at Dirichlet 0.1, a CNN
        averaged from two few-class clients scores well on their classes and near chance on the rest). A group
        all of whose nodes trained is judged by those that replied."""
        trained = set(r.sampled)
        held_out = [n for n in r.connected if n not in trained]
        return {
            name: [n for n in held_out if self.architecture(n, r.phase) == name]
            or [n for n in replied if self.architecture(n, r.phase) == name]
            for name in groups
        }


def count_reason(content: RecordDict) -> str | None:
    """Why a judge's evaluate reply cannot be used: no whole counts, or more right than examples; None if fine."""
    metrics = content.metric_records.get(METRICS)
    if metrics is None or EVAL_CORRECT not in metrics or EVAL_EXAMPLES not in metrics:
        return f"no '{EVAL_CORRECT}' and '{EVAL_EXAMPLES}' counts in the reply"
    correct, examples = metrics[EVAL_CORRECT], metrics[EVAL_EXAMPLES]
    whole = all(isinstance(v, (int, float)) and float(v).is_integer() for v in (correct, examples))
    if not whole or not 0 <= correct <= examples:
        return f"{correct} right of {examples}"
    return None
