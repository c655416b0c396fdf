"""The round loop, the only code that talks to the Grid: it samples, sends what a strategy asks, screens every
reply, records each round in history.json, checkpoints it, and ends each phase with the federated evaluation."""

import math
import statistics
import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import Message
from flwr.common import log
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data import Split
from common.protocol import CONFIG, DP_EPSILON, EVAL_CORRECT, EVAL_EXAMPLES, METRICS, PRIVATE_EPOCHS
from server_app import checkpoint
from server_app.outputs import RunDirectory, fmt_metric
from server_app.records import Failure as FailureRecord
from server_app.records import RoundRecord, metric_fields
from server_app.round import Ask, Check, Failure, Globals, Phase, Reply, RoundInput, RoundResult
from server_app.sampling import NodeSampler, accuracy_standard_error
from server_app.screening import check_metrics
from server_app.strategies import Strategy
from server_app.strategies.kit.evaluation import evaluate_message
from server_app.strategies.kit.metrics import reply_metrics
from server_app.transport import Exchange, exchange


class RunAborted(RuntimeError):
    """The run cannot go on; the message says why."""


@dataclass
class RoundTrace:
    """What the loop saw of one round's exchanges: for its checks and its record."""

    sampled: list[int]
    exchanges: list[Exchange] = field(default_factory=list)
    rejected: list[Failure] = field(default_factory=list)
    # The accepted replies of the round's last exchange with its sampled nodes.
    accepted: list[int] = field(default_factory=list)
    # Node name -> the ε it reported spent (`dp-epsilon` > 0), the largest of its accepted replies this round.
    epsilon: dict[str, float] = field(default_factory=dict)

    def failures(self) -> list[Failure]:
        """Errors and missing replies of every exchange of the round, then its rejected replies."""
        return [f for ex in self.exchanges for f in ex.failures()] + self.rejected


