"""Accuracy under a sample-level DP budget: which strategy keeps the most, and what the budget costs.

    python -m benchmarks.privacy                          # the whole matrix (many hours on 2 cores)
    python -m benchmarks.privacy --datasets digits        # digits only
    python -m benchmarks.privacy --report                 # table and plot from what is recorded

two-stage, fedavg, fedmd and feddf, and each client training alone (local-only), on digits and
mnist5k with 10 clients (5 per round), Dirichlet 0.5, homogeneous models (strategies.py's cells),
15 rounds per phase (`--rounds`), seeds 42, 43, 44, at ε 1, 3 and 8 (δ 1e-5) and without DP
(`--epsilons 0`). Every node trains with DP-SGD (docs/privacy.md); local-only's clients train
rounds x local-epochs epochs with their noise calibrated to spend ε over them. Each row records the
accuracy, the largest ε a node reported spent, the median round time and the quiet check before the
run. Rows are appended to --results (default benchmarks/results) privacy.json as runs finish, and a
rerun skips what is there. Writes privacy.md (strategy x ε, the points lost against no DP, round
time with DP against without) and privacy.png (accuracy against ε).

How long: on a quiet 2-core x86_64 machine a federated digits run took 31 to 55 s, an mnist5k run 36 to
131 s, a local-only run 1 to 51 s (results/privacy.json's `wall_seconds`); the whole matrix (2 x 5 x 4 x 3 =
120 runs) takes hours. The other strategies that run under DP (fedprox, fedavgm, fedadam) are not in the
default set, since the results do not hold them; `--strategies` names them.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.baselines import local_only
from benchmarks.provenance import before_timing, load_average, provenance, provenance_line, quiet_arguments, quiet_line
from benchmarks.strategies import CLIENTS, DATASETS, RESULTS, _append, _load, _ms, run_config
from common.config import ConfigError, RunConfig, parse_run_config
from deploy.simulation import run_directory, run_summary, simulation_superlink
from server_app.strategies import STRATEGIES as REGISTERED


def _runs_under_dp(name: str) -> bool:
    """Whether a registered strategy accepts a DP budget (feddf-datafree and fedgen release what DP does not cover)."""
    try:
        REGISTERED[name].check_config(RunConfig(dp_epsilon=1.0), REGISTERED[name].Settings())
    except ConfigError:
        return False
    return True


# Every registered strategy that runs under DP, then local-only training under the same budget.
STRATEGIES = [*(name for name in REGISTERED if _runs_under_dp(name)), "local-only"]
# What the results hold, and what a plain run measures.
MEASURED = ["two-stage", "fedavg", "fedmd", "feddf", "local-only"]
EPSILONS = [1.0, 3.0, 8.0, 0.0]  # 0: no DP
DELTA = 1e-5
SPLIT, MODELS = "dirichlet-0.5", "homogeneous"


def cell_config(dataset: str, strategy: str, epsilon: float | None, seed: int, rounds: int) -> dict:
    """The run config of one run: strategies.py's cell at Dirichlet 0.5, homogeneous, with the DP budget."""
    # local-only has no strategy of its own: its data and training settings are those of the fedavg cell.
    config = run_config(dataset, SPLIT, MODELS, "fedavg" if strategy == "local-only" else strategy, seed, rounds)
    return {**config, "dp-epsilon": epsilon, "dp-delta": DELTA} if epsilon else config


def _key(row: dict) -> tuple:
    return row["dataset"], row["rounds"], row["strategy"], row["epsilon"], row["seed"]


