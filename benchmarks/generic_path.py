"""ResNet-8 against the CNN on mnist5k read through the generic data path: a parquet file of PNG images.

    python -m benchmarks.generic_path                                    # the figure (83 minutes, shared 2-core host)
    python -m benchmarks.generic_path --alphas 0.5 --seeds 42 --rounds 1  # smoke run
    python -m benchmarks.generic_path --report                           # the table from what is recorded

mnist5k (`common.data._image_dataset`) is written as PNG images with a ClassLabel into a parquet file in a temporary
directory, and every run names that file as run config `dataset`, so the server's test set, the public slice and the
clients' partitions all come through `datasets` and flwr-datasets, not the built-in loader. For each Dirichlet alpha,
seed and strategy (fedavg, feddf, two-stage) the same run config is run with `model` resnet-8 and with cnn, one
after the other (which goes first alternates), through `flwr run` on one private simulation SuperLink; each pair's
ratios (accuracy, median time per round) come from those two runs. Before each run the CPU share in use and the
1-minute load average are recorded, not waited on: other work may share the machine, and both runs of a pair
see about the same load. Writes benchmarks/results/generic_path/generic_path.{json,md} after every run.
"""

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import load_average, provenance, provenance_line, quiet_line, reading
from deploy.processes import PROJECT
from deploy.simulation import flwr_run, run_directory, simulation_superlink
from server_app.records import read_history, read_summary

RESULTS = PROJECT / "benchmarks" / "results" / "generic_path"
MODELS = ("cnn", "resnet-8")  # the baseline first: each ratio is resnet-8 over cnn
STRATEGIES = ("fedavg", "feddf", "two-stage")


def write_mnist5k(path: Path) -> Path:
    """mnist5k as a parquet file of 28x28 greyscale PNGs (`image`) and a 10-class ClassLabel (`label`)."""
    import datasets
    from PIL import Image

    from common.data import _image_dataset

    x, y = _image_dataset("mnist5k")
    # The built-in pixels are x / 255 of 8-bit values, so this gives back the bytes the generic path scales again.
    pixels = np.round(x.reshape(-1, 28, 28) * 255).astype(np.uint8)

    def png(image: np.ndarray) -> dict:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    rows = {"image": [png(p) for p in pixels], "label": y.tolist()}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def run_config(dataset: str, model: str, strategy: str, alpha: float, seed: int, sizes: dict) -> dict:
    """The run config of one run: `sizes` holds rounds, local_epochs and fraction_train."""
    return {
        "strategy": strategy,
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "partitioner": "dirichlet",
        "dirichlet-alpha": alpha,
        "num-student-rounds": sizes["rounds"],
        # The teacher phase gets as many rounds, and the run's own architecture, so that both phases of a run
        # measure that architecture; the default MLP teacher would make phase 1 the same in both runs of a pair.
        **(
            {"two-stage.num-teacher-rounds": sizes["rounds"], "two-stage.teacher-model": model}
            if strategy == "two-stage"
            else {}
        ),
        "local-epochs": sizes["local_epochs"],
        "fraction-train": sizes["fraction_train"],
        # The figure is the server's test accuracy; the final federated evaluation would only add time.
        "fraction-evaluate": 0.0,
    }


def phase_medians(history: list) -> dict[str, float]:
    """Median seconds per round of each phase in a history (two-stage has a teacher and a student phase)."""
    phases = dict.fromkeys(r.phase for r in history)
    return {p: statistics.median(r.seconds for r in history if r.phase == p) for p in phases}


