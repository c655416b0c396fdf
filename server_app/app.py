"""fedkd ServerApp: validate the run config, run the strategy's phases, write the run directory."""

import statistics
import time
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, RunConfig
from common.data import DataError, dataset_label, is_builtin, load_server_testset
from common.models import build_model, count_params, load_record
from common.sources import SourceError
from server_app import checkpoint
from server_app.loop import RoundLoop, RunAborted
from server_app.outputs import RunDirectory, fmt_metric, point_latest
from server_app.records import Summary
from server_app.round import Globals
from server_app.sampling import NodeSampler
from server_app.settings import check_models, config_dump, parse
from server_app.strategies import STRATEGIES, Strategy
from server_app.task import run_task
from server_app.tracking import TRACKERS

# Nodes of a simulation are all there at start; deployed ones get this long to connect.
NODE_GRACE_SECONDS = 10.0

app = ServerApp()


def _summary(
    cfg: RunConfig,
    config: dict,
    strategy: Strategy,
    run_dir: RunDirectory,
    started: float,
    refused: dict[str, str],
    reason: str | None = None,
) -> Summary:
    """The run's outcome: complete, or aborted for `reason`; `refused`: the nodes never sampled, by name."""
    history = run_dir.history
    last = {r.phase: r for r in history}
    phases = strategy.phases()
    teacher = next((last.get(p.name) for p in phases if p.teacher), None)
    student = last.get(phases[-1].name)
    teacher_model = strategy.teacher_model()
    names = {cfg.model, *(student.accuracy_by_model if student else {}), *([teacher_model] if teacher_model else [])}
    params = {name: count_params(build_model(name, strategy.task)) for name in sorted(names)}
    # A node's ε only grows, so its latest report is its spend over the run.
    epsilon = {node: e for r in history for node, e in (r.dp_epsilon_by_node or {}).items()}
    return Summary(
        status="complete" if reason is None else "aborted",
        strategy=cfg.strategy,
        teacher_accuracy=teacher.accuracy if teacher else None,
        student_accuracy=student.accuracy if student else None,
        student_accuracy_by_model=student.accuracy_by_model if student else None,
        teacher_federated_accuracy=teacher.federated_accuracy if teacher else None,
        student_federated_accuracy=student.federated_accuracy if student else None,
        teacher_evaluation_nodes=teacher.evaluation_nodes if teacher else None,
        teacher_federated_accuracy_se=teacher.federated_accuracy_se if teacher else None,
        student_evaluation_nodes=student.evaluation_nodes if student else None,
        student_federated_accuracy_se=student.federated_accuracy_se if student else None,
        teacher_params=params[teacher_model] if teacher_model else None,
        student_params=params[cfg.model],
        params_by_model=params,
        compression=params[teacher_model] / params[cfg.model] if teacher_model else None,
        bytes_total=sum(r.bytes_down + r.bytes_up for r in history),
        rounds=len(history),
        median_round_seconds=statistics.median(r.seconds for r in history) if history else None,
        wall_seconds=time.perf_counter() - started,
        run_dir=str(run_dir.path),
        config=config,
        reason=reason,
        dp_epsilon_by_node=dict(sorted(epsilon.items())) or None,
        dp_epsilon_max=max(epsilon.values(), default=None),
        input_shape=list(strategy.task.input_shape),
        num_classes=strategy.task.num_classes,
        refused_nodes=dict(sorted(refused.items())) or None,
    )


