"""Every strategy on the digits and mnist5k federations, against centralised and local-only training.

    python -m benchmarks.strategies                      # the 15-round matrix (hours on 2 cores)
    python -m benchmarks.strategies --rounds 40 --splits dirichlet-0.5 --models homogeneous \
        --strategies fedavg feddf                        # the matrix's 40-round rows (with the next line)
    python -m benchmarks.strategies --rounds 40 --datasets mnist5k --splits dirichlet-0.1 \
        --models homogeneous --strategies fedavg feddf
    python -m benchmarks.strategies --datasets digits --splits dirichlet-0.5 --seeds 42
    python -m benchmarks.strategies --report             # table and plot from what is recorded

By default the strategies of results/strategies.json: two-stage, fedavg, fedmd, feddf, feddf-datafree
and fedgen. FedProx (each `fedprox mu=...` label), FedAvgM and FedAdam run when --strategies names them;
their results are kept apart (--results benchmarks/results/fedprox, .../server_optimisers).

10 clients, half of them per round. Runs are appended to benchmarks/results/strategies.json as they
finish, and a rerun skips what is there, so the matrix can be filled over several invocations.
Writes strategies.md (accuracy mean and std, bytes, wall time) and strategies.png (accuracy
against cumulative bytes).
"""

import argparse
import fcntl
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.baselines import centralised, local_only
from benchmarks.provenance import load_average, provenance
from common.config import RunConfig, model_cycle, parse_run_config
from deploy.processes import PROJECT
from deploy.simulation import run_directory, run_summary, simulation_superlink
from server_app.records import read_history
from server_app.strategies import STRATEGIES as REGISTERED

RESULTS = PROJECT / "benchmarks" / "results"
DATASETS = ["digits", "mnist5k"]
# Settings a strategy is measured under, as run-config keys, each labelled in the tables; one run otherwise.
VARIANTS = {"fedprox": {f"fedprox mu={mu}": {"fedprox.proximal-mu": mu} for mu in (0.001, 0.01, 0.1)}}
# Every registered strategy, the run config's default first; a strategy with variants by each label.
NAMES = sorted(REGISTERED, key=lambda name: name != RunConfig.model_fields["strategy"].default)
STRATEGIES = [label for name in NAMES for label in VARIANTS.get(name, {name: {}})]
# The matrix of results/strategies.json, and what a plain run measures.
MATRIX = ["two-stage", "fedavg", "fedmd", "feddf", "feddf-datafree", "fedgen"]
SPLITS = {
    "dirichlet-0.1": {"partitioner": "dirichlet", "dirichlet-alpha": 0.1},
    "dirichlet-0.5": {"partitioner": "dirichlet", "dirichlet-alpha": 0.5},
    "dirichlet-1.0": {"partitioner": "dirichlet", "dirichlet-alpha": 1.0},
    "iid": {"partitioner": "iid"},
}
# Homogeneous: one architecture for every client; heterogeneous: three, assigned round-robin.
MODELS = {
    ("digits", "homogeneous"): {"model": "mlp-32"},
    ("mnist5k", "homogeneous"): {"model": "cnn"},
    ("digits", "heterogeneous"): {"models": "mlp-32,mlp-128x64,cnn"},
    ("mnist5k", "heterogeneous"): {"models": "mlp-32,mlp-128x64,cnn"},
}
CLIENTS = 10
CENTRAL_EPOCHS = 30


def run_config(dataset: str, split: str, models: str, label: str, seed: int, rounds: int) -> dict:
    """The run config of one cell of the matrix, for a strategy or one of its labelled variants."""
    name, settings = next((n, v[label]) for n in NAMES if label in (v := VARIANTS.get(n, {n: {}})))
    return {
        "strategy": name,
        "dataset": dataset,
        "seed": seed,
        # Each phase gets `rounds`: two-stage's teacher phase is its own setting.
        **({"two-stage.num-teacher-rounds": rounds} if name == "two-stage" else {}),
        "num-student-rounds": rounds,
        "fraction-train": 0.5,
        **SPLITS[split],
        **MODELS[(dataset, models)],
        **settings,
    }


def architectures(config: dict) -> list[str]:
    """The client architectures of a run config."""
    return sorted(set(model_cycle(config.get("models", ""))) or {config.get("model", "mlp-32")})


def _curve(run_dir: Path) -> list[tuple[float, float]]:
    """(cumulative MB, accuracy) after every student round."""
    sent, points = 0, []
    for r in read_history(run_dir / "history.json"):
        sent += r.bytes_down + r.bytes_up
        if r.phase == "student" and r.accuracy is not None:
            points.append((sent / 1e6, r.accuracy))
    return points


