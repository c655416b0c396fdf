"""fedkd ServerApp: validate the run config, run the strategy's phases, write the run directory."""

import statistics
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, RunConfig, parse_run_config
from common.data import DataError, Split, load_server_testset, load_test_npz
from common.models import count_params, initial_model, load_record, to_record
from common.training import evaluate
from server_app import checkpoint
from server_app.outputs import RunDirectory
from server_app.rounds import RunAborted, fmt_metric, run_phase
from server_app.sampling import NodeSampler
from server_app.strategy import PHASES, TwoStage

# Nodes of a simulation are all there at start; deployed ones get this long to connect.
NODE_GRACE_SECONDS = 10.0

app = ServerApp()


def _summary(cfg: RunConfig, run_dir: RunDirectory, models: dict, started: float) -> dict:
    history = run_dir.history
    final = {p: next((r for r in reversed(history) if r["phase"] == p), {}) for p in PHASES}
    params = {p: count_params(m) for p, m in models.items()}
    return {
        "status": "complete",
        "teacher_accuracy": final["teacher"].get("accuracy"),
        "student_accuracy": final["student"].get("accuracy"),
        "teacher_federated_accuracy": final["teacher"].get("federated_accuracy"),
        "student_federated_accuracy": final["student"].get("federated_accuracy"),
        "teacher_params": params["teacher"],
        "student_params": params["student"],
        "compression": params["teacher"] / params["student"],
        "bytes_total": sum(r["bytes_down"] + r["bytes_up"] for r in history),
        "rounds": len(history),
        "median_round_seconds": statistics.median(r["seconds"] for r in history) if history else None,
        "wall_seconds": time.perf_counter() - started,
        "run_dir": str(run_dir.path),
        "config": cfg.model_dump(mode="json", by_alias=True),
    }


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
    """Run fedkd's two-stage federated distillation."""
    started = time.perf_counter()
    try:
        cfg = parse_run_config(context.run_config)
        sampler = NodeSampler(cfg.seed, cfg.round_timeout)
        connected = _connected_nodes(cfg, sampler, grid)
        test = _server_testset(cfg)
        resumed = checkpoint.load(Path(cfg.resume_from).expanduser().resolve(), cfg) if cfg.resume_from else None
    except (ConfigError, DataError) as exc:
        log(ERROR, "fedkd: invalid run: %s", exc)
        raise

    if resumed:
        run_dir = RunDirectory.reopen(Path(cfg.resume_from).expanduser().resolve(), resumed.records)
        sampler.rng.setstate(resumed.sampler_state)
        log(INFO, "fedkd: resuming after %s round %d", resumed.phase, resumed.server_round)
    else:
        run_dir = RunDirectory(cfg.output_path(), f"{cfg.strategy}-{cfg.dataset}")
    models = {phase: initial_model(cfg, phase) for phase in PHASES}

    def evaluate_fn(phase: str, arrays: ArrayRecord) -> tuple[float | None, float | None]:
        if test is None:
            return None, None
        loss, correct = evaluate(load_record(models[phase], arrays), test.x, test.y)
        return loss, correct / len(test)

    log(INFO, "fedkd: %s on %s, %d nodes, outputs in %s", cfg.strategy, cfg.dataset, connected, run_dir.path)
    strategy = TwoStage(cfg, sampler)
    arrays: ArrayRecord | None = None
    try:
        for phase, rounds in zip(PHASES, (cfg.num_teacher_rounds, cfg.num_student_rounds)):
            first_round, start_arrays = 1, to_record(models[phase])
            if resumed and resumed.phase == "student" and phase == "teacher":
                arrays = resumed.final_teacher
                continue
            if resumed and resumed.phase == phase:
                first_round, start_arrays = resumed.server_round + 1, resumed.arrays
            strategy.start_phase(phase, arrays)
            arrays = run_phase(strategy, phase, grid, cfg, start_arrays, rounds, evaluate_fn, run_dir, first_round)
            run_dir.save_model(phase, load_record(models[phase], arrays))
    except (RunAborted, TimeoutError) as exc:
        run_dir.write_summary({**_summary(cfg, run_dir, models, started), "status": "aborted", "reason": str(exc)})
        log(ERROR, "fedkd: run aborted: %s. Finished rounds are in %s", exc, run_dir.path)
        raise
    summary = _summary(cfg, run_dir, models, started)
    run_dir.write_summary(summary)
    run_dir.plot()
    log(
        INFO, "fedkd: teacher %s, student %s (%.1fx smaller), %.2f MB in %.1f s",
        fmt_metric(summary["teacher_accuracy"]), fmt_metric(summary["student_accuracy"]), summary["compression"],
        summary["bytes_total"] / 1e6, summary["wall_seconds"],
    )
    log(INFO, "fedkd: run directory: %s", run_dir.path)
