"""Load: time per round and peak memory against the number of clients, in simulation and in deployment.

    python -m benchmarks.load                       # 100, 250, 500, 1000 clients x 2; 2, 4, 8 SuperNodes
    python -m benchmarks.load --clients --supernodes 8              # the deployment part only, 8 SuperNodes
    python -m benchmarks.load --clients 20 --sampled 10 --repeats 1 --supernodes 2 --rounds 1   # smoke run
    python -m benchmarks.load --clients --supernodes --scale 1000 10000 50000 --stock \
        --results benchmarks/results/load                                    # cross-device scale

Simulation: the synthetic task (200 samples per client), `--sampled` clients trained per round and
as many scoring each phase's final model, `--rounds` teacher and student rounds, through `flwr run`
on a fresh private simulation SuperLink per run. Deployment: deploy.local (TLS, SuperNode
authentication, process isolation), one synthetic partition per SuperNode, every node sampled.
A background thread reads VmRSS from /proc every 0.2 s; a group's peak is the peak of its
processes' sum at one instant. Before each run it waits until at most --quiet-cpu (default a
quarter) of the CPU is in use and stops if that does not happen, unless --allow-busy, which runs
anyway and marks the run busy. Writes load.{json,md} to --results (default benchmarks/results) after every
run, with the commit and the machine; a part left out (`--clients` or `--supernodes` with no sizes)
keeps its last results there.

Cross-device scale (`--scale`): the same sampled work (`--sampled` nodes trained per round and scoring each phase's
final model, `--scale-rounds` teacher + student rounds) on federations of each size; time to round 1, time per
round, the whole run, peak memory and bytes, each against the smallest size. `--stock` also runs Flower's own loop
(benchmarks/stock_loop.py: `FedAvg.start`, a train and an evaluate exchange of `--sampled` nodes per round) at each
size: the floor Flower's simulation engine sets, since every tick it scans every node for messages.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from benchmarks.deployment_latency import stock_app
from benchmarks.provenance import before_timing, load_average, provenance, provenance_line, quiet_arguments
from common.config import parse_run_config
from common.data import export_partitions
from deploy.local import Deployment, deployment
from deploy.processes import PROJECT
from deploy.simulation import flower_pids, flwr_run, run_directory, simulation_superlink
from server_app.records import read_history, read_summary

RESULTS = PROJECT / "benchmarks" / "results"
SAMPLE_SECONDS = 0.2

Measure = Callable[[], dict[str, float]]
Quiet = Callable[[], dict]
SIM_GROWTH = (
    "median_round_s",
    "mean_round_s",
    "median_client_s",
    "round_over_client",
    "serverapp_outside_rounds_s",
    "serverapp_cpu_s",
    "serverapp_mib",
    "tree_mib",
)
DEPLOY_GROWTH = ("median_round_s", "superlink_mib", "serverapp_mib", "supernode_host_max_mib", "supernodes_sum_mib")
LABELS = {
    "median_round_s": "median round (s)",
    "mean_round_s": "mean round (s)",
    "median_client_s": "slowest client's handler, median over rounds (s)",
    "round_over_client": "median round / median slowest client's handler",
    "serverapp_outside_rounds_s": "ServerApp outside rounds (s)",
    "serverapp_cpu_s": "CPU time of the simulation process (s)",
    "serverapp_mib": "ServerApp process (MiB)",
    "tree_mib": "whole run (MiB)",
    "superlink_mib": "SuperLink (MiB)",
    "supernode_host_max_mib": "SuperNode host, max (MiB)",
    "supernodes_sum_mib": "SuperNode hosts, sum (MiB)",
}


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process now."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        # The command name in parentheses may hold spaces; the parent pid is the second field after it.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        table[int(entry.name)] = (ppid, cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return table


def descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    """`root` and every process below it in `table`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def rss_mib(pids: Iterable[int]) -> float:
    """Summed VmRSS of `pids` in MiB; a process that has ended counts 0."""
    total_kib = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far; 0 if it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Calls `measure` every 0.2 s in a background thread and keeps the peak of each value it returns."""

    def __init__(self, measure: Measure) -> None:
        self.measure = measure
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            for key, value in self.measure().items():
                self.peak[key] = max(value, self.peak.get(key, 0.0))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def role(cmdline: str) -> str:
    """Which part of a simulation a process is."""
    for marker, name in (
        ("flower-superlink", "SuperLink"),
        ("flower-superexec", "SuperExec"),
        ("flwr-simulation", "simulation process (ServerApp)"),
    ):
        if marker in cmdline:
            return name
    # A Ray worker changes its title as it starts (setup_worker.py, default_worker.py, ray::IDLE)
    # and as it runs (ClientAppActor).
    if any(m in cmdline for m in ("ClientAppActor", "ray::IDLE", "default_worker.py", "setup_worker.py")):
        return "Ray ClientApp workers"
    return "Ray services"


def simulation_memory(home: Path) -> Measure:
    """RSS and CPU time of the simulation process (it runs the ServerApp); RSS of the SuperLink's tree, and per role."""
    roots = flower_pids(str(home), "flower-superlink")
    if len(roots) != 1:
        raise RuntimeError(f"expected one flower-superlink with FLWR_HOME={home}, found {roots}")

    def measure() -> dict[str, float]:
        table = process_table()
        rss = {pid: rss_mib([pid]) for pid in descendants(roots[0], table)}
        simulation = [pid for pid in rss if "flwr-simulation" in table[pid][1]]
        values = {
            "serverapp_mib": sum(rss[pid] for pid in simulation),
            # CPU time only grows, so its peak is the total at the last sample.
            "serverapp_cpu_s": sum(cpu_seconds(pid) for pid in simulation),
            "tree_mib": sum(rss.values()),
            "processes": len(rss),
        }
        for pid, value in rss.items():
            key = f"{role(table[pid][1])}_mib"
            values[key] = values.get(key, 0.0) + value
        return values

    return measure


