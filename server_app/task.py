"""The run's task, fixed before round 1: from the server's test set when it has one (common/data.py
`dataset_task`), else from what the nodes report of their data: every node of a small federation, a first batch of
a large one (server_app/sampling.py), as many as round 1 samples, and more until at least `min-train-nodes` of
them reported readable data. Either way, a node whose data does not fit is refused by name when it is identified,
and the run goes on with the others."""

from collections import Counter
from logging import INFO

from flwr.common.logger import log
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data import DataError, Split, dataset_task
from common.task import Task, TaskError, describe
from server_app.sampling import NodeSampler


def from_nodes(cfg: RunConfig, sampler: NodeSampler) -> Task:
    """The task most identified nodes' data shows: the example shape most of them report (ties: the one of the node
    first by name), `num-classes` or the largest label among those nodes plus one. No standardisation: that needs a
    test set on the server."""
    reports = {sampler.name(n): r for n, r in sampler.data.items() if not isinstance(r, str)}
    if not reports:
        raise DataError(
            "the server has no test set (run config 'server-test') and no node reported readable data, so nothing "
            "defines the task's input shape and classes"
        )
    first: dict[tuple[int, ...], str] = {}
    for name in sorted(reports):
        first.setdefault(reports[name][0], name)
    counts = Counter(shape for shape, _ in reports.values())
    shape = min(counts, key=lambda s: (-counts[s], first[s]))
    classes = cfg.num_classes or max(c for s, c in reports.values() if s == shape)
    try:
        return Task(shape, classes)
    except TaskError as exc:
        raise DataError(f"the nodes' data does not define a task: {exc}") from None


def run_task(cfg: RunConfig, test: Split | None, sampler: NodeSampler, grid: Grid) -> Task:
    """The run's task (see the module docstring), handed to the sampler, which refuses the nodes it does not fit."""
    task = dataset_task(cfg, test)
    source = "the server's test set" if test is not None else "the built-in dataset"
    if task is None:
        sampler.identify_batch(grid, cfg.fraction_train, cfg.min_train_nodes)
        task, source = from_nodes(cfg, sampler), "the nodes' data"
    sampler.fix_task(task)
    log(INFO, "fedkd: task from %s: inputs %s, %d classes", source, describe(task.input_shape), task.num_classes)
    return task
