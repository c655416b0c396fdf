"""Time per round of a deployed node on one thread against all its cores (node config `num-threads`).

    python -m benchmarks.node_threads --rounds 3 --repeats 2

A SuperLink and --supernodes SuperNodes (default 1) on this machine (deploy.local: TLS, SuperNode authentication,
process isolation), mnist5k in one node file per SuperNode, model `cnn`, FedAvg, every node sampled, --local-epochs
local epochs a round so that training dominates the round. The same run is submitted with every SuperNode at
`num-threads=1` and at `num-threads=<cores>` (the cores a node may use, its default), alternately (1, all, all, 1,
...), the SuperNodes restarted with the setting before each run. One SuperNode by default: a deployed node has its
host to itself, and SuperNodes on one host share its cores. Before each run it waits until at most --quiet-cpu of
the CPU is in use and stops if that does not happen, unless --allow-busy, which marks such runs busy. Writes
node_threads.{json,md} to --results (default benchmarks/results/node_threads), with the commit and the machine.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.deployment_latency import submit
from benchmarks.provenance import before_timing, provenance, provenance_line, quiet_arguments, quiet_line
from client_app.threads import NUM_THREADS, available_cores
from common.config import parse_run_config
from common.data import export_partitions
from deploy.local import Deployment, deployment
from deploy.processes import PROJECT
from server_app.records import read_history

RESULTS = PROJECT / "benchmarks" / "results" / "node_threads"


def schedule(settings: tuple[int, ...], repeats: int) -> list[tuple[int, int]]:
    """(repeat, threads) in run order: the settings forward in even repeats and backward in odd ones, so that
    neither setting always runs first, on a machine that warms up or gets busier over the benchmark."""
    return [(r, t) for r in range(repeats) for t in (settings if r % 2 == 0 else settings[::-1])]


def medians(runs: list[dict], baseline: int) -> list[dict]:
    """Per setting, in threads order: the median round and the median slowest-node handler time over all its runs'
    rounds, and each as a ratio to the `baseline` setting's."""
    rows = []
    for threads in sorted({run["threads"] for run in runs}):
        own = [run for run in runs if run["threads"] == threads]
        rows.append(
            {
                "threads": threads,
                "round_seconds": statistics.median(s for run in own for s in run["round_seconds"]),
                "client_seconds": statistics.median(s for run in own for s in run["client_seconds"]),
            }
        )
    base = next(row for row in rows if row["threads"] == baseline)
    for row in rows:
        row["round_ratio"] = row["round_seconds"] / base["round_seconds"]
        row["client_ratio"] = row["client_seconds"] / base["client_seconds"]
    return rows


def restart_supernodes(dep: Deployment, files: list[Path], threads: int) -> None:
    """Every SuperNode stopped and started again, with its own registered key, at `threads` torch threads."""
    for index, path in enumerate(files):
        dep.kill_supernode(index)
        # deploy.local registered each node's key as certs/supernode-<i> (make_supernode_key); the same key keeps
        # the node's identity, so the SuperLink sees the same node come back.
        dep.start_supernode(index, Path(path).resolve(), dep.certs / f"supernode-{index}", **{NUM_THREADS: threads})
    dep.wait_online(len(files))


def report(args: argparse.Namespace, info: dict, runs: list[dict], rows: list[dict]) -> str:
    """The results page: the medians and their ratio, every run, how busy the machine was, and where."""
    lines = [
        f"{args.supernodes} SuperNode(s) on one host (deploy.local: TLS, SuperNode authentication, process "
        f"isolation), mnist5k in {args.supernodes} node file(s), `cnn`, FedAvg, {args.local_epochs} local epochs a "
        f"round, {args.rounds} rounds x {args.repeats} runs per setting, alternately.",
        "",
        "| node config `num-threads` | median round (s) | ratio to 1 thread | median ClientApp handler (s) | ratio |",
        "|---|---|---|---|---|",
        *(
            f"| {r['threads']} | {r['round_seconds']:.2f} | {r['round_ratio']:.2f} | {r['client_seconds']:.2f} "
            f"| {r['client_ratio']:.2f} |"
            for r in rows
        ),
        "",
        "Every run (round times in order; the CPU share in use before it):",
        "",
        "| run | `num-threads` | rounds (s) | handler, slowest node (s) | CPU in use before | busy |",
        "|---|---|---|---|---|---|",
        *(
            f"| {i + 1} | {run['threads']} | {', '.join(f'{s:.2f}' for s in run['round_seconds'])} "
            f"| {', '.join(f'{s:.2f}' for s in run['client_seconds'])} | {run['before']['cpu_busy']:.0%} "
            f"| {'yes' if run['before']['busy'] else 'no'} |"
            for i, run in enumerate(runs)
        ),
        "",
        quiet_line([run["before"] for run in runs], info["cores"]),
        "",
        provenance_line(info),
    ]
    return "\n".join(lines)


def main() -> None:
    """Run both settings on one deployment, alternately, and report the median round and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting, alternately")
    parser.add_argument("--local-epochs", type=int, default=10)
    parser.add_argument("--supernodes", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for node_threads.{json,md}")
    quiet_arguments(parser)
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    info = provenance()
    settings = (1, available_cores())
    base = {
        "strategy": "fedavg",
        "dataset": "mnist5k",
        "model": "cnn",
        "num-student-rounds": args.rounds,
        "fraction-train": 1.0,
        "min-train-nodes": args.supernodes,
        # The final scoring by every node is no round of the phase: skipping it shortens each run, not a round.
        "fraction-evaluate": 0.0,
        "local-epochs": args.local_epochs,
    }
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = parse_run_config({"dataset": "mnist5k", "partitioner": "iid"})
        files = export_partitions(cfg, args.supernodes, tmp / "data")
        with deployment(tmp / "deploy", files) as dep:
            for repeat, threads in schedule(settings, args.repeats):
                restart_supernodes(dep, files, threads)
                # Waited for with the deployment up: its own idle polling is part of every round measured.
                before = before_timing(args)
                out = tmp / f"run-{repeat}-{threads}"
                submit(dep, PROJECT, {**base, "output-dir": str(out)})
                history = read_history(next(out.glob("*/history.json")))
                runs.append(
                    {
                        "threads": threads,
                        "repeat": repeat,
                        "round_seconds": [r.seconds for r in history],
                        "client_seconds": [r.client_seconds for r in history],
                        "before": before,
                    }
                )
                print(f"repeat {repeat}, num-threads={threads}: rounds {runs[-1]['round_seconds']}", flush=True)
    rows = medians(runs, baseline=1)
    page = report(args, info, runs, rows)
    (args.results / "node_threads.json").write_text(
        json.dumps(
            {
                "provenance": info,
                "settings": {**base, "supernodes": args.supernodes, "repeats": args.repeats},
                "medians": rows,
                "runs": runs,
            },
            indent=2,
        )
    )
    (args.results / "node_threads.md").write_text(page + "\n")
    print(page)


if __name__ == "__main__":
    main()