def pairs(rows: list[dict]) -> list[dict]:
    """One entry per (strategy, alpha, seed) measured with both models: each model's figures and resnet-8 / cnn."""
    by_key = {(r["strategy"], r["alpha"], r["seed"], r["model"]): r for r in rows}
    out = []
    for base in rows:
        key = (base["strategy"], base["alpha"], base["seed"])
        other = by_key.get((*key, MODELS[1]))
        if base["model"] != MODELS[0] or other is None:
            continue
        out.append(
            {
                "strategy": base["strategy"],
                "alpha": base["alpha"],
                "seed": base["seed"],
                "accuracy": {m: r["accuracy"] for m, r in zip(MODELS, (base, other), strict=True)},
                "median_round_s": {m: r["median_round_s"] for m, r in zip(MODELS, (base, other), strict=True)},
                "accuracy_ratio": other["accuracy"] / base["accuracy"],
                "time_ratio": other["median_round_s"] / base["median_round_s"],
            }
        )
    return sorted(out, key=lambda p: (STRATEGIES.index(p["strategy"]), -p["alpha"], p["seed"]))


def means(paired: list[dict]) -> list[dict]:
    """Per strategy and alpha: the mean over seeds of each model's accuracy and median round, and of the ratios."""
    cells = dict.fromkeys((p["strategy"], p["alpha"]) for p in paired)
    out = []
    for strategy, alpha in cells:
        picked = [p for p in paired if (p["strategy"], p["alpha"]) == (strategy, alpha)]
        out.append(
            {
                "strategy": strategy,
                "alpha": alpha,
                "seeds": len(picked),
                **{
                    key: {m: statistics.fmean(p[key][m] for p in picked) for m in MODELS}
                    for key in ("accuracy", "median_round_s")
                },
                **{key: statistics.fmean(p[key] for p in picked) for key in ("accuracy_ratio", "time_ratio")},
            }
        )
    return out


def report(results: dict) -> str:
    """generic_path.md: the sizes, a table per seed and one of means over seeds, and where it was measured."""
    sizes, rows = results["sizes"], results["rows"]
    sampled = sorted({n for r in rows for n in r["sampled_per_round"]})
    head = (
        "| strategy | alpha | {what} | accuracy cnn | accuracy resnet-8 | accuracy ratio | median round cnn (s) "
        "| median round resnet-8 (s) | time ratio |"
    )
    rule = "|---|---|---|---|---|---|---|---|---|"

    def line(p: dict, what: object) -> str:
        acc, sec = p["accuracy"], p["median_round_s"]
        return (
            f"| {p['strategy']} | {p['alpha']} | {what} | {acc['cnn']:.3f} | {acc['resnet-8']:.3f} | "
            f"{p['accuracy_ratio']:.2f} | {sec['cnn']:.2f} | {sec['resnet-8']:.2f} | {p['time_ratio']:.2f} |"
        )

    paired = pairs(rows)
    return "\n".join(
        [
            "ResNet-8 against the CNN on mnist5k read through the generic data path (a parquet file of PNG images). "
            "Student accuracy on the server's test set after the last round (summary.json `student_accuracy`) and "
            "the median seconds per round of the run (every round, both phases for two-stage; `median_round_seconds`"
            "); ratios are resnet-8 over cnn for the same strategy, alpha and seed, measured one after the other.",
            "",
            f"Sizes: {sizes['supernodes']} simulated clients, fraction-train {sizes['fraction_train']} "
            f"({', '.join(map(str, sampled))} a round), {sizes['rounds']} rounds (two-stage: "
            f"{sizes['rounds']} teacher + {sizes['rounds']} student rounds, teacher-model = model), "
            f"local-epochs {sizes['local_epochs']}, {sizes['actors']} ClientApp workers, fraction-evaluate 0; "
            "every other key at its default. "
            f"Whole benchmark: {results['wall_minutes']:.0f} minutes.",
            "",
            "### Mean over seeds",
            "",
            head.format(what="seeds"),
            rule,
            *(line(m, m["seeds"]) for m in means(paired)),
            "",
            "### Each seed",
            "",
            head.format(what="seed"),
            rule,
            *(line(p, p["seed"]) for p in paired),
            "",
            quiet_line([r["before"] for r in rows], results["provenance"]["cores"]),
            "",
            provenance_line(results["provenance"]),
            "",
        ]
    )


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "generic_path.json").write_text(json.dumps(results, indent=1))
    (out / "generic_path.md").write_text(report(results))


