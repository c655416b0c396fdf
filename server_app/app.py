"""fedkd ServerApp: validate the run config, run the strategy's phases, write the run directory."""

import statistics
import time
from logging import ERROR, INFO
from pathlib import Path

import torch
from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, RunConfig, parse_run_config
from common.data import DataError, Split, load_server_testset, load_test_npz
from common.models import build_model, count_params, load_record
from common.training import evaluate
from server_app import checkpoint
from server_app.outputs import RunDirectory, point_latest
from server_app.records import Summary
from server_app.rounds import RunAborted, fmt_metric, run_phase
from server_app.sampling import NodeSampler
from server_app.strategies import STRATEGIES, Globals, Strategy

# Nodes of a simulation are all there at start; deployed ones get this long to connect.
NODE_GRACE_SECONDS = 10.0

app = ServerApp()


def _summary(
    cfg: RunConfig, strategy: Strategy, run_dir: RunDirectory, started: float, reason: str | None = None
) -> Summary:
    """The run's outcome: complete, or aborted for `reason`."""
    history = run_dir.history
    teacher, student = (next((r for r in reversed(history) if r.phase == p), None) for p in ("teacher", "student"))
    params = {name: count_params(build_model(name, cfg.dataset)) for name in {cfg.teacher_model, cfg.model}}
    params.update({name: count_params(build_model(name, cfg.dataset)) for name in (student.accuracy_by_model if student else {})})
    two_stage = "teacher" in strategy.phases
    return Summary(
        status="complete" if reason is None else "aborted",
        strategy=cfg.strategy,
        teacher_accuracy=teacher.accuracy if teacher else None,
        student_accuracy=student.accuracy if student else None,
        student_accuracy_by_model=student.accuracy_by_model if student else None,
        teacher_federated_accuracy=teacher.federated_accuracy if teacher else None,
        student_federated_accuracy=student.federated_accuracy if student else None,
        teacher_params=params[cfg.teacher_model] if two_stage else None,
        student_params=params[cfg.model],
        params_by_model=params,
        compression=params[cfg.teacher_model] / params[cfg.model] if two_stage else None,
        bytes_total=sum(r.bytes_down + r.bytes_up for r in history),
        rounds=len(history),
        median_round_seconds=statistics.median(r.seconds for r in history) if history else None,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir.path),
        config=cfg.model_dump(mode="json", by_alias=True),
        reason=reason,
    )


def _server_testset(cfg: RunConfig) -> Split | None:
    """The server's test set per run config `server-test`: the built-in hold-out, none, or an .npz file."""
    if cfg.server_test == "builtin":
        return load_server_testset(cfg)
    if cfg.server_test == "none":
        return None
    return load_test_npz(cfg.server_test, cfg)


def _connected_nodes(cfg: RunConfig, sampler: NodeSampler, grid: Grid) -> int:
    """Number of connected nodes; a ConfigError if fewer than min-train-nodes come within the grace time."""
    try:
        return len(sampler.nodes(grid, cfg.min_train_nodes, wait=NODE_GRACE_SECONDS))
    except TimeoutError:
        cfg.check_nodes(len(list(grid.get_node_ids())))
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the run config's strategy and write the run directory."""
    started = time.perf_counter()
    try:
        cfg = parse_run_config(context.run_config)
        sampler = NodeSampler(cfg.seed, cfg.round_timeout, cfg.model)
        connected = _connected_nodes(cfg, sampler, grid)
        test = _server_testset(cfg)
        resumed = checkpoint.load(Path(cfg.resume_from).expanduser().resolve(), cfg) if cfg.resume_from else None
    except (ConfigError, DataError) as exc:
        log(ERROR, "fedkd: invalid run: %s", exc)
        raise

    if resumed:
        run_dir = RunDirectory.reopen(Path(cfg.resume_from).expanduser().resolve(), resumed.history)
        # The run going on now is the resumed one: `latest` follows it, as for a new run.
        point_latest(cfg.output_path(), run_dir.path)
        sampler.rng.setstate(resumed.sampler_state)
        log(INFO, "fedkd: resuming after %s round %d", resumed.phase, resumed.server_round)
    else:
        run_dir = RunDirectory(cfg.output_path(), f"{cfg.strategy}-{cfg.dataset}")

    def score(globals_: Globals, test_logits: dict[str, list[torch.Tensor]] | None) -> dict[str, tuple[float, float]]:
        if test is None:
            return {}
        if test_logits is not None:
            return {name: _mean_scores([_logit_scores(t, test.y) for t in logits]) for name, logits in test_logits.items()}
        scores = {}
        for name, arrays in globals_.items():
            loss, correct = evaluate(load_record(build_model(name, cfg.dataset), arrays), test.x, test.y)
            scores[name] = (loss, correct / len(test))
        return scores

    log(INFO, "fedkd: %s on %s, %d nodes, outputs in %s", cfg.strategy, cfg.dataset, connected, run_dir.path)
    strategy = STRATEGIES[cfg.strategy](cfg, sampler)
    if resumed:
        strategy.restore(resumed.strategy_state)
    previous: Globals | None = None
    try:
        for phase in strategy.phases:
            if resumed and resumed.phase == "student" and phase == "teacher":
                previous = {cfg.teacher_model: resumed.final_teacher}
                continue
            start = strategy.initial(phase, grid, previous)
            first_round = 1
            if resumed and resumed.phase == phase:
                first_round, start = resumed.server_round + 1, resumed.globals
            previous = run_phase(strategy, phase, grid, cfg, start, score, run_dir, first_round)
            for name, arrays in previous.items():
                label = phase if len(previous) == 1 else f"{phase}-{name}"
                run_dir.save_model(label, load_record(build_model(name, cfg.dataset), arrays))
    except (RunAborted, TimeoutError) as exc:
        run_dir.write_summary(_summary(cfg, strategy, run_dir, started, reason=str(exc)))
        log(ERROR, "fedkd: run aborted: %s. Finished rounds are in %s", exc, run_dir.path)
        raise
    summary = _summary(cfg, strategy, run_dir, started)
    run_dir.write_summary(summary)
    run_dir.plot()
    log(
        INFO, "fedkd: %s: student %s%s, %.2f MB in %.1f s", cfg.strategy, fmt_metric(summary.student_accuracy),
        f" (teacher {fmt_metric(summary.teacher_accuracy)}, {summary.compression:.1f}x smaller)"
        if summary.compression else "", summary.bytes_total / 1e6, summary.wall_seconds,
    )
    log(INFO, "fedkd: run directory: %s", run_dir.path)


def _logit_scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) of logits a node computed on the server's test inputs."""
    return float(torch.nn.functional.cross_entropy(logits, y)), int((logits.argmax(1) == y).sum()) / len(y)


def _mean_scores(scores: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.fmean(s[0] for s in scores), statistics.fmean(s[1] for s in scores)