def measure(args: argparse.Namespace, path: Path) -> None:
    """Run every missing cell, appending each result to `path` as it finishes."""
    done = {(*_cell(r), r["strategy"], r["seed"]) for r in _load(path)}
    with tempfile.TemporaryDirectory() as tmp, simulation_superlink(Path(tmp) / "flwr-home") as env:
        for dataset in args.datasets:
            for split in args.splits:
                for models in args.models:
                    for seed in args.seeds:
                        cell = (dataset, split, models, args.rounds)
                        base = run_config(dataset, split, models, "fedavg", seed, args.rounds)
                        cfg = parse_run_config({k: v for k, v in base.items() if k != "strategy"})
                        if (*cell, "centralised", seed) not in done:
                            start = time.perf_counter()
                            _append(
                                path,
                                _row(
                                    cell,
                                    "centralised",
                                    seed,
                                    centralised(cfg, architectures(base), CLIENTS, CENTRAL_EPOCHS),
                                    0,
                                    start,
                                    [],
                                ),
                            )
                            start = time.perf_counter()
                            _append(
                                path,
                                _row(
                                    cell,
                                    "local-only",
                                    seed,
                                    local_only(cfg, CLIENTS, args.rounds * cfg.local_epochs),
                                    0,
                                    start,
                                    [],
                                ),
                            )
                        for strategy in args.strategies:
                            if (*cell, strategy, seed) in done:
                                continue
                            out = Path(tmp) / f"{'-'.join(map(str, cell))}-{strategy}-{seed}"
                            start = time.perf_counter()
                            summary = run_summary(
                                env, run_config(dataset, split, models, strategy, seed, args.rounds), CLIENTS, out
                            )
                            row = _row(
                                cell,
                                strategy,
                                seed,
                                summary.student_accuracy_by_model,
                                summary.bytes_total,
                                start,
                                _curve(run_directory(out)),
                            )
                            _append(path, row)
                            print(
                                f"{cell} {strategy} seed {seed}: {row['accuracy']:.3f} {row['accuracy_by_model']}",
                                flush=True,
                            )


def _row(cell: tuple, strategy: str, seed: int, by_model: dict, bytes_total: int, start: float, curve: list) -> dict:
    dataset, split, models, rounds = cell
    return {
        "dataset": dataset,
        "split": split,
        "models": models,
        "rounds": rounds,
        "strategy": strategy,
        "seed": seed,
        "accuracy": statistics.fmean(by_model.values()),
        "accuracy_by_model": by_model,
        "bytes_total": bytes_total,
        "wall_seconds": time.perf_counter() - start,
        "load_average": load_average(),
        "provenance": provenance(),
        "curve": curve,
    }


def _cell(row: dict) -> tuple:
    return row["dataset"], row["split"], row["models"], row["rounds"]


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def _append(path: Path, row: dict) -> None:
    """Add a row to the results file; locked and atomic, so runs of this script on other cells may share it."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([*_load(path), row], indent=1))
        os.replace(tmp, path)


def _ms(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ({statistics.stdev(values) if len(values) > 1 else 0.0:.3f})"


def report(path: Path) -> str:
    """strategies.md: one table per dataset, split and model setting; strategies.png: accuracy against bytes."""
    rows = _load(path)
    cells = sorted({_cell(r) for r in rows}, key=_cell_order)
    order = ["centralised", "local-only", *(s for s in STRATEGIES if any(r["strategy"] == s for r in rows))]
    lines = [
        "Student accuracy on the server's test set after the last round, mean (std) over seeds; "
        "heterogeneous: the mean over architectures, then each architecture. Wall time per run on 2 cores.",
        "",
        *_provenance(rows),
        "",
        *_overview(rows, cells, order),
        "",
        *_targets(rows, cells),
        "",
        *_variants(rows, cells),
        "",
    ]
    for cell in cells:
        picked = [r for r in rows if _cell(r) == cell]
        archs = sorted({a for r in picked for a in r["accuracy_by_model"]})
        per_arch = len(archs) > 1
        lines += [
            f"### {cell[0]}, {cell[1]}, {cell[2]} models, {cell[3]} rounds per phase",
            "",
            "| strategy | seeds | accuracy | "
            + (" | ".join(archs) + " | " if per_arch else "")
            + "MB per run | wall s |",
            "|---|---|---|" + ("---|" * len(archs) if per_arch else "") + "---|---|",
        ]
        for strategy in order:
            rs = [r for r in picked if r["strategy"] == strategy]
            if not rs:
                continue
            arch_cols = " | ".join(
                _ms([r["accuracy_by_model"][a] for r in rs if a in r["accuracy_by_model"]]) for a in archs
            )
            lines.append(
                f"| {strategy} | {len(rs)} | {_ms([r['accuracy'] for r in rs])} | "
                + (arch_cols + " | " if per_arch else "")
                + f"{statistics.fmean(r['bytes_total'] for r in rs) / 1e6:.2f} | "
                + f"{statistics.fmean(r['wall_seconds'] for r in rs):.0f} |"
            )
        lines.append("")
    _plot(rows, cells, path.with_suffix(".png"))
    return "\n".join(lines)


def _provenance(rows: list[dict]) -> list[str]:
    """Which commits and machines the rows were measured at, as each row recorded it."""
    recorded = [r["provenance"] for r in rows if "provenance" in r]
    machines = sorted(
        {f"{p['cores']}-core {p['machine']} ({p['cpu']}), torch {p['torch']}, flwr {p['flwr']}" for p in recorded}
    )
    lines = [
        f"{len(recorded)} rows record their commit and machine: commits "
        f"{', '.join(sorted({p['commit'] for p in recorded}))}; {'; '.join(machines)}."
        if recorded
        else ""
    ]
    if len(recorded) < len(rows):
        lines.append(
            f"{len(rows) - len(recorded)} rows predate that record: they were measured on 2-core x86_64 machines "
            "with torch 2.13.0 and flwr 1.42.0, at the commits that added them to `strategies.json` "
            "(`git log benchmarks/results/strategies.json`)."
        )
    return [line for line in lines if line]


def _cell_order(cell: tuple) -> tuple:
    dataset, split, models, rounds = cell
    return DATASETS.index(dataset), models != "homogeneous", rounds, list(SPLITS).index(split)


def _mean_accuracy(picked: list[dict], strategy: str, arch: str | None = None) -> tuple[float, int] | None:
    """Mean accuracy of one strategy over a cell's rows (of one architecture if given), with the seeds counted."""
    accs = [
        r["accuracy_by_model"][arch] if arch else r["accuracy"]
        for r in picked
        if r["strategy"] == strategy and (arch is None or arch in r["accuracy_by_model"])
    ]
    return (statistics.fmean(accs), len(accs)) if accs else None