def _connected_nodes(cfg: RunConfig, sampler: NodeSampler, grid: Grid) -> int:
    """Number of connected nodes (a small federation's identified now); a ConfigError if fewer than min-train-nodes
    come within the grace time."""
    try:
        return len(sampler.connected(grid, cfg.min_train_nodes, wait=NODE_GRACE_SECONDS))
    except TimeoutError:
        cfg.check_nodes(len(list(grid.get_node_ids())))
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the run config's strategy and write the run directory."""
    started = time.perf_counter()
    try:
        cfg, settings = parse(context.run_config)
        config = config_dump(cfg, settings)
        tracker = TRACKERS.get(cfg.tracking)
        if tracker is not None:
            tracker.require()
        sampler = NodeSampler(cfg.seed, cfg.round_timeout, cfg.model, cfg.identify_all_max_nodes)
        connected = _connected_nodes(cfg, sampler, grid)
        test = load_server_testset(cfg)
        task = run_task(cfg, test, sampler, grid)
        test = test.standardised(task) if test is not None else None
        if not is_builtin(cfg.dataset):
            check_models(cfg, settings, task)
        resumed = checkpoint.load(Path(cfg.resume_from).expanduser().resolve(), config) if cfg.resume_from else None
    except (ConfigError, DataError, SourceError) as exc:
        log(ERROR, "fedkd: invalid run: %s", exc)
        raise

    if resumed:
        run_dir = RunDirectory.reopen(Path(cfg.resume_from).expanduser().resolve(), resumed.history)
        # The run going on now is the resumed one: `latest` follows it, as for a new run.
        point_latest(cfg.output_path(), run_dir.path)
        sampler.rng.setstate(resumed.sampler_state)
        log(INFO, "fedkd: resuming after %s round %d", resumed.phase, resumed.server_round)
    else:
        run_dir = RunDirectory(cfg.output_path(), f"{cfg.strategy}-{dataset_label(cfg.dataset)}")
    if tracker is not None:
        run_dir.track(tracker(run_dir.path, cfg.tracking_uri, config))

    log(INFO, "fedkd: %s on %s, %d nodes, outputs in %s", cfg.strategy, cfg.dataset, connected, run_dir.path)
    if not sampler.identifies_all(connected):
        log(
            INFO,
            "fedkd: more nodes than identify-all-max-nodes = %d: each is asked its name when first sampled, so the "
            "nodes one seed samples differ between runs",
            cfg.identify_all_max_nodes,
        )
    strategy = STRATEGIES[cfg.strategy](cfg, settings, sampler, task)
    if resumed:
        strategy.restore(resumed.strategy_state)
    loop = RoundLoop(grid, cfg, config, strategy, sampler, run_dir)
    refused = lambda: {sampler.name(n): reason for n, reason in sampler.refused.items()}  # noqa: E731
    previous: Globals | None = None
    # A resumed run skips the phases before its checkpoint's; what they left is in the strategy's state.
    phases = strategy.phases()
    if resumed:
        phases = phases[[p.name for p in phases].index(resumed.phase) :]
    try:
        for phase in phases:
            if resumed and phase.name == resumed.phase:
                first_round, start = resumed.server_round + 1, resumed.globals
            else:
                first_round = 1
                start = strategy.initial(phase, sampler.nodes(grid, cfg.min_train_nodes), previous)
            previous = loop.run_phase(phase, start, test, first_round)
            for name, arrays in previous.items():
                label = phase.name if len(previous) == 1 else f"{phase.name}-{name}"
                run_dir.save_model(label, load_record(build_model(name, strategy.task), arrays))
    except (RunAborted, TimeoutError) as exc:
        run_dir.write_summary(_summary(cfg, config, strategy, run_dir, started, refused(), reason=str(exc)))
        log(ERROR, "fedkd: run aborted: %s. Finished rounds are in %s", exc, run_dir.path)
        raise
    summary = _summary(cfg, config, strategy, run_dir, started, refused())
    run_dir.write_summary(summary)
    run_dir.plot()
    log(
        INFO,
        "fedkd: %s: student %s%s, %.2f MB in %.1f s",
        cfg.strategy,
        fmt_metric(summary.student_accuracy),
        f" (teacher {fmt_metric(summary.teacher_accuracy)}, {summary.compression:.1f}x smaller)"
        if summary.compression
        else "",
        summary.bytes_total / 1e6,
        summary.wall_seconds,
    )
    log(INFO, "fedkd: run directory: %s", run_dir.path)