class RoundLoop:
    """Runs a strategy's phases over the Grid: one instance per run."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        config: dict,
        strategy: Strategy,
        sampler: NodeSampler,
        run_dir: RunDirectory,
    ) -> None:
        self.grid = grid
        self.cfg = cfg
        # The run config as checkpoints keep it: its common keys and the strategy's settings.
        self.config = config
        self.strategy = strategy
        self.sampler = sampler
        self.run_dir = run_dir

    def send(self, messages: list) -> Exchange:
        """Push `messages` and pull their replies under `round-timeout`. Each message carries the run's task, which
        the node builds its models for and checks its data against; with DP on, each also tells its node the
        strategy's `private_epochs`, over which the node spends its budget."""
        task = self.strategy.task.to_config()
        for message in messages:
            for key, value in task.items():
                message.content[CONFIG][key] = value
            if self.cfg.dp_epsilon > 0:
                message.content[CONFIG][PRIVATE_EPOCHS] = self.strategy.private_epochs()
        return exchange(self.grid, messages, self.cfg.round_timeout)

    def screen(self, ex: Exchange, ask: Ask, trace: RoundTrace) -> list[Reply]:
        """The replies fit to use, in node-name order (float sums then do not depend on arrival order); the others
        are recorded in `trace.rejected` with the reason, never handed to the strategy."""
        index = {message_id: i for i, message_id in enumerate(ex.message_ids) if message_id}
        accepted, answered = [], set()
        for msg in sorted(ex.ok(), key=lambda m: self.sampler.name(m.metadata.src_node_id)):
            node, i = msg.metadata.src_node_id, index[msg.metadata.reply_to_message_id]
            # One reply per message counts: a second one would weigh in the average twice.
            duplicate = "a second reply to one message" if i in answered else None
            answered.add(i)
            if (
                reason := duplicate
                or _check(ask.checks[i], msg)
                or check_metrics(msg.content, self.cfg.max_num_examples)
            ):
                trace.rejected.append(Failure(node, f"{ask.label} rejected: {reason}"))
                continue
            accepted.append(Reply(node, i, msg.content))
            metrics = msg.content.metric_records.get(METRICS)
            if metrics is not None and DP_EPSILON in metrics:
                name = self.sampler.name(node)
                trace.epsilon[name] = max(float(metrics[DP_EPSILON]), trace.epsilon.get(name, 0.0))
        if ask.answers_round:
            trace.accepted = [reply.node for reply in accepted]
        return accepted

    def run_round(
        self, phase: Phase, server_round: int, globals_: Globals, test: Split | None
    ) -> tuple[RoundResult, RoundTrace]:
        """One round of the strategy: sample, then each exchange it asks for. Returns its result and trace."""
        node_ids = self.sampler.connected(self.grid, self.cfg.min_train_nodes)
        sampled = self.sampler.draw(self.grid, node_ids, self.cfg.fraction_train, self.cfg.min_train_nodes).nodes
        # Known after the draw, which identifies a large federation's newly drawn nodes.
        connected = self.sampler.known(node_ids)
        trace = RoundTrace(sampled)
        steps = self.strategy.round(RoundInput(phase, server_round, globals_, sampled, connected, test))
        replies = None
        while True:
            try:
                ask = steps.send(replies)
            except StopIteration as stop:
                return stop.value, trace
            trace.exchanges.append(ex := self.send(ask.messages))
            replies = self.screen(ex, ask, trace)

    def run_phase(self, phase: Phase, globals_: Globals, test: Split | None, first_round: int = 1) -> Globals:
        """Rounds `first_round`.. of `phase`, each recorded and checkpointed; scored on `test` if given."""
        for server_round in range(first_round, phase.rounds + 1):
            start = time.perf_counter()
            result, trace = self.run_round(phase, server_round, globals_, test)
            failures = trace.failures()
            self.check_replies(phase, server_round, len(trace.sampled), len(trace.accepted), failures)
            globals_ = result.globals
            record = self.record(phase, server_round, result, trace, failures, test, time.perf_counter() - start)
            # The checkpoint, which carries the history, goes first: a crash between the two writes never leaves a
            # round in history.json that a resumed run cannot continue from.
            checkpoint.save(
                self.run_dir.path,
                checkpoint.Checkpoint(
                    phase.name,
                    server_round,
                    [*self.run_dir.history, record],
                    globals_,
                    self.sampler.rng.getstate(),
                    self.config,
                    self.strategy.state(),
                ),
            )
            self.run_dir.append(record)
            _log_round(record, phase.rounds)
            for failure in record.failed:
                log(
                    WARNING, "  %s round %d: node %s failed: %s", phase.name, server_round, failure.node, failure.reason
                )
        self.final_evaluation(phase, globals_)
        return globals_

    def record(
        self,
        phase: Phase,
        server_round: int,
        result: RoundResult,
        trace: RoundTrace,
        failures: list[Failure],
        test: Split | None,
        seconds: float,
    ) -> RoundRecord:
        """The round's record; with evaluation fused into training, its federated metrics complete the previous
        round's record instead."""
        if result.scores is not None:
            scores = result.scores
        else:
            scores = self.strategy.score(result.globals, test) if test is not None else {}
        measured = metric_fields(result.metrics)
        if result.scores_previous:
            # Fused evaluation: this round's replies scored the previous round's global models.
            federated = {name: measured[name] for name in ("federated_accuracy", "federated_loss")}
            if server_round > 1 and federated["federated_accuracy"] is not None:
                self.run_dir.update(len(self.run_dir.history) - 1, **federated)
            measured.update(federated_accuracy=None, federated_loss=None)
        return RoundRecord(
            phase=phase.name,
            round=server_round,
            accuracy=_mean([acc for _, acc in scores.values()]),
            loss=_mean([loss for loss, _ in scores.values()]),
            accuracy_by_model={name: acc for name, (_, acc) in scores.items()},
            bytes_down=sum(ex.bytes_down for ex in trace.exchanges),
            bytes_up=sum(ex.bytes_up for ex in trace.exchanges),
            seconds=seconds,
            exchange_seconds=sum(ex.seconds for ex in trace.exchanges),
            replies=len(trace.accepted),
            failures=len(failures),
            failed=[FailureRecord(node=self.sampler.name(f.node), reason=f.reason) for f in failures],
            sampled=sorted(self.sampler.name(n) for n in trace.sampled),
            dp_epsilon_by_node=dict(sorted(trace.epsilon.items())) or None,
            dp_epsilon_max=max(trace.epsilon.values(), default=None),
            **measured,
        )

    def check_replies(self, phase: Phase, server_round: int, sent: int, accepted: int, failures: list[Failure]) -> None:
        """Stop the run when fewer than `min-replies` of the sampled nodes replied usably."""
        needed = max(1, math.ceil(self.cfg.min_replies * sent))
        if accepted < needed:
            reasons = "; ".join(f"node {f.node}: {f.reason}" for f in failures)
            raise RunAborted(
                f"{phase.name} round {server_round}: {accepted} of {sent} sampled nodes replied usably, "
                f"min-replies = {self.cfg.min_replies} needs {needed}. Failures: {reasons or 'none'}"
            )

    def final_evaluation(self, phase: Phase, globals_: Globals) -> None:
        """Score the phase's final models on a sample of the nodes' local test splits (`fraction-evaluate` of them,
        at least `min-evaluate-nodes`); it completes the phase's last record with the federated accuracy, its
        standard error over the sample and the nodes it counts."""
        if self.cfg.fraction_evaluate == 0.0 or not globals_:
            return
        sample = self.sampler.sample(self.grid, self.cfg.fraction_evaluate, self.cfg.min_evaluate_nodes)
        architectures = {n: self.strategy.architecture(n, phase) for n in sample.nodes}
        messages = [evaluate_message(n, name, globals_[name]) for n, name in architectures.items() if name in globals_]
        if not messages:
            return
        start = time.perf_counter()
        ex = self.send(messages)
        scored, rejected = [], 0
        for m in ex.ok():
            reason = check_metrics(m.content, self.cfg.max_num_examples)
            if reason is None and (METRICS not in m.content.metric_records or EVAL_EXAMPLES not in m.content[METRICS]):
                reason = "no evaluation counts"
            if reason is None:
                scored.append(m.content)
            else:
                rejected += 1
                name = self.sampler.name(m.metadata.src_node_id)
                log(WARNING, "%s: node %s's evaluation rejected: %s", phase.name, name, reason)
        measured = metric_fields(reply_metrics(scored) if scored else {})
        counts = [(float(c[METRICS][EVAL_CORRECT]), float(c[METRICS][EVAL_EXAMPLES])) for c in scored]
        last = self.run_dir.history[-1]
        self.run_dir.update(
            len(self.run_dir.history) - 1,
            federated_accuracy=measured["federated_accuracy"],
            federated_loss=measured["federated_loss"],
            bytes_down=last.bytes_down + ex.bytes_down,
            bytes_up=last.bytes_up + ex.bytes_up,
            evaluation_seconds=time.perf_counter() - start,
            evaluation_replies=len(ex.ok()),
            evaluation_failures=len(ex.failures()) + rejected,
            evaluation_nodes=len(scored),
            evaluation_population=sample.population,
            federated_accuracy_se=accuracy_standard_error(counts, sample.population),
        )
        log(
            INFO,
            "%s: federated accuracy %s (standard error %s) over %d of %d nodes (%d failed)",
            phase.name,
            fmt_metric(last.federated_accuracy),
            fmt_metric(last.federated_accuracy_se),
            len(scored),
            sample.population,
            last.evaluation_failures,
        )


def _check(check: Check, msg: Message) -> str | None:
    """`check`'s reason to reject a reply; a reply the check cannot even read is rejected too, never the run."""
    try:
        return check(msg.content)
    except Exception as exc:  # whatever a node sends, one bad reply costs that reply only
        return f"unreadable ({type(exc).__name__}: {exc})"


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _log_round(r: RoundRecord, total: int) -> None:
    by_model = " ".join(f"{k} {fmt_metric(v)}" for k, v in r.accuracy_by_model.items())
    log(
        INFO,
        "[%s %d/%d] acc %s%s loss %s | down %.1f kB up %.1f kB | %.3f s | %d ok %d failed",
        r.phase,
        r.round,
        total,
        fmt_metric(r.accuracy),
        f" ({by_model})" if len(r.accuracy_by_model) > 1 else "",
        fmt_metric(r.loss),
        r.bytes_down / 1e3,
        r.bytes_up / 1e3,
        r.seconds,
        r.replies,
        r.failures,
    )