def _overview(rows: list[dict], cells: list[tuple], order: list[str]) -> list[str]:
    """One line per cell: each strategy's mean accuracy, the best federated ones in bold, unmeasured ones as '-'."""
    lines = [
        "### Overview: mean accuracy (seeds measured), the best federated strategy in bold",
        "",
        "| dataset | models | split | rounds | " + " | ".join(order) + " |",
        "|---" * (4 + len(order)) + "|",
    ]
    for cell in cells:
        picked = [r for r in rows if _cell(r) == cell]
        means = {s: m for s in order if (m := _mean_accuracy(picked, s))}
        best = max((means[s][0] for s in STRATEGIES if s in means), default=None)
        values = []
        for strategy in order:
            if strategy not in means:
                values.append("-")
                continue
            accuracy, seeds = means[strategy]
            bold = "**" if strategy in STRATEGIES and accuracy == best else ""
            values.append(f"{bold}{accuracy:.3f}{bold} ({seeds})")
        lines.append(f"| {cell[0]} | {cell[2]} | {cell[1]} | {cell[3]} | " + " | ".join(values) + " |")
    return lines


def _targets(rows: list[dict], cells: list[tuple]) -> list[str]:
    """fedkd's goals for the strategies, checked on the means over the seeds measured."""
    lines = ["### Goals, checked on the means over the seeds measured", ""]
    for cell in cells:
        dataset, split, models, rounds = cell
        picked = [r for r in rows if _cell(r) == cell]

        def mean(strategy: str, arch: str | None = None, picked: list[dict] = picked) -> float | None:
            found = _mean_accuracy(picked, strategy, arch)
            return found[0] if found else None

        seeds = len({r["seed"] for r in picked})
        where = f"{dataset}, {split}, {models}, {rounds} rounds ({seeds} seed{'s' * (seeds > 1)})"
        central = mean("centralised")
        federated = {s: m for s in STRATEGIES if (m := mean(s)) is not None}
        if split == "dirichlet-0.5" and models == "homogeneous" and central is not None and federated:
            best = max(federated, key=federated.get)
            gap = 100 * (central - federated[best])
            lines.append(
                f"- {where}: best strategy within 2 points of centralised: {_verdict(gap <= 2)} "
                f"({best} {federated[best]:.3f}, centralised {central:.3f}, "
                f"{abs(gap):.1f} points {'below' if gap >= 0 else 'above'})"
            )
        if split == "dirichlet-0.1" and {"feddf", "fedavg"} <= federated.keys():
            lines.append(
                f"- {where}: FedDF at or above FedAvg: {_verdict(federated['feddf'] >= federated['fedavg'])} "
                f"({federated['feddf']:.3f} against {federated['fedavg']:.3f})"
            )
        archs = sorted({a for r in picked for a in r["accuracy_by_model"]})
        if models == "heterogeneous" and mean("local-only") is not None:
            for strategy in ("fedmd", "feddf"):
                if strategy in federated:
                    pairs = [(a, mean(strategy, a), mean("local-only", a)) for a in archs]
                    lines.append(
                        f"- {where}: {strategy} beats local-only for every architecture: "
                        f"{_verdict(all(m > lo for _, m, lo in pairs))} ("
                        + ", ".join(f"{a} {m:.3f} against {lo:.3f}" for a, m, lo in pairs)
                        + ")"
                    )
        if "feddf-datafree" in federated and mean("local-only") is not None:
            pairs = [(a, mean("feddf-datafree", a), mean("local-only", a)) for a in archs]
            line = (
                f"- {where}: feddf-datafree at or above local-only for every architecture: "
                f"{_verdict(all(m >= lo for _, m, lo in pairs))} ("
                + ", ".join(f"{a} {m:.3f} against {lo:.3f}" for a, m, lo in pairs)
                + ")"
            )
            if models == "heterogeneous" and "fedavg" in federated:
                line += (
                    f"; at or above FedAvg: {_verdict(federated['feddf-datafree'] >= federated['fedavg'])} "
                    f"({federated['feddf-datafree']:.3f} against {federated['fedavg']:.3f})"
                )
            lines.append(line)
    return lines


