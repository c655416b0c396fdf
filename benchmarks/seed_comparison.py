"""The seed script and fedkd on the seed's config, side by side in one run.

    python -m benchmarks.seed_comparison --seeds 42 43 44

Seed config: synthetic task, 10 clients, 5 per round, 25 teacher + 25 student rounds,
3 local epochs, batch 32, Adam 0.01, T=3, alpha=0.5. Writes
benchmarks/results/seed_comparison.{json,md}; figures are ratios to the seed measured here.
"""

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.flower_local import run_summary, seeds_from_command_line, simulation_superlink
from deploy.processes import PROJECT

SEED_SCRIPT = PROJECT.parent / "shared" / "seed" / "tutorial_055.py"
RESULTS = PROJECT / "benchmarks" / "results"
APP_CONFIG = {"dataset": "synthetic", "partitioner": "iid", "num-teacher-rounds": 25, "num-student-rounds": 25,
              "fraction-train": 0.5, "local-epochs": 3, "batch-size": 32, "learning-rate": 0.01,
              "temperature": 3.0, "alpha": 0.5, "teacher-model": "mlp-128x64", "model": "mlp-32"}


def run_seed_script(seed: int) -> dict:
    """The seed's own classes, run as its main() does but with `seed`, timing each round."""
    import numpy as np
    import torch

    spec = importlib.util.spec_from_file_location("tutorial_055", SEED_SCRIPT)
    seed_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed_module)
    start = time.perf_counter()
    config = seed_module.KDConfig(seed=seed)
    torch.manual_seed(seed)
    np.random.seed(seed)
    clients = [seed_module.KDClient(i, seed_module.KDDataset(seed=seed + i), config) for i in range(config.num_clients)]
    server = seed_module.KDServer(clients, seed_module.KDDataset(seed=999), config)
    # Each round ends with one aggregate(); the time between two of them is a round.
    ends, aggregate = [], server.aggregate
    server.aggregate = lambda updates, model: (aggregate(updates, model), ends.append(time.perf_counter()))
    train_start = time.perf_counter()
    history = server.train()
    wall = time.perf_counter() - start
    rounds = [b - a for a, b in zip([train_start, *ends[:-1]], ends)]
    return {
        "teacher_accuracy": server.evaluate(server.teacher)["accuracy"],
        "student_accuracy": history[-1]["accuracy"],
        "median_round_seconds": statistics.median(rounds),
        "wall_seconds": wall,
    }


def run_app(env: dict, seed: int, out: Path) -> dict:
    """fedkd through `flwr run` on the seed's config."""
    start = time.perf_counter()
    summary = run_summary(env, {**APP_CONFIG, "seed": seed}, 10, out)
    wall = time.perf_counter() - start
    return {
        "teacher_accuracy": summary["teacher_accuracy"],
        "student_accuracy": summary["student_accuracy"],
        "median_round_seconds": summary["median_round_seconds"],
        "wall_seconds": wall,
        "serverapp_seconds": summary["wall_seconds"],
    }


def _stats(runs: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(seed_runs: list[dict], app_runs: list[dict], seeds: list[int]) -> str:
    """Markdown table: mean (std) per system, and fedkd as a ratio to the seed."""
    rows = [("teacher accuracy", "teacher_accuracy", "{:.3f}"), ("student accuracy", "student_accuracy", "{:.3f}"),
            ("median time per round (s)", "median_round_seconds", "{:.3f}"),
            ("end-to-end wall time (s)", "wall_seconds", "{:.1f}")]
    lines = [f"Seeds {seeds}; mean (std) over seeds.", "",
             "| metric | seed script | fedkd (`flwr run`, simulation) | fedkd / seed |", "|---|---|---|---|"]
    for label, key, fmt in rows:
        (sm, ss), (am, as_) = _stats(seed_runs, key), _stats(app_runs, key)
        lines.append(f"| {label} | {fmt.format(sm)} ({fmt.format(ss)}) | {fmt.format(am)} ({fmt.format(as_)}) | {am / sm:.2f} |")
    return "\n".join(lines)


def main() -> None:
    """Run both systems for every seed and write the results."""
    seeds = seeds_from_command_line(__doc__)
    RESULTS.mkdir(parents=True, exist_ok=True)
    seed_runs, app_runs = [], []
    with tempfile.TemporaryDirectory() as tmp, simulation_superlink(Path(tmp) / "flwr-home") as env:
        for seed in seeds:
            seed_runs.append(run_seed_script(seed))
            app_runs.append(run_app(env, seed, Path(tmp) / f"out-{seed}"))
            print(f"seed {seed}: seed script {seed_runs[-1]}\n         fedkd {app_runs[-1]}", flush=True)
    table = report(seed_runs, app_runs, seeds)
    (RESULTS / "seed_comparison.json").write_text(json.dumps({"seeds": seeds, "seed_script": seed_runs, "fedkd": app_runs}, indent=2))
    (RESULTS / "seed_comparison.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
