"""`feddf-datafree`: FedDF with no data on the server; it distils on inputs from a generator it trains, and
keeps a group's distilled model only where the group's nodes find it no worse than FedAvg's."""

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from common.config import ConfigError, RunConfig
from common.data import dataset_shape, image_shape
from common.distill import BatchFn, ValidationFn, ensemble_disagreement, ensemble_soft_targets
from common.generator import Generator, generated_batches, train_generator
from common.models import load_record, to_record
from common.protocol import EVAL_CORRECT, EVAL_EXAMPLES, METRICS
from common.seeds import Stream, derive_seed
from server_app.strategies.base import Globals, Round, evaluate_message, register
from server_app.strategies.feddf import FedDF

VALIDATION_SAMPLES = 256
# The two models each node of the round scores in the keep-or-revert check.
CANDIDATES = ("fedavg", "distilled")


@register("feddf-datafree")
class FedDFDataFree(FedDF):
    """Each round a conditional generator is fitted so that the ensemble of received client models (mean of
    probabilities) labels its samples as asked, with a diversity term; each group's FedAvg model then distils
    from the ensemble on its samples. No server-side signal tells a helpful server step from a harmful one
    (docs/notes/feddf-datafree-generator.md), so nodes of each group that did not train this round score both
    models on their local test splits, and the group keeps the distilled model only if they count at least as
    many right with it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        features, classes = dataset_shape(self.cfg.dataset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, Stream.GENERATOR_INIT))
            self.generator = Generator(features, classes, image_shape(self.cfg.dataset))

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The nodes' check releases exact counts on their test splits each round, which DP does not account."""
        if cfg.dp_epsilon > 0:
            raise ConfigError(
                f"run config 'dp-epsilon' = {cfg.dp_epsilon}: strategy 'feddf-datafree' has the nodes "
                "score each server step on their local test splits and report exact counts, which "
                "sample-level DP does not cover; allowed: 0 with feddf-datafree"
            )

    def state(self) -> dict[str, ArrayRecord]:
        """The generator, trained over the rounds so far."""
        return {"generator": to_record(self.generator)}

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Continue with the checkpointed generator."""
        load_record(self.generator, state["generator"])

    def distill_budget(self) -> tuple[int, int]:
        """`datafree-steps` and `datafree-patience`."""
        return self.cfg.datafree_steps, self.cfg.datafree_patience

    def distillation_data(
        self, teachers: list[torch.nn.Module], result: Round, server_round: int
    ) -> tuple[Callable[[str], BatchFn], ValidationFn]:
        """Train the generator this round, then draw distillation batches and a validation set from it."""
        result.metrics["generator-loss"] = train_generator(
            self.generator,
            teachers,
            steps=self.cfg.datafree_steps,
            batch_size=self.cfg.batch_size,
            learning_rate=self.cfg.server_learning_rate,
            seed=derive_seed(self.cfg.seed, Stream.GENERATOR_TRAINING, server_round),
        )
        t = self.cfg.temperature
        with torch.no_grad():
            rng = torch.Generator().manual_seed(derive_seed(self.cfg.seed, Stream.GENERATOR_VALIDATION, server_round))
            x_val, _ = self.generator.sample(VALIDATION_SAMPLES, rng)
            validation = ensemble_disagreement(x_val, ensemble_soft_targets(teachers, x_val, t), t)
        seed = derive_seed(self.cfg.seed, Stream.GENERATED_BATCHES, server_round)
        return (lambda name: generated_batches(self.generator, teachers, self.cfg.batch_size, t, seed)), validation

    def keep(
        self, phase: str, averaged: Globals, distilled: Globals, replies: list[Message], grid: Grid, into: Round
    ) -> Globals:
        """Each group's distilled model if its judges (`judges`) count at least as many local test examples
        right with it as with its FedAvg model (a tie keeps it), else the FedAvg model; `distill-kept` says which."""
        judges = self.judges(phase, list(distilled), into.sent, [m.metadata.src_node_id for m in replies], grid)
        asked = [(node, name, which) for name in distilled for node in judges[name] for which in CANDIDATES]
        candidates = dict(zip(CANDIDATES, (averaged, distilled)))
        ex = self.send(grid, [evaluate_message(node, name, candidates[which][name]) for node, name, which in asked])
        into.exchanges.append(ex)
        asked_by_id = dict(zip(ex.message_ids, asked))
        correct: dict[tuple[int, str, str], int] = {}
        for reply in ex.ok():
            node, name, which = asked_by_id[reply.metadata.reply_to_message_id]
            count, reason = _correct_count(reply.content)
            if reason:
                into.rejected.append({"node": node, "reason": f"check rejected: {reason}"})
            else:
                correct[node, name, which] = count
        out, kept = dict(averaged), {}
        for name in distilled:
            scored = [n for n in judges[name] if all((n, name, w) in correct for w in CANDIDATES)]
            kept[name] = (
                bool(scored) and sum(correct[n, name, "distilled"] - correct[n, name, "fedavg"] for n in scored) >= 0
            )
            out[name] = distilled[name] if kept[name] else averaged[name]
        into.metrics["distill-kept"] = kept
        return out

    def judges(
        self, phase: str, groups: list[str], trained: list[int], replied: list[int], grid: Grid
    ) -> dict[str, list[int]]:
        """Per group, the connected nodes of its architecture that were not sent this round's training: FedAvg's
        model was fitted to the trained nodes' data, so their own test splits favour it (at Dirichlet 0.1, a
        CNN averaged from two few-class clients scores well on their classes and near chance on the rest).
        A group all of whose nodes trained is judged by those that replied."""
        trained_set = set(trained)
        held_out = [n for n in self.sampler.nodes(grid, 0) if n not in trained_set]
        return {
            name: [n for n in held_out if self.architecture(n, phase) == name]
            or [n for n in replied if self.architecture(n, phase) == name]
            for name in groups
        }


def _correct_count(content: RecordDict) -> tuple[int, str | None]:
    """(examples right, None) from an evaluate reply, or (0, what is wrong with it)."""
    metrics = content.metric_records.get(METRICS)
    if metrics is None or EVAL_CORRECT not in metrics or EVAL_EXAMPLES not in metrics:
        return 0, f"no '{EVAL_CORRECT}' and '{EVAL_EXAMPLES}' counts in the reply"
    correct, examples = metrics[EVAL_CORRECT], metrics[EVAL_EXAMPLES]
    if (
        not all(isinstance(v, (int, float)) and float(v).is_integer() for v in (correct, examples))
        or not 0 <= correct <= examples
    ):
        return 0, f"{correct} right of {examples}"
    return int(correct), None
