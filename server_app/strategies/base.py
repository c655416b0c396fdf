"""fedkd's strategy contract, its registry, and the primitives strategies build on: seeded sampling,
per-architecture groups, screened FedAvg, logit queries."""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.config import RunConfig
from common.data import Split, dataset_shape
from common.distill import BatchFn, ValidationFn, distill
from common.models import build_model, initial_model, load_record, to_record
from common.protocol import (
    ARRAYS,
    CLIENT_SECONDS,
    CONFIG,
    DP_EPSILON,
    EVAL_CORRECT,
    EVAL_EXAMPLES,
    EVAL_LOSS_SUM,
    EVALUATE,
    EVALUATE_INCOMING,
    LOGITS,
    LOGITS_ARRAY,
    METRICS,
    MODEL,
    NUM_EXAMPLES,
    PRIVATE_EPOCHS,
    QUERY_LOGITS,
    SERVER_ROUND,
    TRAIN_LOSS,
    message_type,
)
from common.seeds import Stream, stream_rng
from common.training import evaluate
from server_app.sampling import NodeSampler
from server_app.screening import screen_reply
from server_app.transport import Exchange, exchange

# Architecture name -> that group's global weights.
Globals = dict[str, ArrayRecord]
# Architecture name -> (loss, accuracy) on the server's test set.
Scores = dict[str, tuple[float, float]]

# The roles a phase has in fedkd: every method ends with its students; a method may first train a teacher.
# history.json records them as `phase`; summary.json reports the last round of each.
TEACHER_PHASE = "teacher"
STUDENT_PHASE = "student"


@dataclass
class Round:
    """What one round did, for the round loop to check and record."""

    globals: Globals
    sent: list[int]
    exchanges: list[Exchange] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    # Node name -> the ε it reported spent (`dp-epsilon` > 0), the largest of its accepted replies this round.
    epsilon: dict[str, float] = field(default_factory=dict)
    # Whether the replies' federated metrics score the previous round's models (fused evaluation)
    # rather than this round's.
    scores_previous: bool = True

    def failures(self) -> list[dict]:
        """Errors, missing replies and rejected replies of every exchange of the round."""
        return [f for ex in self.exchanges for f in ex.failures()] + self.rejected


def sum_eval_counts(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Federated accuracy and loss weighted by local test examples; train loss by train examples;
    the slowest client's handler time."""
    metrics = [r[METRICS] for r in records]
    examples = sum(float(m.get(EVAL_EXAMPLES, 0)) for m in metrics)
    # The keys of `out` are the round's metrics that rounds.py records, not wire keys.
    out = {}
    if metrics and all(TRAIN_LOSS in m for m in metrics):
        trained = sum(float(m[weight_key]) for m in metrics)
        out["train-loss"] = sum(float(m[TRAIN_LOSS]) * float(m[weight_key]) for m in metrics) / trained
    if metrics and all(CLIENT_SECONDS in m for m in metrics):
        out["client-seconds"] = max(float(m[CLIENT_SECONDS]) for m in metrics)
    if examples:
        out["federated-accuracy"] = sum(float(m[EVAL_CORRECT]) for m in metrics) / examples
        out["federated-loss"] = sum(float(m[EVAL_LOSS_SUM]) for m in metrics) / examples
    return MetricRecord(out)


def evaluate_message(node: int, architecture: str, arrays: ArrayRecord) -> Message:
    """`evaluate`: the node scores `arrays`, built as `architecture`, on its local test split."""
    return Message(
        RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({MODEL: architecture})}),
        dst_node_id=node,
        message_type=EVALUATE,
    )


def clip_update(update: ArrayRecord, base: ArrayRecord, max_norm: float) -> bool:
    """Scale `update`'s difference from `base` to an L2 norm of at most `max_norm`, in place; True if it was."""
    deltas = {k: update[k].numpy().astype(np.float64) - base[k].numpy() for k in update.keys()}
    norm = float(np.sqrt(sum(float((d * d).sum()) for d in deltas.values())))
    if norm <= max_norm:
        return False
    for key, delta in deltas.items():
        start = base[key].numpy()
        update[key] = Array((start + delta * (max_norm / norm)).astype(start.dtype))
    return True