def _variants(rows: list[dict], cells: list[tuple]) -> list[str]:
    """Each strategy measured under several settings against FedAvg, cell by cell (points: x 100)."""
    lines = []
    for name, variants in VARIANTS.items():
        measured = [c for c in cells if any(r["strategy"] in variants for r in rows if _cell(r) == c)]
        if not measured:
            continue
        lines += [
            f"### {name} against fedavg: mean accuracy (seeds), and the best setting's difference in points",
            "",
            "| dataset | models | split | fedavg | " + " | ".join(variants) + " | best - fedavg |",
            "|---" * (5 + len(variants)) + "|",
        ]
        for cell in measured:
            picked = [r for r in rows if _cell(r) == cell]
            fedavg = _mean_accuracy(picked, "fedavg")
            means = {label: _mean_accuracy(picked, label) for label in variants}
            found = [m[0] for m in means.values() if m]
            gap = f"{100 * (max(found) - fedavg[0]):+.1f}" if fedavg and found else "-"
            lines.append(
                f"| {cell[0]} | {cell[2]} | {cell[1]} | "
                + " | ".join(f"{m[0]:.3f} ({m[1]})" if m else "-" for m in (fedavg, *means.values()))
                + f" | {gap} |"
            )
        lines.append("")
    return lines


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _plot(rows: list[dict], cells: list[tuple], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(cells))
    fig, axes = plt.subplots(
        (len(cells) + cols - 1) // cols,
        cols,
        figsize=(5 * cols, 3.6 * ((len(cells) + cols - 1) // cols)),
        squeeze=False,
    )
    for ax, cell in zip(axes.flat, cells):
        for strategy in STRATEGIES:
            curves = [r["curve"] for r in rows if _cell(r) == cell and r["strategy"] == strategy]
            if curves:
                length = min(len(c) for c in curves)
                ax.plot(
                    [statistics.fmean(c[i][0] for c in curves) for i in range(length)],
                    [statistics.fmean(c[i][1] for c in curves) for i in range(length)],
                    marker=".",
                    label=strategy,
                    color=f"C{STRATEGIES.index(strategy)}",
                )  # one colour per strategy in every panel
        for strategy, style in (("centralised", ":"), ("local-only", "--")):
            accs = [r["accuracy"] for r in rows if _cell(r) == cell and r["strategy"] == strategy]
            if accs:
                ax.axhline(statistics.fmean(accs), linestyle=style, color="grey", label=strategy)
        ax.set(
            title=", ".join(map(str, cell[:3])) + f", {cell[3]} rounds",
            xlabel="cumulative MB",
            ylabel="student accuracy",
            xscale="log",
        )
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    """Measure the chosen part of the matrix (or only report), then write the table and plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument(
        "--models", nargs="+", default=["homogeneous", "heterogeneous"], choices=["homogeneous", "heterogeneous"]
    )
    parser.add_argument(
        "--strategies", nargs="+", default=MATRIX, choices=STRATEGIES, help=f"default: {' '.join(MATRIX)}"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per phase")
    parser.add_argument("--report", action="store_true", help="only write the table and plot")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where strategies.{json,md,png} go")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / "strategies.json"
    if not args.report:
        measure(args, path)
    table = report(path)
    (args.results / "strategies.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
