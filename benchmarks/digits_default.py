"""fedkd's default job (digits, Dirichlet 0.5, 10 clients) against the centralised models.

    python -m benchmarks.digits_default --seeds 42 43 44

The baseline is the same teacher and student trained on the pooled client data (what the
federation would reach if data could be pooled), measured in the same run. Before each federated
run it waits until at most --quiet-cpu (default a quarter) of the CPU is in use and stops if that
does not happen, unless --allow-busy. Writes digits_default.{json,md} to --results (default
benchmarks/results), with the commit and the machine.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.baselines import centralised
from benchmarks.provenance import before_timing, provenance, provenance_line, quiet_arguments, quiet_line
from common.config import parse_run_config
from deploy.processes import PROJECT
from deploy.simulation import run_summary, simulation_superlink
from server_app.strategies.two_stage import TwoStageSettings

RESULTS = PROJECT / "benchmarks" / "results"
CENTRAL_EPOCHS = 30


def centralised_models(seed: int) -> dict:
    """Teacher and student trained on the pooled client data, scored on the server's test set."""
    cfg = parse_run_config({"seed": seed})
    teacher = TwoStageSettings().teacher_model
    scores = centralised(cfg, [teacher, cfg.model], 10, CENTRAL_EPOCHS)
    return {"teacher_accuracy": scores[teacher], "student_accuracy": scores[cfg.model]}


def main() -> None:
    """Run the default job per seed, and the centralised baseline."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for digits_default.{json,md}")
    quiet_arguments(parser)
    args = parser.parse_args()
    seeds = args.seeds
    args.results.mkdir(parents=True, exist_ok=True)
    info = provenance()
    fed, central = [], []
    with tempfile.TemporaryDirectory() as tmp, simulation_superlink(Path(tmp) / "flwr-home") as env:
        for seed in seeds:
            # The previous seed's centralised training is the load this waits out.
            before = before_timing(args)
            summary = run_summary(env, {"seed": seed}, 10, Path(tmp) / f"out-{seed}")
            fed.append(
                {
                    k: getattr(summary, k)
                    for k in (
                        "teacher_accuracy",
                        "student_accuracy",
                        "student_federated_accuracy",
                        "median_round_seconds",
                        "bytes_total",
                        "wall_seconds",
                    )
                }
            )
            fed[-1]["before_run"] = before
            central.append(centralised_models(seed))
            print(f"seed {seed}: fedkd {fed[-1]}\n         centralised {central[-1]}", flush=True)

    def ms(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.mean(values):.3f} ({statistics.stdev(values) if len(values) > 1 else 0.0:.3f})"

    lines = [
        f"Seeds {seeds}; mean (std).",
        "",
        "| model | centralised (pooled data) | fedkd, 10 clients, Dirichlet 0.5 | fedkd / centralised |",
        "|---|---|---|---|",
    ]
    for role in ("teacher", "student"):
        key = f"{role}_accuracy"
        ratio = statistics.mean(r[key] for r in fed) / statistics.mean(r[key] for r in central)
        lines.append(f"| {role} accuracy | {ms(central, key)} | {ms(fed, key)} | {ratio:.3f} |")
    lines += [
        "",
        f"Student federated accuracy (clients' local test splits): {ms(fed, 'student_federated_accuracy')}; "
        f"median round {ms(fed, 'median_round_seconds')} s; "
        f"{statistics.mean(r['bytes_total'] for r in fed) / 1e6:.1f} MB per run.",
        "",
        quiet_line([r["before_run"] for r in fed], info["cores"]),
        "",
        provenance_line(info),
    ]
    table = "\n".join(lines)
    (args.results / "digits_default.json").write_text(
        json.dumps({"seeds": seeds, "provenance": info, "fedkd": fed, "centralised": central}, indent=2)
    )
    (args.results / "digits_default.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