def deployment_memory(dep: Deployment) -> Measure:
    """RSS of the SuperLink, of the ServerApp process, and of each SuperNode with its SuperExec and ClientApps."""

    def measure() -> dict[str, float]:
        table = process_table()
        serverapp = [p for p in descendants(dep.superexecs["superlink"].pid, table) if "flwr-serverapp" in table[p][1]]
        values = {"superlink_mib": rss_mib([dep.superlink.pid]), "serverapp_mib": rss_mib(serverapp)}
        for index, node in dep.supernodes.items():
            host = descendants(node.pid, table) + descendants(dep.superexecs[f"supernode-{index}"].pid, table)
            values[f"supernode-{index}_process_mib"] = rss_mib([node.pid])
            values[f"supernode-{index}_host_mib"] = rss_mib(host)
        values["supernodes_sum_mib"] = sum(v for k, v in values.items() if k.endswith("_host_mib"))
        return values

    return measure


def round_times(out: Path) -> dict:
    """Round count, clients per round, time per round and where the rest of the ServerApp's time went."""
    run_dir = run_directory(out)
    history = read_history(run_dir / "history.json")
    seconds = [r.seconds for r in history]
    evaluation = sum(r.evaluation_seconds or 0.0 for r in history)
    times = {
        "rounds": len(history),
        "sampled_per_round": max(len(r.sampled) for r in history),
        "evaluated_per_phase": [r.evaluation_replies for r in history if r.evaluation_replies is not None],
        "median_round_s": statistics.median(seconds),
        "mean_round_s": statistics.mean(seconds),
        "median_exchange_s": statistics.median(r.exchange_seconds for r in history),
        "median_client_s": statistics.median(r.client_seconds for r in history),
        # A round's time follows its clients' handler time, which the shared machine's load stretches;
        # the ratio takes that out.
        "round_over_client": statistics.median(seconds) / statistics.median(r.client_seconds for r in history),
        "final_evaluations_s": evaluation,
        "failures": sum(r.failures + (r.evaluation_failures or 0) for r in history),
        "round_seconds": seconds,
    }
    if (run_dir / "summary.json").exists():
        serverapp = read_summary(run_dir / "summary.json").wall_seconds
        # The ServerApp starts with the engine: this holds Ray's start, the ClientApps' first import,
        # and the exchange that asks every node for its name (query.identify) before round 1.
        times["serverapp_outside_rounds_s"] = serverapp - sum(seconds) - evaluation
    return times


