"""The seed script is the plain-PyTorch script this project grew from; this runs it and fedkd side by side.

    python -m benchmarks.seed_comparison                      # seeds 42-46, 20,000 common test samples
    python -m benchmarks.seed_comparison --seeds 42 --test-samples 2000 --results /tmp/seed-check
    python -m benchmarks.seed_comparison --seed-script /path/to/tutorial_055.py

The seed script is not part of this repository: by default it is read from
../shared/seed/tutorial_055.py (next to the project's directory); --seed-script points at it elsewhere.

Seed config: synthetic task, 10 clients, 5 per round, 25 teacher + 25 student rounds,
3 local epochs, batch 32, Adam 0.01, T=3, alpha=0.5. Both systems' teachers and students are
scored on one common test set: --test-samples samples of the task (32 Gaussian features,
10 uniform classes, +2 on the feature the label indexes) drawn from a seed no run uses, the same
array for both. Each side's own test set (the seed's 200 samples, fedkd's 1,000) is reported too,
as is the 1-minute load average before every timed run. Writes <results>/seed_comparison.{json,md}
(default benchmarks/results); figures are ratios to the seed measured here.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import before_timing, provenance, provenance_line, quiet_arguments, quiet_line
from deploy.processes import PROJECT
from deploy.simulation import run_directory, run_summary, simulation_superlink

SEED_SCRIPT = PROJECT.parent / "shared" / "seed" / "tutorial_055.py"
RESULTS = PROJECT / "benchmarks" / "results"
SEEDS = [42, 43, 44, 45, 46]
TEST_SAMPLES = 20_000
# Its own stream: fedkd keys its generators by (seed, stream) (common/seeds.py) and the seed script
# seeds torch's global generator with the run's seed, so neither ever draws this array.
COMMON_TEST_SEED = 20_250_055
FEATURES, CLASSES = 32, 10
APP_CONFIG = {
    "dataset": "synthetic",
    "partitioner": "iid",
    "two-stage.num-teacher-rounds": 25,
    "num-student-rounds": 25,
    "fraction-train": 0.5,
    "local-epochs": 3,
    "batch-size": 32,
    "learning-rate": 0.01,
    "two-stage.temperature": 3.0,
    "two-stage.alpha": 0.5,
    "two-stage.teacher-model": "mlp-128x64",
    "model": "mlp-32",
}


def common_test_set(n: int):
    """`n` samples drawn as the seed's KDDataset and fedkd's synthetic generator draw them, from COMMON_TEST_SEED."""
    import numpy as np
    import torch

    rng = np.random.default_rng(COMMON_TEST_SEED)
    y = rng.integers(0, CLASSES, size=n)
    x = rng.standard_normal((n, FEATURES), dtype=np.float32)
    x[np.arange(n), y % FEATURES] += 2.0
    return torch.from_numpy(x), torch.from_numpy(y)


def accuracy(model, test) -> float:
    """Share of `test` = (x, y) that `model` classifies correctly."""
    import torch

    model.eval()
    with torch.no_grad():
        return (model(test[0]).argmax(dim=1) == test[1]).sum().item() / len(test[1])


def run_seed_script(seed: int, test, script: Path = SEED_SCRIPT) -> dict:
    """The seed's own classes (from `script`), run as its main() does but with `seed`, timing each round."""
    import numpy as np
    import torch

    spec = importlib.util.spec_from_file_location("tutorial_055", script)
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
        "common_teacher_accuracy": accuracy(server.teacher, test),
        "common_student_accuracy": accuracy(server.student, test),
        "teacher_accuracy": server.evaluate(server.teacher)["accuracy"],
        "student_accuracy": history[-1]["accuracy"],
        "own_test_samples": len(server.test_data),
        "median_round_seconds": statistics.median(rounds),
        "wall_seconds": wall,
    }


def run_app(env: dict, seed: int, out: Path, test) -> dict:
    """fedkd through `flwr run` on the seed's config; its saved teacher and student scored on `test` too."""
    import torch

    from common.data import SYNTHETIC_SERVER_TEST_SIZE
    from common.models import build_model

    start = time.perf_counter()
    summary = run_summary(env, {**APP_CONFIG, "seed": seed}, 10, out)
    wall = time.perf_counter() - start
    run_dir = run_directory(out)
    if summary.status != "complete":
        raise RuntimeError(f"fedkd run {run_dir} {summary.status}: {summary.reason}")
    common = {}
    for role, name in (("teacher", APP_CONFIG["two-stage.teacher-model"]), ("student", APP_CONFIG["model"])):
        model = build_model(name, APP_CONFIG["dataset"])
        model.load_state_dict(torch.load(run_dir / f"{role}.pt", weights_only=True))
        common[f"common_{role}_accuracy"] = accuracy(model, test)
    return {
        **common,
        "teacher_accuracy": summary.teacher_accuracy,
        "student_accuracy": summary.student_accuracy,
        "own_test_samples": SYNTHETIC_SERVER_TEST_SIZE,
        "median_round_seconds": summary.median_round_seconds,
        "wall_seconds": wall,
        "serverapp_seconds": summary.wall_seconds,
    }


