"""The round loop shared by fedkd's strategies: configure, exchange, aggregate, evaluate, record."""

import math
import time
from collections.abc import Callable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.config import RunConfig
from server_app import checkpoint
from server_app.outputs import RunDirectory
from server_app.transport import exchange

# (phase, global arrays) -> (loss, accuracy) on the server's test set
EvaluateFn = Callable[[str, ArrayRecord], tuple[float, float]]


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


def run_phase(
    strategy: FedAvg,
    phase: str,
    grid: Grid,
    cfg: RunConfig,
    arrays: ArrayRecord,
    num_rounds: int,
    evaluate_fn: EvaluateFn,
    run_dir: RunDirectory,
    first_round: int = 1,
) -> ArrayRecord:
    """Run rounds `first_round`..`num_rounds` of `strategy` in `phase`, recording and checkpointing each."""
    for server_round in range(first_round, num_rounds + 1):
        start = time.perf_counter()
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        ex = exchange(grid, messages, cfg.round_timeout)
        new_arrays, metrics = strategy.aggregate_train(server_round, ex.replies)
        failures = ex.failures() + strategy.rejected
        accepted = len(ex.ok()) - len(strategy.rejected)
        _check_replies(cfg, phase, server_round, len(messages), accepted, failures)
        arrays = new_arrays
        loss, accuracy = evaluate_fn(phase, arrays)
        # Fused evaluation: this round's replies scored the previous round's global model.
        if server_round > 1 and metrics and "federated-accuracy" in metrics:
            run_dir.update(
                len(run_dir.history) - 1,
                federated_accuracy=metrics["federated-accuracy"],
                federated_loss=metrics["federated-loss"],
            )
        run_dir.append(
            {
                "phase": phase,
                "round": server_round,
                "accuracy": accuracy,
                "loss": loss,
                "federated_accuracy": None,
                "federated_loss": None,
                "train_loss": metrics.get("train-loss") if metrics else None,
                "bytes_down": ex.bytes_down,
                "bytes_up": ex.bytes_up,
                "seconds": time.perf_counter() - start,
                "exchange_seconds": ex.seconds,
                "client_seconds": metrics.get("client-seconds") if metrics else None,
                "replies": accepted,
                "clipped": int(metrics.get("clipped-updates", 0)) if metrics else 0,
                "failures": len(failures),
                "failed": [{**f, "node": strategy.sampler.name(f["node"])} for f in failures],
                "sampled": sorted(strategy.sampler.name(m.metadata.dst_node_id) for m in messages),
            }
        )
        checkpoint.save(run_dir.path, checkpoint.Checkpoint(
            phase, server_round, len(run_dir.history), arrays, strategy.final_teacher,
            strategy.sampler.rng.getstate(), cfg.model_dump(mode="json", by_alias=True),
        ))
        _log_round(run_dir.history[-1], num_rounds)
        for failure in run_dir.history[-1]["failed"]:
            log(WARNING, "  %s round %d: node %s failed: %s", phase, server_round, failure["node"], failure["reason"])
    _final_evaluation(strategy, phase, grid, cfg, arrays, num_rounds, run_dir)
    return arrays


def _final_evaluation(
    strategy: FedAvg, phase: str, grid: Grid, cfg: RunConfig, arrays: ArrayRecord,
    num_rounds: int, run_dir: RunDirectory,
) -> None:
    """Score the phase's final model on the clients' local test splits; it completes the last record."""
    messages = list(strategy.configure_evaluate(num_rounds, arrays, ConfigRecord(), grid))
    if not messages:
        return
    start = time.perf_counter()
    ex = exchange(grid, messages, cfg.round_timeout)
    metrics = strategy.aggregate_evaluate(num_rounds, ex.replies)
    last = run_dir.history[-1]
    run_dir.update(
        len(run_dir.history) - 1,
        federated_accuracy=metrics.get("federated-accuracy") if metrics else None,
        federated_loss=metrics.get("federated-loss") if metrics else None,
        bytes_down=last["bytes_down"] + ex.bytes_down,
        bytes_up=last["bytes_up"] + ex.bytes_up,
        evaluation_seconds=time.perf_counter() - start,
        evaluation_replies=len(ex.ok()),
        evaluation_failures=len(ex.failures()),
    )
    log(
        INFO, "%s: federated accuracy %s over %d nodes (%d failed)", phase,
        fmt_metric(run_dir.history[-1]["federated_accuracy"]), len(ex.ok()), len(ex.failures()),
    )


def fmt_metric(value: float | None) -> str:
    """A metric for the log: four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


def _log_round(r: dict, total: int) -> None:
    log(
        INFO,
        "[%s %d/%d] acc %s loss %s | down %.1f kB up %.1f kB | %.3f s | %d ok %d failed",
        r["phase"], r["round"], total, fmt_metric(r["accuracy"]), fmt_metric(r["loss"]),
        r["bytes_down"] / 1e3, r["bytes_up"] / 1e3, r["seconds"], r["replies"], r["failures"],
    )