def measure(args: argparse.Namespace, path: Path) -> None:
    """Run every missing run, each after a quiet check, appending its row to `path` as it finishes."""
    done = {_key(r) for r in _load(path)}
    epsilons = [e or None for e in args.epsilons]
    with tempfile.TemporaryDirectory() as tmp, simulation_superlink(Path(tmp) / "flwr-home") as env:
        for dataset in args.datasets:
            for seed in args.seeds:
                for epsilon in epsilons:
                    for strategy in args.strategies:
                        if (dataset, args.rounds, strategy, epsilon, seed) in done:
                            continue
                        config = cell_config(dataset, strategy, epsilon, seed, args.rounds)
                        quiet = before_timing(args)
                        start = time.perf_counter()
                        if strategy == "local-only":
                            cfg = parse_run_config({k: v for k, v in config.items() if k != "strategy"})
                            ledgers = {} if epsilon else None
                            by_model = local_only(cfg, CLIENTS, args.rounds * cfg.local_epochs, ledgers)
                            accuracy = statistics.fmean(by_model.values())
                            spent = max(ledger.spent() for ledger in ledgers.values()) if ledgers else None
                            median = None
                        else:
                            out = Path(tmp) / f"{dataset}-{strategy}-{epsilon}-{seed}"
                            summary = run_summary(env, config, CLIENTS, out)
                            if summary.status != "complete":
                                raise RuntimeError(f"{run_directory(out)}: run {summary.status}: {summary.reason}")
                            accuracy, spent, median = (
                                summary.student_accuracy,
                                summary.dp_epsilon_max,
                                summary.median_round_seconds,
                            )
                        row = {
                            "dataset": dataset,
                            "split": SPLIT,
                            "models": MODELS,
                            "rounds": args.rounds,
                            "strategy": strategy,
                            "epsilon": epsilon,
                            "delta": DELTA if epsilon else None,
                            "seed": seed,
                            "accuracy": accuracy,
                            "dp_epsilon_max": spent,
                            "median_round_seconds": median,
                            "wall_seconds": time.perf_counter() - start,
                            "quiet_check": quiet,
                            "busy": quiet["busy"],
                            "load_average": load_average(),
                            "provenance": provenance(),
                        }
                        _append(path, row)
                        print(
                            f"{dataset} {strategy} ε={epsilon} seed {seed}: {accuracy:.3f}, ε spent {spent}, "
                            f"median round {median} s, wall {row['wall_seconds']:.0f} s",
                            flush=True,
                        )


def _eps_label(epsilon: float | None) -> str:
    return "no DP" if epsilon is None else f"ε={epsilon:g}"


def _order(rows: list[dict]) -> tuple[list[tuple], list[str], list[float | None]]:
    """The (dataset, rounds) cells, strategies and ε values of `rows`, in table order (no DP last)."""
    cells = sorted(
        {(r["dataset"], r["rounds"]) for r in rows},
        key=lambda c: (DATASETS.index(c[0]) if c[0] in DATASETS else len(DATASETS), c[0], c[1]),
    )
    strategies = sorted(
        {r["strategy"] for r in rows}, key=lambda s: (STRATEGIES.index(s) if s in STRATEGIES else len(STRATEGIES), s)
    )
    epsilons = sorted({r["epsilon"] for r in rows}, key=lambda e: (e is None, e or 0.0))
    return cells, strategies, epsilons


def _pick(rows: list[dict], cell: tuple, strategy: str, epsilon: float | None) -> list[dict]:
    return [
        r for r in rows if (r["dataset"], r["rounds"]) == cell and r["strategy"] == strategy and r["epsilon"] == epsilon
    ]