class Strategy(ABC):
    """fedkd's strategy contract: what a federated method provides to the round loop.

    A method says its `phases` (in order, each a role: `TEACHER_PHASE` or `STUDENT_PHASE`), how many rounds each
    has (`num_rounds`), its initial models (`initial`), what one round does (`round`), what it keeps
    between rounds besides the global models (`state`/`restore`, checkpointed every round), how its
    models are scored on the server's test set (`score`), and which architecture its student is
    compared to in summary.json (`teacher_model`). It registers itself under its run-config name
    with `@register`. The loop, the ServerApp, checkpoints and outputs know nothing else of it.

    Not a Flower `Strategy`: Flower's `start` runs one phase of one model, while a fedkd method runs
    phases of per-architecture groups with screening and deadlines. Weights are averaged only within a
    group of one architecture, with Flower's `aggregate_arrayrecords`; a node's architecture is what it
    reported (`query.identify`).
    """

    name: ClassVar[str]
    phases: ClassVar[tuple[str, ...]] = (STUDENT_PHASE,)

    def __init__(self, cfg: RunConfig, sampler: NodeSampler) -> None:
        self.cfg = cfg
        self.sampler = sampler

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Raise ConfigError for settings the method cannot run under; the ServerApp asks before round 1."""

    def num_rounds(self, phase: str) -> int:
        """Rounds of `phase`: `num-student-rounds`, or `num-teacher-rounds` for a teacher phase."""
        return self.cfg.num_teacher_rounds if phase == TEACHER_PHASE else self.cfg.num_student_rounds

    def architecture(self, node: int, phase: str) -> str:
        """The model a node trains in `phase`: the run's teacher model, else the node's own choice."""
        return self.cfg.teacher_model if phase == TEACHER_PHASE else self.sampler.model(node)

    def initial(self, phase: str, grid: Grid, previous: Globals | None) -> Globals:
        """Seeded initial weights for every architecture among the connected nodes; `previous` holds the
        final models of the phase before, if any."""
        names = {self.architecture(n, phase) for n in self.sampler.nodes(grid, self.cfg.min_train_nodes)}
        return {n: self._initial_weights(n) for n in sorted(names)}

    def _initial_weights(self, name: str) -> ArrayRecord:
        return to_record(initial_model(name, self.cfg.dataset, self.cfg.seed))

    @abstractmethod
    def round(self, phase: str, server_round: int, globals_: Globals, grid: Grid) -> Round:
        """One round of `phase`, from the global models `globals_`."""

    def state(self) -> dict[str, ArrayRecord]:
        """What the strategy keeps between rounds besides the global models, for the checkpoint."""
        return {}

    def restore(self, state: dict[str, ArrayRecord]) -> None:
        """Take back `state()` from a checkpoint."""

    def score(self, result: Round, test: Split) -> Scores:
        """Each architecture's (loss, accuracy) on the server's test set: its global model's, by default."""
        scores = {}
        for name, arrays in result.globals.items():
            loss, correct = evaluate(load_record(build_model(name, self.cfg.dataset), arrays), test.x, test.y)
            scores[name] = (loss, correct / len(test))
        return scores

    def teacher_model(self) -> str | None:
        """The architecture summary.json compares the student's size to; None for a method without a teacher."""
        return None

    def private_epochs(self) -> int:
        """The most epochs over its private data a node may train in the run if sampled every round (with DP,
        each node spends its budget over them): `local-epochs` a round, by default."""
        return sum(self.num_rounds(phase) for phase in self.phases) * self.cfg.local_epochs

    # --- primitives the strategies build on -------------------------------------------

    def sample(self, grid: Grid) -> list[int]:
        """This round's nodes, from the sampler's seeded generator."""
        return self.sampler.sample(grid, self.cfg.fraction_train, self.cfg.min_train_nodes)

    def send(self, grid: Grid, messages: list[Message]) -> Exchange:
        """Push `messages`, pull the replies under the round's deadline; with DP on, each tells the node
        the run's `private_epochs`."""
        if self.cfg.dp_epsilon > 0:
            for message in messages:
                message.content[CONFIG][PRIVATE_EPOCHS] = self.private_epochs()
        return exchange(grid, messages, self.cfg.round_timeout)

    def screen(
        self,
        ex: Exchange,
        expected: Callable[[int], ArrayRecord | None],
        into: Round,
        check: Callable[[RecordDict], str | None] = lambda content: None,
    ) -> list[Message]:
        """Replies fit to use, in node-name order (float sums then do not depend on arrival order);
        the others are recorded in `into.rejected` with the reason, never averaged in."""
        accepted = []
        for msg in sorted(ex.ok(), key=lambda m: self.sampler.name(m.metadata.src_node_id)):
            node = msg.metadata.src_node_id
            reason = screen_reply(msg.content, expected(node), self.cfg.max_num_examples) or check(msg.content)
            if reason:
                into.rejected.append({"node": node, "reason": f"reply rejected: {reason}"})
            else:
                accepted.append(msg)
                metrics = msg.content.metric_records.get(METRICS)
                if metrics is not None and DP_EPSILON in metrics:
                    name = self.sampler.name(node)
                    into.epsilon[name] = max(float(metrics[DP_EPSILON]), into.epsilon.get(name, 0.0))
        into.accepted = [m.metadata.src_node_id for m in accepted]
        return accepted

    def screen_logits(self, ex: Exchange, rows: int, into: Round, key: str = LOGITS) -> list[Message]:
        """`screen` for logit replies: a finite (rows, classes) array under `key` is also required."""
        classes = dataset_shape(self.cfg.dataset)[1]

        def check(content: RecordDict) -> str | None:
            if key not in content.array_records or LOGITS_ARRAY not in content[key]:
                return f"no '{key}' logits in the reply"
            logits = content[key][LOGITS_ARRAY].numpy()
            if logits.shape != (rows, classes) or not np.issubdtype(logits.dtype, np.floating):
                return f"logits are {logits.dtype}{list(logits.shape)}, expected float[{rows}, {classes}]"
            if not np.isfinite(logits).all():
                return "logits hold NaN or Inf"
            return None

        return self.screen(ex, lambda node: None, into, check)

    def public_subset(self, public_size: int, server_round: int, phase: str) -> list[int]:
        """Indices of the public samples used in a round: all, or `public-samples-per-round` drawn by (seed, phase, round)."""
        wanted = self.cfg.public_samples_per_round
        if wanted == 0 or wanted >= public_size:
            return list(range(public_size))
        rng = stream_rng(self.cfg.seed, Stream.PUBLIC_SUBSET, self.phases.index(phase), server_round)
        return sorted(rng.choice(public_size, size=wanted, replace=False).tolist())

    def distill_budget(self) -> tuple[int, int]:
        """Steps and patience of server-side distillation: `distill-steps`, `distill-patience`."""
        return self.cfg.distill_steps, self.cfg.distill_patience

    def distil_groups(
        self,
        phase: str,
        globals_: Globals,
        batches: Callable[[str], BatchFn],
        validation: ValidationFn,
        into: Round,
    ) -> Globals:
        """Distil every group's model toward an ensemble on the server (FedDF's step), with early stopping."""
        out = {}
        reports = []
        budget, patience = self.distill_budget()
        for name, arrays in globals_.items():
            model = load_record(build_model(name, self.cfg.dataset), arrays)
            report = distill(
                model,
                batches(name),
                validation,
                steps=budget,
                patience=patience,
                learning_rate=self.cfg.server_learning_rate,
                temperature=self.cfg.temperature,
            )
            reports.append(report)
            out[name] = to_record(model)
        if reports:
            into.metrics["distill-steps"] = float(np.mean([r.steps for r in reports]))
            into.metrics["distill-validation-start"] = float(np.mean([r.start_validation_loss for r in reports]))
            into.metrics["distill-validation-best"] = float(np.mean([r.best_validation_loss for r in reports]))
        return out

    def check_train_reply(self, content: RecordDict) -> str | None:
        """What is wrong with a `train.*` reply beyond the screening of its weights and counts; None if nothing."""
        return None

    def train_config(self, phase: str, server_round: int) -> dict:
        """Settings a method adds to every `train.*` message's config (FedProx: its `proximal-mu`)."""
        return {}

    def train_round(
        self,
        phase: str,
        server_round: int,
        globals_: Globals,
        grid: Grid,
        action: str,
        extra: Callable[[int], dict] = lambda node: {},
    ) -> tuple[Round, list[Message]]:
        """Send each sampled node its group's model with `train.<action>`; FedAvg each group's replies.
        Returns the round and its usable replies."""
        nodes = self.sample(grid)
        # A node that joined after the start may bring an architecture without a group yet.
        missing = {self.architecture(n, phase) for n in nodes} - globals_.keys()
        globals_ = {**globals_, **{name: self._initial_weights(name) for name in sorted(missing)}}
        config = {
            SERVER_ROUND: server_round,
            EVALUATE_INCOMING: server_round > 1,
            **self.train_config(phase, server_round),
        }
        messages = [
            Message(
                RecordDict(
                    {
                        ARRAYS: globals_[self.architecture(n, phase)],
                        CONFIG: ConfigRecord({**config, MODEL: self.architecture(n, phase)}),
                        **extra(n),
                    }
                ),
                dst_node_id=n,
                message_type=message_type(MessageType.TRAIN, action),
            )
            for n in nodes
        ]
        result = Round(dict(globals_), nodes, [self.send(grid, messages)])
        replies = self.screen(
            result.exchanges[0], lambda n: globals_[self.architecture(n, phase)], result, self.check_train_reply
        )
        result.globals = self.group_average(phase, globals_, replies, result)
        if replies:
            result.metrics.update(sum_eval_counts([m.content for m in replies], NUM_EXAMPLES))
        return result, replies

    def group_average(self, phase: str, globals_: Globals, replies: list[Message], into: Round) -> Globals:
        """FedAvg within each architecture (after optional clipping); a group without replies keeps its model."""
        out = dict(globals_)
        clipped = 0
        for name in globals_:
            contents = [m.content for m in replies if self.architecture(m.metadata.src_node_id, phase) == name]
            if not contents:
                continue
            if self.cfg.clip_norm > 0:
                clipped += sum(clip_update(c[ARRAYS], globals_[name], self.cfg.clip_norm) for c in contents)
            out[name] = aggregate_arrayrecords(contents, NUM_EXAMPLES)
        into.metrics["clipped-updates"] = clipped
        return out

    def query_logits(
        self, grid: Grid, nodes: list[int], config: dict, extra: Callable[[int], dict] = lambda node: {}
    ) -> Exchange:
        """Send `query.logits` to `nodes`; the exchange."""
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord(config), **extra(n)}), dst_node_id=n, message_type=QUERY_LOGITS)
            for n in nodes
        ]
        return self.send(grid, messages)

    def evaluation_messages(self, phase: str, globals_: Globals, grid: Grid) -> list[Message]:
        """`evaluate` with each node's group model to a fraction-evaluate sample (the phase's last model)."""
        if self.cfg.fraction_evaluate == 0.0 or not globals_:
            return []
        nodes = self.sampler.sample(grid, self.cfg.fraction_evaluate, 1)
        return [
            evaluate_message(n, self.architecture(n, phase), globals_[self.architecture(n, phase)])
            for n in nodes
            if self.architecture(n, phase) in globals_
        ]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Federated accuracy and loss over the evaluation replies that carry their counts."""
        contents = [m.content for m in replies if not m.has_error() and METRICS in m.content.metric_records]
        return sum_eval_counts(contents, NUM_EXAMPLES) if contents else None

    def models_of(self, replies: list[Message], phase: str) -> list[torch.nn.Module]:
        """The client models in `replies`, each built as its node's architecture."""
        return [
            load_record(
                build_model(self.architecture(m.metadata.src_node_id, phase), self.cfg.dataset), m.content[ARRAYS]
            )
            for m in replies
        ]


# Run-config `strategy` name -> class; filled by `@register` as server_app.strategies imports every module.
STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a strategy available as run config `strategy = name`."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy name {name!r} is taken by {STRATEGIES[name].__qualname__}")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return add