def _stats(runs: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _standard_error(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


def report(seed_runs: list[dict], app_runs: list[dict], seeds: list[int], test_samples: int, info: dict) -> str:
    """Markdown table: mean (std) per system, and fedkd as a ratio to the seed; then test sets, load, provenance."""
    own_seed, own_app = seed_runs[0]["own_test_samples"], app_runs[0]["own_test_samples"]
    rows = [
        (f"teacher accuracy, common test set ({test_samples:,})", "common_teacher_accuracy", "{:.3f}"),
        (f"student accuracy, common test set ({test_samples:,})", "common_student_accuracy", "{:.3f}"),
        (f"teacher accuracy, own test set (seed {own_seed:,}, fedkd {own_app:,})", "teacher_accuracy", "{:.3f}"),
        (f"student accuracy, own test set (seed {own_seed:,}, fedkd {own_app:,})", "student_accuracy", "{:.3f}"),
        ("median time per round (s)", "median_round_seconds", "{:.3f}"),
        ("end-to-end wall time (s)", "wall_seconds", "{:.1f}"),
    ]
    lines = [
        f"Seeds {seeds}; mean (std) over seeds.",
        "",
        "| metric | seed script | fedkd (`flwr run`, simulation) | fedkd / seed |",
        "|---|---|---|---|",
    ]
    for label, key, fmt in rows:
        (sm, ss), (am, as_) = _stats(seed_runs, key), _stats(app_runs, key)
        lines.append(
            f"| {label} | {fmt.format(sm)} ({fmt.format(ss)}) | {fmt.format(am)} ({fmt.format(as_)}) | {am / sm:.2f} |"
        )
    seed_p, app_p = _stats(seed_runs, "common_student_accuracy")[0], _stats(app_runs, "common_student_accuracy")[0]
    own_seed_p, own_app_p = _stats(seed_runs, "student_accuracy")[0], _stats(app_runs, "student_accuracy")[0]
    lines += [
        "",
        f"Common test set: {test_samples:,} samples of the task drawn from seed {COMMON_TEST_SEED}, the same array for "
        f"both systems; standard error sqrt(p(1-p)/n) {_standard_error(seed_p, test_samples):.4f} at the seed "
        f"script's student accuracy {seed_p:.3f}, {_standard_error(app_p, test_samples):.4f} at fedkd's {app_p:.3f}. "
        f"Own test sets, per run: the seed script's {own_seed:,} samples (standard error "
        f"{_standard_error(own_seed_p, own_seed):.4f}), fedkd's server test set of {own_app:,} "
        f"({_standard_error(own_app_p, own_app):.4f}).",
        quiet_line([r["before_run"] for r in seed_runs + app_runs], info["cores"]),
        "",
        provenance_line(info),
    ]
    return "\n".join(lines)


def command_line() -> argparse.Namespace:
    """--seeds, --test-samples, --seed-script and --results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--test-samples", type=int, default=TEST_SAMPLES, help="size of the common test set")
    parser.add_argument(
        "--seed-script",
        type=Path,
        default=SEED_SCRIPT,
        help="the seed script, which this repository does not hold (default: ../shared/seed/tutorial_055.py)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for seed_comparison.{json,md}")
    quiet_arguments(parser)
    args = parser.parse_args()
    if not args.seed_script.is_file():
        parser.error(f"--seed-script {args.seed_script}: no such file; the seed script is not in this repository")
    if args.test_samples < 1:
        parser.error(f"--test-samples = {args.test_samples}; allowed: 1 or more")
    return args


def main() -> None:
    """Run both systems for every seed and write the results."""
    args = command_line()
    args.results.mkdir(parents=True, exist_ok=True)
    info = provenance()
    test = common_test_set(args.test_samples)
    seed_runs, app_runs = [], []
    with tempfile.TemporaryDirectory() as tmp, simulation_superlink(Path(tmp) / "flwr-home") as env:
        for seed in args.seeds:
            before = before_timing(args)
            seed_runs.append({**run_seed_script(seed, test, args.seed_script), "before_run": before})
            before = before_timing(args)
            app_runs.append({**run_app(env, seed, Path(tmp) / f"out-{seed}", test), "before_run": before})
            print(f"seed {seed}: seed script {seed_runs[-1]}\n         fedkd {app_runs[-1]}", flush=True)
    table = report(seed_runs, app_runs, args.seeds, args.test_samples, info)
    (args.results / "seed_comparison.json").write_text(
        json.dumps(
            {
                "seeds": args.seeds,
                "provenance": info,
                "common_test_set": {"samples": args.test_samples, "seed": COMMON_TEST_SEED},
                "seed_script": seed_runs,
                "fedkd": app_runs,
            },
            indent=2,
        )
    )
    (args.results / "seed_comparison.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
