"""Round latency of the compose deployment against the one-machine launcher, side by side.

    python -m benchmarks.compose_latency --rounds 4 --repeats 2

The same 3 digits node files (the README's `common.data export`), the same run config, every
node sampled: once on `docker-compose.yml` (containers, Flower's images or their stand-ins, the
app image built offline) and once on `deploy.local` (processes on this machine), alternately.
Both have TLS, SuperNode authentication and process isolation. Before the deployments come up it
waits until at most --quiet-cpu (default a quarter) of the CPU is in use and stops if that does not
happen, unless --allow-busy; before each run it records the CPU share and the load average. Writes
compose_latency.{json,md} to --results (default benchmarks/results), with the commit and the machine.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.provenance import before_timing, provenance, provenance_line, quiet_arguments, quiet_line, reading
from deploy.local import deployment
from deploy.processes import PROJECT, sigterm_unwinds
from server_app.records import read_history
from tests.deploy.compose_stack import compose_stack, docker_unavailable, flower_images

RESULTS = PROJECT / "benchmarks" / "results"


def teacher_rounds(federation, run_config: dict, app: Path | None, out: Path) -> list[float]:
    """Run to the end; the teacher rounds' wall seconds from the run's history."""
    run = federation.run(run_config, app=app)
    output = run.communicate(timeout=1800)[0]
    if run.returncode != 0:
        raise RuntimeError(output[-6000:])
    history = read_history(max(out.glob("*/history.json"), key=lambda p: p.stat().st_mtime))
    return [r.seconds for r in history if r.phase == "teacher"]


def load_cell(before: dict) -> str:
    """The CPU share in use and the load average before a run."""
    return f"{before['cpu_busy']:.0%} / {before['load_average']:.2f}"


def main() -> None:
    """Bring both deployments up, run them alternately, report median rounds and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each deployment")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for compose_latency.{json,md}")
    quiet_arguments(parser)
    args = parser.parse_args()
    if reason := docker_unavailable():
        raise SystemExit(f"compose latency needs Docker: {reason}")
    base = {
        "two-stage.num-teacher-rounds": args.rounds,
        "num-student-rounds": 1,
        "fraction-train": 1.0,
        "fraction-evaluate": 1.0,
        "local-epochs": 3,
    }
    images = flower_images()
    runs = []
    with tempfile.TemporaryDirectory() as tmp, sigterm_unwinds():
        tmp = Path(tmp)
        stack = compose_stack(tmp / "compose")
        data = stack.work / "data"
        try:
            stack.build()
            # Checked before either deployment is up: their own idle polling is part of what is measured.
            quiet = before_timing(args)
            stack.compose("up", "-d")
            for i in range(3):
                stack.flwr(
                    ["supernode", "register", str(stack.work / "certs" / f"supernode-{i}.pub"), stack.connection]
                )
            stack.wait_online(3, timeout=180)
            with deployment(tmp / "local", sorted(data.glob("part-*.npz"))) as dep:
                for repeat in range(args.repeats):
                    out = tmp / f"local-{repeat}"
                    before = reading()
                    seconds = teacher_rounds(
                        dep, {**base, "output-dir": str(out), "server-test": str(data / "server-test.npz")}, None, out
                    )
                    runs.append(
                        {"deployment": "deploy.local", "repeat": repeat, "before_run": before, "rounds": seconds}
                    )
                    before = reading()
                    seconds = teacher_rounds(
                        stack, {**base, "server-test": "/data/server-test.npz"}, stack.work, stack.work / "outputs"
                    )
                    runs.append({"deployment": "compose", "repeat": repeat, "before_run": before, "rounds": seconds})
                    print(f"repeat {repeat}: {runs[-2]['rounds']} / {runs[-1]['rounds']}", flush=True)
        finally:
            stack.down()
    median = {
        d: statistics.median(s for r in runs if r["deployment"] == d for s in r["rounds"])
        for d in ("deploy.local", "compose")
    }
    spread = {
        d: (
            min(s for r in runs if r["deployment"] == d for s in r["rounds"]),
            max(s for r in runs if r["deployment"] == d for s in r["rounds"]),
        )
        for d in median
    }
    loads = {d: [r["before_run"] for r in runs if r["deployment"] == d] for d in median}
    info = {**provenance(), "flower_images": images}
    table = "\n".join(
        [
            f"3 SuperNodes, digits (README's node files), TLS + SuperNode authentication, process isolation, "
            f"every node sampled, {args.rounds} teacher rounds x {args.repeats} runs per deployment, alternately.",
            "",
            "| deployment | median round (s) | fastest-slowest (s) | ratio to deploy.local "
            "| CPU in use / load average before each run |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {median[d]:.2f} | {spread[d][0]:.2f}-{spread[d][1]:.2f} "
                f"| {median[d] / median['deploy.local']:.2f} "
                f"| {', '.join(load_cell(x) for x in loads[d])} |"
                for d, name in (
                    ("deploy.local", "`deploy.local` (processes)"),
                    ("compose", "`docker-compose.yml` (containers)"),
                )
            ),
            "",
            quiet_line([quiet, *(r["before_run"] for r in runs)], info["cores"]) + " The quiet check ran before "
            "the deployments came up; with both up, their idle polling keeps part of the CPU busy.",
            "",
            provenance_line(info),
            "Flower images: " + ", ".join(f"`{k}` {v}" for k, v in images.items()) + ".",
        ]
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "compose_latency.json").write_text(
        json.dumps({"provenance": info, "quiet_check": quiet, "runs": runs}, indent=2)
    )
    (args.results / "compose_latency.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