def measure(args: argparse.Namespace) -> None:
    """Run every (alpha, seed, strategy) with both models, writing the results after each run."""
    sizes = {
        "supernodes": args.supernodes,
        "fraction_train": args.fraction_train,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "actors": args.actors,
    }
    results = {"sizes": sizes, "provenance": provenance(), "rows": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # The runs' processes inherit these: `datasets` caches the parquet's arrow copy in the temporary directory,
        # not the user's ~/.cache, and never asks the hub.
        os.environ["HF_HOME"] = str(Path(tmp) / "hf")
        os.environ["HF_HUB_OFFLINE"] = "1"
        dataset = str(write_mnist5k(Path(tmp) / "mnist5k.parquet"))
        with simulation_superlink(Path(tmp) / "flwr-home") as env:
            cell = 0
            for alpha in args.alphas:
                for seed in args.seeds:
                    for strategy in args.strategies:
                        # Alternating which model runs first spreads the shared machine's load drift over both.
                        for model in MODELS[:: -1 if cell % 2 else 1]:
                            config = run_config(dataset, model, strategy, alpha, seed, sizes)
                            out = Path(tmp) / f"{strategy}-{alpha}-{seed}-{model}"
                            before = reading()
                            began = time.perf_counter()
                            done = flwr_run(
                                env,
                                {**config, "output-dir": str(out)},
                                args.supernodes,
                                timeout=3600,
                                actors=args.actors,
                            )
                            if done.returncode != 0:
                                raise RuntimeError(f"flwr run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                            summary = read_summary(run_directory(out) / "summary.json")
                            history = read_history(run_directory(out) / "history.json")
                            results["rows"].append(
                                {
                                    "strategy": strategy,
                                    "alpha": alpha,
                                    "seed": seed,
                                    "model": model,
                                    "accuracy": summary.student_accuracy,
                                    "median_round_s": summary.median_round_seconds,
                                    "phase_median_round_s": phase_medians(history),
                                    "sampled_per_round": sorted({len(r.sampled) for r in history}),
                                    "rounds": summary.rounds,
                                    "bytes_total": summary.bytes_total,
                                    "wall_s": time.perf_counter() - began,
                                    "before": before,
                                    "load_average_after": load_average(),
                                    "config": config | {"dataset": "<temporary>/mnist5k.parquet"},
                                }
                            )
                            results["wall_minutes"] = (time.perf_counter() - start) / 60
                            write(results, args.results)
                            row = results["rows"][-1]
                            print(
                                f"{strategy} alpha {alpha} seed {seed} {model}: accuracy {row['accuracy']:.3f}, "
                                f"median round {row['median_round_s']:.2f} s, wall {row['wall_s']:.0f} s, "
                                f"load {before['load_average']:.1f}",
                                flush=True,
                            )
                        cell += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.1], help="Dirichlet alphas")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--supernodes", type=int, default=5, help="simulated clients")
    parser.add_argument("--fraction-train", type=float, default=0.6, help="share of the clients trained a round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per phase")
    parser.add_argument("--local-epochs", type=int, default=1)
    # As many workers as cores: ResNet-8's local training is CPU-bound, and more workers would only contend.
    parser.add_argument("--actors", type=int, default=2, help="ClientApp workers of the simulation")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for generic_path.{json,md}")
    parser.add_argument("--report", action="store_true", help="rewrite the markdown from the recorded results")
    args = parser.parse_args()
    if args.report:
        results = json.loads((args.results / "generic_path.json").read_text())
        write(results, args.results)
    else:
        measure(args)
    print((args.results / "generic_path.md").read_text())


if __name__ == "__main__":
    main()