def simulation(clients: int, sampled: int, rounds: int, timeout: float, tmp: Path, quiet: Quiet) -> dict:
    """One `flwr run` with `clients` simulated nodes on a fresh SuperLink: round times and peak memory."""
    out, home = tmp / f"sim-out-{clients}", tmp / f"sim-home-{clients}"
    fraction = sampled / clients
    config = {
        "dataset": "synthetic",
        "samples-per-client": 200,
        "two-stage.num-teacher-rounds": rounds,
        "num-student-rounds": rounds,
        "fraction-train": fraction,
        "fraction-evaluate": fraction,
        "min-train-nodes": sampled,
        "round-timeout": timeout,
        "output-dir": str(out),
    }
    row: dict = {"clients": clients, "status": "complete"}
    with simulation_superlink(home) as env:
        # Waiting once the SuperLink is up lets its start-up load pass too.
        row["before_run"] = quiet()
        row["busy"] = row["before_run"]["busy"]
        with PeakMemory(simulation_memory(home)) as memory:
            start = time.perf_counter()
            try:
                done = flwr_run(env, config, clients, timeout=timeout)
            except subprocess.TimeoutExpired:
                row["status"] = f"timed out after {timeout:.0f} s"
            row["wall_s"] = time.perf_counter() - start
            row["load_average_after"] = load_average()
    # `flwr run --stream` exits 0 even when the ServerApp fails: the run directory tells.
    if row["status"] == "complete" and not any(out.glob("*/summary.json")):
        raise RuntimeError(f"run with {clients} clients failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    row.update(memory.peak)
    if out.exists() and any(out.glob("*/history.json")):
        row.update(round_times(out))
    return row


class FirstHistory:
    """Notes when a run's history.json first appears under `out` (it is written as round 1 ends), polling every
    0.1 s in a background thread."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while self.seen is None and not self._stop.wait(0.1):
            if any(self.out.glob("*/history.json")):
                self.seen = time.perf_counter()

    def __enter__(self) -> "FirstHistory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def scale_run(
    loop: str, clients: int, rounds: int, args: argparse.Namespace, tmp: Path, quiet: Quiet, app: Path | None
) -> dict:
    """One `flwr run` of fedkd (`app` None) or of the stock loop on `clients` simulated nodes, `args.sampled` of
    them trained per round and scoring each phase's final model, on a fresh SuperLink: times, peak memory, bytes."""
    out, home = tmp / f"scale-{loop}-{rounds}-{clients}", tmp / f"scale-home-{loop}-{rounds}-{clients}"
    fraction = args.sampled / clients
    config: dict = {
        "dataset": "synthetic",
        "samples-per-client": 200,
        # The stock loop runs the teacher's rounds only: as many as fedkd's two phases together.
        "two-stage.num-teacher-rounds": rounds if loop == "fedkd" else 2 * rounds,
        "num-student-rounds": rounds,
        "fraction-train": fraction,
        "fraction-evaluate": fraction,
        "min-train-nodes": args.sampled,
        "min-evaluate-nodes": args.sampled,
        "round-timeout": args.timeout,
        "output-dir": str(out),
    }
    if loop == "fedkd" and args.identify_all_max_nodes is not None:
        config["identify-all-max-nodes"] = args.identify_all_max_nodes
    row: dict = {"loop": loop, "clients": clients, "rounds": rounds, "status": "complete"}
    with simulation_superlink(home) as env:
        row["before_run"] = quiet()
        row["busy"] = row["before_run"]["busy"]
        with PeakMemory(simulation_memory(home)) as memory, FirstHistory(out) as first:
            start = time.perf_counter()
            try:
                done = flwr_run(env, config, clients, timeout=args.timeout, app=app)
            except subprocess.TimeoutExpired:
                row["status"] = f"timed out after {args.timeout:.0f} s"
            row["wall_s"] = time.perf_counter() - start
            row["load_average_after"] = load_average()
    row.update(memory.peak)
    if loop == "stock":
        if (out / "stock-rounds.json").exists():
            # Gaps between the ends of rounds 0 (the initial evaluation), 1, 2, ...: the first gap holds round 1 and
            # everything the engine did before it, so the rounds are timed from the second on.
            seconds = json.loads((out / "stock-rounds.json").read_text())[1:]
            row.update(median_round_s=statistics.median(seconds), round_seconds=seconds)
        elif row["status"] == "complete":
            row["status"] = "failed"
            row["output_tail"] = done.stdout[-3000:] + done.stderr[-3000:]
        return row
    summaries = list(out.glob("*/summary.json"))
    if not summaries or read_summary(summaries[0]).status != "complete":
        row["status"] = "failed" if row["status"] == "complete" else row["status"]
        row["output_tail"] = "" if row["status"].startswith("timed out") else done.stdout[-3000:] + done.stderr[-3000:]
        return row
    run_dir = summaries[0].parent
    history, summary = read_history(run_dir / "history.json"), read_summary(summaries[0])
    seconds = [r.seconds for r in history]
    evaluations = [r for r in history if r.evaluation_nodes is not None]
    row.update(
        # history.json first appears as round 1 ends: less that round, what came before it.
        time_to_round1_s=first.seen - start - history[0].seconds if first.seen else None,
        median_round_s=statistics.median(seconds),
        round_seconds=seconds,
        final_evaluations_s=sum(r.evaluation_seconds or 0.0 for r in history),
        sampled_per_round=max(len(r.sampled) for r in history),
        evaluated_per_phase=[r.evaluation_nodes for r in evaluations],
        federated_accuracy_se=[r.federated_accuracy_se for r in evaluations],
        bytes_total=summary.bytes_total,
        serverapp_wall_s=summary.wall_seconds,
    )
    return row


def superlink_errors(log: str) -> dict[str, int]:
    """How often each unexpected error the SuperLink answered with (HTTP 500) appears in its log."""
    found: dict[str, int] = {}
    for match in re.finditer(r"\[UnexpectedError:(\w+)\] ([^\n]+)", log):
        found[f"{match[1]}: {match[2]}"] = found.get(f"{match[1]}: {match[2]}", 0) + 1
    return found


def deployed(
    supernodes: int, rounds: int, round_timeout: float, timeout: float, tmp: Path, database: str, quiet: Quiet
) -> dict:
    """One run on a fresh deployment of `supernodes` SuperNodes, every node sampled: round times and peak memory."""
    files = export_partitions(parse_run_config({"dataset": "synthetic"}), supernodes, tmp / f"data-{supernodes}")
    out, work = tmp / f"deploy-out-{supernodes}", tmp / f"deploy-{supernodes}"
    config = {
        "dataset": "synthetic",
        "two-stage.num-teacher-rounds": rounds,
        "num-student-rounds": rounds,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "round-timeout": round_timeout,
        "output-dir": str(out),
    }
    # Checked before the deployment is up: its SuperNodes' idle polling is part of what is measured.
    before = quiet()
    with deployment(work, files, database=database) as dep:
        with PeakMemory(deployment_memory(dep)) as memory:
            start = time.perf_counter()
            run = dep.run(config)
            output = run.communicate(timeout=timeout)[0]
            wall = time.perf_counter() - start
            after = load_average()
        superlink_log = (work / "superlink.log").read_text(errors="replace")
    if not list(out.glob("*/history.json")):
        raise RuntimeError(f"run on {supernodes} SuperNodes recorded no round:\n{output[-6000:]}")
    summaries = list(out.glob("*/summary.json"))
    # `flwr run` exits 0 even when the ServerApp failed: only a complete summary counts as complete, and a
    # run that stopped early keeps what it measured, with the end of its output and of the SuperLink's log.
    complete = bool(summaries) and read_summary(summaries[0]).status == "complete"
    ended = (
        {}
        if complete
        else {
            "output_tail": output[-3000:],
            "superlink_log_tail": "\n".join(
                line
                for line in superlink_log.splitlines()
                if "Push replies" not in line and "uvicorn.access" not in line
            )[-3000:],
        }
    )
    peak = memory.peak
    row = {
        "supernodes": supernodes,
        "database": database,
        "status": "complete" if complete else "stopped early",
        **ended,
        "wall_s": wall,
        "before_run": before,
        "busy": before["busy"],
        "load_average_after": after,
        "superlink_mib": peak["superlink_mib"],
        "serverapp_mib": peak["serverapp_mib"],
        "supernodes_sum_mib": peak["supernodes_sum_mib"],
        "supernode_host_max_mib": max(v for k, v in peak.items() if k.endswith("_host_mib")),
        "supernode_process_max_mib": max(v for k, v in peak.items() if k.endswith("_process_mib")),
        "superlink_errors": superlink_errors(superlink_log),
    }
    return {**row, **round_times(out)}


def growth(rows: list[dict], size: str, keys: tuple[str, ...]) -> dict:
    """Per key: the ratio of its mean at the largest size to that at the smallest, and a least-squares line
    a + b * size over every run."""
    rows = [r for r in rows if all(k in r for k in keys)]
    sizes = sorted({r[size] for r in rows})
    if len(sizes) < 2:
        return {}
    out = {}
    for key in keys:
        fit = statistics.linear_regression([r[size] for r in rows], [r[key] for r in rows])
        first, last = (statistics.mean(r[key] for r in rows if r[size] == n) for n in (sizes[0], sizes[-1]))
        # How many of the runs behind a line started busy, or with no record of the load before them.
        out[key] = {
            "ratio": last / first,
            "from": sizes[0],
            "to": sizes[-1],
            "intercept": fit.intercept,
            "slope": fit.slope,
            "runs": len(rows),
            "busy": sum(r.get("busy") is True for r in rows),
            "unchecked": sum("busy" not in r for r in rows),
        }
    return out


def growth_lines(fits: dict, unit: int, unit_name: str) -> list[str]:
    """Markdown bullets: ratio from the smallest to the largest size, the fitted line, and the busy runs in it."""

    def runs(f: dict) -> str:
        if "runs" not in f:
            return ""
        unchecked = f", {f['unchecked']} with no load record before the run" if f["unchecked"] else ""
        return f"; {f['runs']} runs, {f['busy']} busy{unchecked}"

    return [
        f"- {LABELS[key]}: x{f['ratio']:.2f} from {f['from']} to {f['to']} {unit_name} (means); "
        f"least-squares line {f['intercept']:.4g} {f['slope'] * unit:+.3g} per {unit} {unit_name}{runs(f)}"
        for key, f in fits.items()
    ]


def load_cell(row: dict) -> str:
    """The load average before / after the run, the before marked busy; n/a where the row has no record of it."""
    before = row.get("before_run")
    first = "n/a" if before is None else f"{before['load_average']:.2f}" + (" **busy**" if before["busy"] else "")
    # Rows written before the load was read before the run hold the after-run value as `load_average`.
    after = row.get("load_average_after", row.get("load_average"))
    return f"{first} / {'n/a' if after is None else format(after, '.1f')}"


def load_note(rows: list[dict]) -> str:
    """What the load column means, with the CPU share the runs waited for."""
    thresholds = sorted({r["before_run"]["threshold"] for r in rows if "before_run" in r})
    if not thresholds:
        return "Load: the 1-minute load average right after the run; these runs have no reading from before it."
    return (
        f"Load: the 1-minute load average right before the run (after waiting until at most "
        f"{'/'.join(f'{t:.0%}' for t in thresholds)} of the CPU was in use) and right after it; **busy** marks a "
        "run that started with more of the CPU in use, n/a a run with no reading from before it."
    )


def provenance_lines(records: list[dict]) -> list[str]:
    """The provenance line of each distinct commit and machine in `records`; a note for those without one."""
    lines = list(dict.fromkeys(provenance_line(r["provenance"]) for r in records if "provenance" in r))
    missing = sum("provenance" not in r for r in records)
    return lines + ([f"The commit and machine were not recorded for {missing} of the runs above."] if missing else [])


def fmt(row: dict, key: str, spec: str) -> str:
    """`row[key]` formatted, or n/a when the run did not get that far."""
    return format(row[key], spec) if key in row else "n/a"


def simulation_report(part: dict) -> list[str]:
    """The simulation's table, how its figures grow with the number of clients, and the largest run's memory by role."""
    args, sim = part["args"], part["runs"]
    sampled = sorted({r["sampled_per_round"] for r in sim if "sampled_per_round" in r})
    lines = [
        f"Simulation: synthetic task, 200 samples per client, {args['sampled']} clients per round "
        f"(sampled: {sampled}) and as many scoring each phase's final model, {args['rounds']} teacher + "
        f"{args['rounds']} student rounds, 5 ClientApp workers; a fresh simulation SuperLink per run, "
        f"{args['repeats']} runs per size (sizes in alternating order). Peak RSS sampled every 0.2 s.",
        "",
        "| clients | run | status | median round (s) | mean round (s) | slowest client's handler, median (s) "
        "| round / handler | ServerApp outside rounds (s) | wall (s) | CPU, simulation process (s) "
        "| peak RSS, simulation process with the ServerApp (MiB) | peak RSS, whole run (MiB) | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(sim, key=lambda r: (r["clients"], r["repeat"])):
        cells = [
            str(r["clients"]),
            str(r["repeat"]),
            r["status"],
            fmt(r, "median_round_s", ".3f"),
            fmt(r, "mean_round_s", ".3f"),
            fmt(r, "median_client_s", ".3f"),
            fmt(r, "round_over_client", ".1f"),
            fmt(r, "serverapp_outside_rounds_s", ".1f"),
            fmt(r, "wall_s", ".1f"),
            fmt(r, "serverapp_cpu_s", ".1f"),
            fmt(r, "serverapp_mib", ".0f"),
            fmt(r, "tree_mib", ".0f"),
            load_cell(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", load_note(sim), *(["", *growth_lines(part["growth"], 1000, "clients")] if part["growth"] else [])]
    largest = max(sim, key=lambda r: r["clients"])
    roles = {k[:-4]: v for k, v in largest.items() if k.endswith("_mib") and k not in LABELS}
    return lines + [
        "",
        f"Peak RSS by role with {largest['clients']} clients (MiB): "
        + ", ".join(f"{name} {value:.0f}" for name, value in roles.items())
        + ".",
        # The simulation runs share their invocation's record.
        "",
        *provenance_lines([part] * len(sim)),
    ]


def deployment_report(part: dict) -> list[str]:
    """The deployment's table, how its figures grow with the number of SuperNodes, and the SuperLink's errors."""
    args, dep = part["args"], part["runs"]
    lines = [
        "Deployment: deploy.local on this machine (TLS, SuperNode authentication, process isolation), synthetic "
        f"task, every node sampled, {args['rounds']} teacher + {args['rounds']} student rounds, round-timeout "
        f"{args['round_timeout']:.0f} s (a lost reply makes its round wait that long). A SuperNode host is the "
        "SuperNode with its SuperExec and the ClientApp processes it starts.",
        "",
        "| SuperNodes | SuperLink state | rounds done | median round (s) | mean round (s) | wall (s) | SuperLink (MiB) "
        "| ServerApp process (MiB) "
        "| SuperNode process, max (MiB) | SuperNode host, max (MiB) | SuperNode hosts, sum (MiB) "
        "| failed replies | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in dep:
        done = str(r["rounds"]) + ("" if r["status"] == "complete" else " (stopped early)")
        cells = [
            str(r["supernodes"]),
            r["database"],
            done,
            f"{r['median_round_s']:.2f}",
            f"{r['mean_round_s']:.2f}",
            f"{r['wall_s']:.0f}",
            f"{r['superlink_mib']:.0f}",
            f"{r['serverapp_mib']:.0f}",
            f"{r['supernode_process_max_mib']:.0f}",
            f"{r['supernode_host_max_mib']:.0f}",
            f"{r['supernodes_sum_mib']:.0f}",
            str(r["failures"]),
            load_cell(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    bullets = growth_lines(part["growth"], 1, "SuperNode")
    bullets += [
        f"- {r['supernodes']} SuperNodes, SuperLink state {r['database']}: the run stopped after {r['rounds']} rounds; "
        "the end of its output and of "
        "the SuperLink's log are in load.json"
        for r in dep
        if r["status"] != "complete"
    ]
    bullets += [
        f"- {r['supernodes']} SuperNodes, SuperLink state {r['database']}: the SuperLink answered {count} request(s) "
        f"with HTTP 500, {error}"
        for r in dep
        for error, count in r["superlink_errors"].items()
    ]
    return lines + ["", load_note(dep), *(["", *bullets] if bullets else []), "", *provenance_lines(dep)]


def against(row: dict, base: dict | None, key: str, spec: str, scale: float = 1.0) -> str:
    """`row[key]` formatted (divided by `scale`), with its ratio to `base[key]`; n/a where the run has none."""
    if row.get(key) is None:
        return "n/a"
    cell = format(row[key] / scale, spec)
    if base is not None and base.get(key):
        cell += f" (x{row[key] / base[key]:.2f})"
    return cell


def round_split(row: dict) -> dict:
    """Round 1 apart from the later rounds (their median): round 1 also pays for the ClientApps' first start, and
    in fedkd for identifying its nodes. The stock loop's round 1 is not told apart from what came before it."""
    seconds = row.get("round_seconds") or []
    if row["loop"] == "stock":
        return {"later_round_s": statistics.median(seconds)} if seconds else {}
    later = {"later_round_s": statistics.median(seconds[1:])} if len(seconds) > 1 else {}
    return {"round1_s": seconds[0], **later} if seconds else {}


def scale_report(part: dict) -> list[str]:
    """The cross-device tables, one per number of rounds: each figure with its ratio to the smallest federation's."""
    args, runs = part["args"], part["runs"]
    lines = [
        f"Cross-device scale: synthetic task, 200 samples per client, {args['sampled']} nodes sampled per round "
        f"and {args['sampled']} scoring each phase's final model, whatever the federation's size; a fresh "
        "simulation SuperLink per run, 5 ClientApp workers, one run per size. fedkd identifies nodes "
        + (
            f"whole up to identify-all-max-nodes = {args['identify_all_max_nodes']}, else as they are sampled"
            if args.get("identify_all_max_nodes") is not None
            else "as the run config's default says (whole up to 1,000 nodes, else as they are sampled)"
        )
        + ". Stock: Flower's `FedAvg.start` over fedkd's ClientApp (benchmarks/stock_loop.py), its teacher "
        "rounds as many as fedkd's two phases together, each a train and an evaluate exchange of the sampled "
        "nodes. In brackets: the ratio to the smallest federation's run of the same loop and rounds. "
        "Before round 1: from `flwr run` to the start of round 1 (Ray's start, the ServerApp's start, any "
        "identification); round 1 also pays for the ClientApps' first start and, in fedkd, for identifying the "
        "nodes it samples; later rounds: the median of the others (fedkd: of both phases; stock: from round 2 "
        "on, its round 1 is not told apart from its start). Peak RSS sampled every 0.2 s; the simulation process "
        "runs the ServerApp and Flower's simulation engine together.",
    ]
    for rounds in sorted({r["rounds"] for r in runs}):
        lines += [
            "",
            f"{rounds} + {rounds} rounds:",
            "",
            "| nodes | loop | status | before round 1 (s) | round 1 (s) | later rounds, median (s) | whole run (s) "
            "| simulation process, peak (MiB) | whole run, peak (MiB) | MB moved | evaluated per phase "
            "| load before / after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [{**r, **round_split(r)} for r in runs if r["rounds"] == rounds]
        for r in sorted(rows, key=lambda r: (r["loop"], r["clients"])):
            base = min((p for p in rows if p["loop"] == r["loop"]), key=lambda p: p["clients"])
            cells = [
                f"{r['clients']:,}",
                r["loop"],
                r["status"],
                against(r, base, "time_to_round1_s", ".1f"),
                against(r, base, "round1_s", ".1f"),
                against(r, base, "later_round_s", ".2f"),
                against(r, base, "wall_s", ".1f"),
                against(r, base, "serverapp_mib", ".0f"),
                against(r, base, "tree_mib", ".0f"),
                against(r, base, "bytes_total", ".2f", 1e6),
                ", ".join(map(str, r.get("evaluated_per_phase", []))) or "n/a",
                load_cell(r),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", load_note(runs), "", *provenance_lines([r if "provenance" in r else part for r in runs])]


def report(results: dict) -> str:
    """The markdown of the parts in `results`."""
    makers = {"simulation": simulation_report, "deployment": deployment_report, "scale": scale_report}
    parts = [make(results[name]) for name, make in makers.items() if results.get(name, {}).get("runs")]
    return "\n\n".join("\n".join(part) for part in parts)


def code_state() -> dict:
    """The commit measured, and the files that differed from it then (the FAB carries the working tree)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True).stdout

    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted": git("status", "--porcelain").splitlines()}


def write(args: argparse.Namespace, code: dict, info: dict, sim: list[dict], dep: list[dict], scale: list[dict]) -> str:
    """Write load.json and load.md with this invocation's parts; a part it does not run keeps its last results."""
    path = args.results / "load.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    measured = {"args": {**vars(args), "results": str(args.results)}, "code": code, "provenance": info}
    if args.clients:
        results["simulation"] = {**measured, "runs": sim, "growth": growth(sim, "clients", SIM_GROWTH)}
    if args.scale:
        # A run this invocation does not make (another loop, size or number of rounds) keeps its last row, so the
        # sizes can be measured in separate sessions; each row carries its own commit and machine.
        done = {(r["loop"], r["clients"], r["rounds"]) for r in scale}
        kept = [
            r for r in results.get("scale", {}).get("runs", []) if (r["loop"], r["clients"], r["rounds"]) not in done
        ]
        runs = kept + [{**r, "code": code, "provenance": info} for r in scale]
        results["scale"] = {**measured, "runs": sorted(runs, key=lambda r: (r["rounds"], r["loop"], r["clients"]))}
    if args.supernodes:
        # A size this invocation does not run keeps its last row, so sizes can be measured in separate sessions.
        kept = [
            r
            for r in results.get("deployment", {}).get("runs", [])
            if r["supernodes"] not in args.supernodes or r["database"] != args.superlink_database
        ]
        runs = sorted(
            kept + [{**r, "code": code, "provenance": info} for r in dep],
            key=lambda r: (r["database"] != "file", r["supernodes"]),
        )
        results["deployment"] = {
            **measured,
            "runs": runs,
            "growth": growth([r for r in runs if r["database"] == "file"], "supernodes", DEPLOY_GROWTH),
        }
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    table = report(results)
    (args.results / "load.md").write_text(table + "\n")
    return table


def main() -> None:
    """Run every simulation size, then every deployment size, writing the results after each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--clients", type=int, nargs="*", default=[100, 250, 500, 1000], help="simulated clients per run"
    )
    parser.add_argument("--sampled", type=int, default=50, help="clients per round (and per final evaluation)")
    parser.add_argument("--repeats", type=int, default=2, help="simulation runs per size, sizes in alternating order")
    parser.add_argument("--supernodes", type=int, nargs="*", default=[2, 4, 8], help="SuperNodes per deployment")
    parser.add_argument("--rounds", type=int, default=3, help="teacher rounds, and as many student rounds")
    parser.add_argument("--round-timeout", type=float, default=150, help="deadline of a deployment's exchanges (s)")
    parser.add_argument(
        "--superlink-database",
        default="file",
        choices=["file", ":flwr-in-memory:"],
        help="the deployed SuperLink's state: a SQLite file, or in memory",
    )
    parser.add_argument(
        "--scale", type=int, nargs="*", default=[], help="cross-device part: simulated nodes per run, smallest first"
    )
    parser.add_argument(
        "--scale-rounds", type=int, nargs="+", default=[1, 5], help="cross-device part: teacher (= student) rounds"
    )
    parser.add_argument("--stock", action="store_true", help="cross-device part: also run Flower's stock loop")
    parser.add_argument(
        "--identify-all-max-nodes", type=int, help="cross-device part: fedkd's run config key (default: its default)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for load.{json,md}")
    quiet_arguments(parser)
    args = parser.parse_args()
    code, info = code_state(), provenance()
    # Each run waits for a quiet machine itself, once its SuperLink or deployment is up.
    quiet: Quiet = partial(before_timing, args)
    sim: list[dict] = []
    dep: list[dict] = []
    scale: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        # Alternating the order of sizes between repeats spreads the shared machine's load drift over all sizes.
        for repeat in range(args.repeats):
            for clients in args.clients[::-1] if repeat % 2 else args.clients:
                run = simulation(
                    clients, args.sampled, args.rounds, args.timeout, Path(tmp) / f"repeat-{repeat}", quiet
                )
                sim.append({"repeat": repeat, **run})
                write(args, code, info, sim, dep, scale)
                print(
                    f"{clients} clients: {sim[-1]['status']}, {fmt(sim[-1], 'median_round_s', '.3f')} s per round, "
                    f"{fmt(sim[-1], 'tree_mib', '.0f')} MiB peak{', busy' if run['busy'] else ''}",
                    flush=True,
                )
        stock = stock_app(Path(tmp)) if args.stock else None
        for rounds in args.scale_rounds if args.scale else []:
            for clients in args.scale:
                for loop, app in [("fedkd", None), *([("stock", stock)] if stock else [])]:
                    scale.append(scale_run(loop, clients, rounds, args, Path(tmp), quiet, app))
                    write(args, code, info, sim, dep, scale)
                    print(
                        f"{loop}, {clients} nodes, {rounds} + {rounds} rounds: {scale[-1]['status']}, "
                        f"{fmt(scale[-1], 'wall_s', '.1f')} s, {fmt(scale[-1], 'median_round_s', '.2f')} s per round, "
                        f"{fmt(scale[-1], 'serverapp_mib', '.0f')} MiB simulation process",
                        flush=True,
                    )
        for supernodes in args.supernodes:
            dep.append(
                deployed(
                    supernodes, args.rounds, args.round_timeout, args.timeout, Path(tmp), args.superlink_database, quiet
                )
            )
            write(args, code, info, sim, dep, scale)
            print(
                f"{supernodes} SuperNodes: {dep[-1]['median_round_s']:.2f} s per round"
                f"{', busy' if dep[-1]['busy'] else ''}",
                flush=True,
            )
    print(write(args, code, info, sim, dep, scale))


if __name__ == "__main__":
    main()