def report(path: Path) -> str:
    """privacy.md: per dataset, accuracy strategy x ε, points lost against no DP, round time with DP against
    without; privacy.png."""
    rows = _load(path)
    cells, strategies, epsilons = _order(rows)
    private = [e for e in epsilons if e is not None]
    head = "| strategy | " + " | ".join(_eps_label(e) for e in epsilons) + " |"
    rule = "|---" * (1 + len(epsilons)) + "|"
    lines = [
        f"Student accuracy on the server's test set after the last round, mean (std) over seeds, under sample-level "
        f"DP-SGD at δ = {DELTA:g} on every node (docs/privacy.md); [ε max]: the largest ε a node reported spent, "
        "the highest over seeds. Dirichlet 0.5, 10 clients (5 per round), homogeneous models; local-only: each "
        "client alone for rounds x local-epochs epochs, its noise calibrated to spend ε over them.",
        "",
    ]
    recorded = [r["provenance"] for r in rows if "provenance" in r]
    if recorded:
        commits = sorted({p["commit"] for p in recorded})
        lines += [
            provenance_line(recorded[-1]) + (f" Rows from commits {', '.join(commits)}." if len(commits) > 1 else ""),
            "",
        ]
    checks = [r["quiet_check"] for r in rows if "quiet_check" in r]
    if checks:
        lines += [
            quiet_line(checks, recorded[-1]["cores"] if recorded else "?")
            + (
                f" {sum(r['busy'] for r in rows)} rows ran on a busy machine (--allow-busy)."
                if any(r["busy"] for r in rows)
                else ""
            ),
            "",
        ]
    for cell in cells:
        means = {
            (s, e): statistics.fmean(r["accuracy"] for r in picked)
            for s in strategies
            for e in epsilons
            if (picked := _pick(rows, cell, s, e))
        }
        lines += [f"### {cell[0]}, {cell[1]} rounds per phase: accuracy (seeds) [ε max]", "", head, rule]
        for s in strategies:
            values = []
            for e in epsilons:
                picked = _pick(rows, cell, s, e)
                spent = [r["dp_epsilon_max"] for r in picked if r["dp_epsilon_max"] is not None]
                values.append(
                    "-"
                    if not picked
                    else f"{_ms([r['accuracy'] for r in picked])} ({len(picked)})"
                    + (f" [{max(spent):.2f}]" if spent else "")
                )
            lines.append(f"| {s} | " + " | ".join(values) + " |")
        best = [
            f"{_eps_label(e)}: {max(found, key=found.get)} {found[max(found, key=found.get)]:.3f}"
            for e in epsilons
            if (found := {s: means[(s, e)] for s in strategies if (s, e) in means})
        ]
        lines += ["", "Most accurate: " + "; ".join(best) + ".", ""]
        if private and any((s, None) in means for s in strategies):
            lines += [
                f"### {cell[0]}, {cell[1]} rounds: accuracy lost against no DP (points)",
                "",
                "| strategy | " + " | ".join(_eps_label(e) for e in private) + " |",
                "|---" * (1 + len(private)) + "|",
            ]
            for s in strategies:
                lines.append(
                    f"| {s} | "
                    + " | ".join(
                        f"{100 * (means[(s, None)] - means[(s, e)]):.1f}"
                        if (s, None) in means and (s, e) in means
                        else "-"
                        for e in private
                    )
                    + " |"
                )
            lines.append("")
        timed = [
            s
            for s in strategies
            if any(r["median_round_seconds"] is not None for e in epsilons for r in _pick(rows, cell, s, e))
        ]
        if private and timed:
            lines += [
                f"### {cell[0]}, {cell[1]} rounds: median round seconds with DP, without, and their ratio",
                "",
                "| strategy | " + " | ".join(_eps_label(e) for e in private) + " | no DP |",
                "|---" * (2 + len(private)) + "|",
            ]
            for s in timed:
                plain = _median_round(rows, cell, s, None)
                cells_ = []
                for e in private:
                    with_dp = _median_round(rows, cell, s, e)
                    cells_.append(
                        "-" if with_dp is None else f"{with_dp:.2f}" + (f" (x{with_dp / plain:.2f})" if plain else "")
                    )
                lines.append(f"| {s} | " + " | ".join(cells_) + f" | {'-' if plain is None else f'{plain:.2f}'} |")
            lines.append("")
    if rows:
        _plot(rows, cells, strategies, path.with_suffix(".png"))
    return "\n".join(lines)


def _median_round(rows: list[dict], cell: tuple, strategy: str, epsilon: float | None) -> float | None:
    """The median over seeds of each run's median round seconds; None if no run timed its rounds."""
    found = [
        r["median_round_seconds"] for r in _pick(rows, cell, strategy, epsilon) if r["median_round_seconds"] is not None
    ]
    return statistics.median(found) if found else None


def _plot(rows: list[dict], cells: list[tuple], strategies: list[str], out: Path) -> None:
    """Accuracy against ε per dataset, one line per strategy; no DP as a dashed line of the strategy's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 4), squeeze=False)
    for ax, cell in zip(axes.flat, cells):
        for i, s in enumerate(strategies):
            points = sorted(
                (e, statistics.fmean(r["accuracy"] for r in picked))
                for e in {r["epsilon"] for r in rows if r["epsilon"] is not None}
                if (picked := _pick(rows, cell, s, e))
            )
            colour = f"C{STRATEGIES.index(s) if s in STRATEGIES else i}"
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=s)
            if plain := _pick(rows, cell, s, None):
                ax.axhline(
                    statistics.fmean(r["accuracy"] for r in plain),
                    linestyle="--",
                    color=colour,
                    alpha=0.7,
                    label=f"{s}, no DP",
                )
        ax.set(
            title=f"{cell[0]}, {cell[1]} rounds per phase",
            xlabel=f"ε (δ = {DELTA:g})",
            ylabel="student accuracy",
            xscale="log",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    """Measure the chosen runs (or only report), then write the table and plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--epsilons", type=float, nargs="+", default=EPSILONS, help="DP budgets; 0 means no DP")
    parser.add_argument(
        "--strategies", nargs="+", default=MEASURED, choices=STRATEGIES, help=f"default: {' '.join(MEASURED)}"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per phase")
    parser.add_argument("--report", action="store_true", help="only write the table and plot")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where privacy.{json,md,png} go")
    quiet_arguments(parser)
    args = parser.parse_args()
    if any(e < 0 for e in args.epsilons):
        parser.error("--epsilons: 0 (no DP) or more")
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "privacy.json"
    if not args.report:
        measure(args, path)
    table = report(path)
    (args.results / "privacy.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
