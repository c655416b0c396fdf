"""The round loop shared by fedkd's strategies: run a round, check, evaluate, record, checkpoint."""

import math
import statistics
import time
from logging import INFO, WARNING

from flwr.common import log
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data import Split
from server_app import checkpoint
from server_app.outputs import RunDirectory
from server_app.records import Failure, RoundRecord, metric_fields
from server_app.strategies import Globals, Strategy


class RunAborted(RuntimeError):
    """The run cannot go on; the message says why."""


def _check_replies(
    cfg: RunConfig, phase: str, server_round: int, sent: int, accepted: int, failures: list[dict]
) -> None:
    needed = max(1, math.ceil(cfg.min_replies * sent))
    if accepted < needed:
        reasons = "; ".join(f"node {f['node']}: {f['reason']}" for f in failures)
        raise RunAborted(
            f"{phase} round {server_round}: {accepted} of {sent} sampled nodes replied usably, "
            f"min-replies = {cfg.min_replies} needs {needed}. Failures: {reasons or 'none'}"
        )


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def run_phase(
    strategy: Strategy,
    phase: str,
    grid: Grid,
    cfg: RunConfig,
    globals_: Globals,
    test: Split | None,
    run_dir: RunDirectory,
    first_round: int = 1,
) -> Globals:
    """Run rounds `first_round`.. of `phase`, recording and checkpointing each; score on `test` if given."""
    num_rounds = strategy.num_rounds(phase)
    for server_round in range(first_round, num_rounds + 1):
        start = time.perf_counter()
        result = strategy.round(phase, server_round, globals_, grid)
        failures = result.failures()
        _check_replies(cfg, phase, server_round, len(result.sent), len(result.accepted), failures)
        globals_ = result.globals
        scores = strategy.score(result, test) if test is not None else {}
        measured = metric_fields(result.metrics)
        if result.scores_previous:
            # Fused evaluation: this round's replies scored the previous round's global models.
            federated = {name: measured[name] for name in ("federated_accuracy", "federated_loss")}
            if server_round > 1 and federated["federated_accuracy"] is not None:
                run_dir.update(len(run_dir.history) - 1, **federated)
            measured.update(federated_accuracy=None, federated_loss=None)
        record = RoundRecord(
            phase=phase,
            round=server_round,
            accuracy=_mean([acc for _, acc in scores.values()]),
            loss=_mean([loss for loss, _ in scores.values()]),
            accuracy_by_model={name: acc for name, (_, acc) in scores.items()},
            bytes_down=sum(ex.bytes_down for ex in result.exchanges),
            bytes_up=sum(ex.bytes_up for ex in result.exchanges),
            seconds=time.perf_counter() - start,
            exchange_seconds=sum(ex.seconds for ex in result.exchanges),
            replies=len(result.accepted),
            failures=len(failures),
            failed=[Failure(node=strategy.sampler.name(f["node"]), reason=f["reason"]) for f in failures],
            sampled=sorted(strategy.sampler.name(n) for n in result.sent),
            dp_epsilon_by_node=dict(sorted(result.epsilon.items())) or None,
            dp_epsilon_max=max(result.epsilon.values(), default=None),
            **measured,
        )
        # The checkpoint, which carries the history, goes first: a crash between the two writes
        # never leaves a round in history.json that a resumed run cannot continue from.
        checkpoint.save(
            run_dir.path,
            checkpoint.Checkpoint(
                phase,
                server_round,
                [*run_dir.history, record],
                globals_,
                strategy.sampler.rng.getstate(),
                cfg.model_dump(mode="json", by_alias=True),
                strategy.state(),
            ),
        )
        run_dir.append(record)
        _log_round(record, num_rounds)
        for failure in record.failed:
            log(WARNING, "  %s round %d: node %s failed: %s", phase, server_round, failure.node, failure.reason)
    _final_evaluation(strategy, phase, grid, cfg, globals_, run_dir)
    return globals_


def _final_evaluation(
    strategy: Strategy, phase: str, grid: Grid, cfg: RunConfig, globals_: Globals, run_dir: RunDirectory
) -> None:
    """Score the phase's final models on the clients' local test splits; it completes the last record."""
    messages = strategy.evaluation_messages(phase, globals_, grid)
    if not messages:
        return
    start = time.perf_counter()
    ex = strategy.send(grid, messages)
    measured = metric_fields(strategy.aggregate_evaluate(strategy.num_rounds(phase), ex.ok()) or {})
    last = run_dir.history[-1]
    run_dir.update(
        len(run_dir.history) - 1,
        federated_accuracy=measured["federated_accuracy"],
        federated_loss=measured["federated_loss"],
        bytes_down=last.bytes_down + ex.bytes_down,
        bytes_up=last.bytes_up + ex.bytes_up,
        evaluation_seconds=time.perf_counter() - start,
        evaluation_replies=len(ex.ok()),
        evaluation_failures=len(ex.failures()),
    )
    log(
        INFO,
        "%s: federated accuracy %s over %d nodes (%d failed)",
        phase,
        fmt_metric(last.federated_accuracy),
        len(ex.ok()),
        len(ex.failures()),
    )


def fmt_metric(value: float | None) -> str:
    """A metric for the log: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


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
