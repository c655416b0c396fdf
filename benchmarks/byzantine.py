"""Final accuracy when 1 or 2 of 10 nodes attack, for fedkd's FedAvg with its defaults, each robust aggregator and
plain FedAvg, against the all-honest run; and what the robust settings cost when nobody attacks.

    python -m benchmarks.byzantine                                  # the whole matrix
    python -m benchmarks.byzantine --datasets digits --seeds 42     # a part of it
    python -m benchmarks.byzantine --settings FedMD                 # only FedMD against extreme logits
    python -m benchmarks.byzantine --report                         # tables from what is recorded

The attacks are tests/byzantine_app's: the first k partitions send scaled (x100) or sign-flipped updates, weights
of 1e30, honest weights claiming `max-num-examples` examples, or weights trained on flipped labels claiming as
many; against FedMD, logits of float32's largest value on one class. Each weight attack meets FedAvg under each
setting of SETTINGS; plain FedAvg is fedkd's `mean` with `max-weight-share = 1` and `clip-median-multiple = 0`,
which is Flower's FedAvg aggregate (fedkd averages with Flower's `aggregate_arrayrecords`; a unit test checks the
two agree). The logit attack meets FedMD's consensus, which is robust whatever the settings.

10 nodes, every node every round (`fraction-train = 1`: k of every round's 10 replies attack), Dirichlet 0.5,
mlp-32 on both datasets, 3 rounds of 2 local epochs (`--rounds`, `--local-epochs`), seeds 42, 43, 44, no final
evaluation exchange (the server's test accuracy is the figure).

How it runs: `flwr run` costs 20 s of start-up per run on a quiet 2-core machine and 90-150 s on a loaded one,
too much for hundreds of runs. So fedkd's ServerApp (`server_app.app.main`) and the ClientApp (fedkd's, or an
attacker) run in one process, over `LocalGrid`: each message reaches its node as Flower's wire carries it
(serialised to Flower's protobuf and back, both ways), each node keeps one Context across messages, and a
ClientApp's exception becomes an error reply, as under Flower. Only the transport differs from a simulation:
`--check` runs one honest and one attacked config both ways, stops unless the models and histories are the same, and
writes what it compared to check.json.

Rows are appended to --results (default benchmarks/results/byzantine) byzantine.json as runs finish and a rerun
skips what is there; byzantine.md holds the tables.
"""

import argparse
import json
import logging
import statistics
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common.config import flatten_dict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from benchmarks.provenance import load_average, provenance, provenance_line
from benchmarks.strategies import RESULTS, _append, _load, _ms
from client_app.app import app as fedkd_app
from client_app.threads import NUM_THREADS
from common.config import parse_run_config
from common.models import count_params, initial_model, to_record
from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES
from deploy.processes import PROJECT, app_source
from deploy.simulation import flwr_run, run_directory, simulation_superlink
from server_app import app as server_app
from server_app.loop import RunAborted
from server_app.records import read_history, read_summary
from server_app.round import Reply
from server_app.strategies.kit.averaging import Robustness, grouped_average
from tests.byzantine_app import app as byzantine_app
from tests.byzantine_app import byzantine

NODES = 10
DATASETS = ["digits", "mnist5k"]
HONEST = "honest"
# The attacks on weights, each met by FedAvg under every setting; extreme logits meet FedMD.
WEIGHT_ATTACKS = ["scaled", "sign_flip", "huge", "lying_counts", "label_flip"]
LOGIT_ATTACK = "extreme_logits"
ATTACKERS = [1, 2]
# Krum and MultiKrum assume the most attackers measured; Bulyan needs 4f + 3 replies, so 10 allow it f = 1 only
# (with f = 2 it would fall back to the median every round).
SETTINGS = {
    "plain FedAvg": {"max-weight-share": 1.0, "clip-median-multiple": 0.0},
    "fedkd defaults": {},
    "median": {"aggregator": "median"},
    "trimmed-mean": {"aggregator": "trimmed-mean"},
    "krum": {"aggregator": "krum", "aggregator-malicious": 2},
    "multi-krum": {"aggregator": "multi-krum", "aggregator-malicious": 2},
    "bulyan": {"aggregator": "bulyan", "aggregator-malicious": 1},
}
# The settings whose aggregate weighs replies by their counts. The others (Flower's median, trimmed mean, Krum and
# Bulyan) ignore counts, so honest weights claiming many examples give them exactly the honest run: not rerun.
COUNT_WEIGHTED = ["plain FedAvg", "fedkd defaults", "multi-krum"]
# What every attack meets first: no defence, the defaults, and the median.
CORE = ["plain FedAvg", "fedkd defaults", "median"]
FEDMD = "FedMD"  # the setting column of the logit attack's rows
# FedMD's node-side epochs, cut from 5 and 10 so that its runs cost about what FedAvg's do.
FEDMD_SETTINGS = {"fedmd.transfer-epochs": 1, "fedmd.digest-epochs": 2}


def run_config(dataset: str, setting: str, seed: int, rounds: int, local_epochs: int) -> dict:
    """The run config of one run: FedAvg under `setting` (a key of SETTINGS), or FedMD."""
    return {
        "strategy": "fedmd" if setting == FEDMD else "fedavg",
        "dataset": dataset,
        "model": "mlp-32",
        "seed": seed,
        "num-student-rounds": rounds,
        "local-epochs": local_epochs,
        "fraction-train": 1.0,
        "fraction-evaluate": 0.0,
        **(FEDMD_SETTINGS if setting == FEDMD else SETTINGS[setting]),
    }


def conditions() -> list[tuple[str, int, str]]:
    """Every (attack, attackers, setting) measured, most telling first, so that a benchmark cut short by the machine's
    time holds a whole part of the matrix: the honest runs (attack HONEST, 0 attackers) of every setting; 2 then 1
    attackers of each kind against CORE; extreme logits against FedMD; then the other aggregators, 2 attackers
    first. Honest weights claiming many examples meet only COUNT_WEIGHTED settings."""

    def meets(attack: str, setting: str) -> bool:
        return attack != "lying_counts" or setting in COUNT_WEIGHTED

    honest = [(HONEST, 0, s) for s in SETTINGS]
    core = [(a, k, s) for k in sorted(ATTACKERS, reverse=True) for a in WEIGHT_ATTACKS for s in CORE if meets(a, s)]
    logits = [(HONEST, 0, FEDMD), *((LOGIT_ATTACK, k, FEDMD) for k in sorted(ATTACKERS, reverse=True))]
    rest = [
        (a, k, s)
        for k in sorted(ATTACKERS, reverse=True)
        for a in WEIGHT_ATTACKS
        for s in SETTINGS
        if s not in CORE and meets(a, s)
    ]
    return [*honest, *core, *logits, *rest]


def client_of(attack: str, attackers: int) -> Callable[[Message, Context], Message]:
    """fedkd's ClientApp for the honest runs, else tests/byzantine_app's `<attack>_<attackers>`."""
    return fedkd_app if attack == HONEST else getattr(byzantine, f"{attack}_{attackers}")


def fused_config(overrides: dict) -> dict:
    """The run config a run sees under `flwr run`: fedkd's pyproject defaults, flattened, with `overrides`."""
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return {**flatten_dict(declared), **overrides}


def _wire(message: Message) -> Message:
    """`message` as the other side receives it: serialised to Flower's protobuf and read back."""
    return message_from_proto(message_to_proto(message))


class LocalGrid:
    """The Grid fedkd's loop uses (get_node_ids, push_messages, pull_messages), answered in this process by
    `client` on NODES nodes, partition i on node 1000 + i, each with one Context kept across messages and one torch
    thread, as Flower's simulation runs every ClientApp (client_app/threads.py; with more threads a sum's order,
    and so its last bit, would differ from a simulated run's)."""

    def __init__(self, client: Callable[[Message, Context], Message], run_config: dict, nodes: int = NODES) -> None:
        self.client, self.pushed = client, {}
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": nodes, NUM_THREADS: 1},
                state=RecordDict(),
                run_config=run_config,
            )
            for i in range(nodes)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for message in messages:
            # The SuperLink names a message when it takes it; replies point to that name.
            message.metadata.__dict__["_message_id"] = message_id = f"m{len(self.pushed)}"
            self.pushed[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        replies = []
        for message_id in message_ids:
            message = _wire(self.pushed.pop(message_id))
            try:
                reply = self.client(message, self.contexts[message.metadata.dst_node_id])
            except Exception as exc:  # as Flower does: a ClientApp's exception is the node's error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
            replies.append(_wire(reply))
        return replies


def _in_task() -> None:
    """Flower builds messages only inside a task; this process is the ServerApp's and every node's."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def run_local(client: Callable[[Message, Context], Message], overrides: dict) -> Path:
    """fedkd's ServerApp on `LocalGrid(client)` under `fused_config(overrides)`; its run directory, complete or
    aborted (RunAborted is how the ServerApp says so, after writing the summary)."""
    run_config = fused_config(overrides)
    _in_task()
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    try:
        server_app.main(LocalGrid(client, run_config), context)
    except RunAborted:
        pass
    return run_directory(Path(run_config["output-dir"]))


def finite_model(run_dir: Path) -> bool | None:
    """Whether every weight of the delivered models (`student*.pt`) is finite; None if the run saved none (it
    aborted, or it is FedMD's, whose models stay on the nodes)."""
    saved = sorted(run_dir.glob("student*.pt"))
    if not saved:
        return None
    return all(bool(torch.isfinite(t).all()) for path in saved for t in torch.load(path, weights_only=True).values())


def row_of(run_dir: Path, key: dict, wall: float, cpu: float) -> dict:
    """A results row: the run's outcome, final accuracy, finite model, per-round times and defences' counts."""
    summary = read_summary(run_dir / "summary.json")
    history = read_history(run_dir / "history.json")
    return {
        **key,
        "status": summary.status,
        "reason": summary.reason,
        "accuracy": summary.student_accuracy,
        "rounds_done": len(history),
        "finite_model": finite_model(run_dir),
        "median_round_seconds": summary.median_round_seconds,
        # What the server computes between a round's replies and its record: aggregation, scoring, writing.
        "median_server_seconds": statistics.median(r.seconds - r.exchange_seconds for r in history)
        if history
        else None,
        "clipped_updates": sum(r.clipped for r in history),
        "failures": sum(r.failures for r in history),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "load_average": load_average(),
        "provenance": provenance(),
    }


def aggregation_cpu_seconds(dataset: str, setting: str, repeats: int = 5) -> float:
    """The server's CPU seconds to clip and combine one round's NODES replies of mlp-32 on `dataset` under `setting`
    (the median of `repeats`): all a setting changes in a round. The replies are the initial model plus noise: their
    values do not change the work, their shapes and number do. CPU time, so that other work on the machine does not
    count."""
    cfg = parse_run_config(fused_config(run_config(dataset, setting, 42, 3, 2)))
    base = to_record(initial_model("mlp-32", dataset, 42))
    rng = np.random.default_rng(42)
    _in_task()
    times = []
    for _ in range(repeats):
        replies = [
            Reply(
                n,
                n,
                RecordDict(
                    {
                        ARRAYS: ArrayRecord(
                            {
                                k: Array(v.numpy() + rng.normal(0, 0.01, v.shape).astype(np.float32))
                                for k, v in base.items()
                            }
                        ),
                        METRICS: MetricRecord({NUM_EXAMPLES: 100 + n}),
                    }
                ),
            )
            for n in range(NODES)
        ]
        start = time.process_time()
        grouped_average({"mlp-32": base}, replies, lambda node: "mlp-32", Robustness.of(cfg))
        times.append(time.process_time() - start)
    return statistics.median(times)


def costs(datasets: list[str], path: Path) -> None:
    """aggregation.json: each FedAvg setting's aggregation CPU seconds per round on each dataset's mlp-32."""
    rows = [
        {
            "dataset": dataset,
            "setting": setting,
            "params": count_params(initial_model("mlp-32", dataset, 42)),
            "cpu_seconds": aggregation_cpu_seconds(dataset, setting),
            "provenance": provenance(),
        }
        for dataset in datasets
        for setting in SETTINGS
    ]
    path.write_text(json.dumps(rows, indent=1))


def _key(row: dict) -> tuple:
    return row["dataset"], row["rounds"], row["local_epochs"], row["attack"], row["attackers"], row["setting"]


def measure(args: argparse.Namespace, path: Path) -> None:
    """Run every missing run, appending its row to `path` as it finishes."""
    done = {(*_key(r), r["seed"]) for r in _load(path)}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    for dataset in args.datasets:
        for attack, attackers, setting in (c for c in conditions() if c[2] in args.settings):
            for seed in args.seeds:
                key = {
                    "dataset": dataset,
                    "rounds": args.rounds,
                    "local_epochs": args.local_epochs,
                    "attack": attack,
                    "attackers": attackers,
                    "setting": setting,
                }
                if (*_key(key), seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as tmp:
                    config = run_config(dataset, setting, seed, args.rounds, args.local_epochs)
                    start, cpu = time.perf_counter(), time.process_time()
                    run_dir = run_local(client_of(attack, attackers), {**config, "output-dir": tmp})
                    row = row_of(run_dir, {**key, "seed": seed}, time.perf_counter() - start, time.process_time() - cpu)
                _append(path, row)
                print(
                    f"{dataset} seed {seed} {attack} x{attackers} {setting}: {row['status']} "
                    f"{row['accuracy']} finite {row['finite_model']} wall {row['wall_seconds']:.0f} s",
                    flush=True,
                )


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two run directories saved the same delivered models, bit for bit."""
    saved = sorted(p.name for p in a.glob("student*.pt"))
    if saved != sorted(p.name for p in b.glob("student*.pt")):
        return False
    for name in saved:
        x, y = (torch.load(d / name, weights_only=True) for d in (a, b))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def check(args: argparse.Namespace, path: Path) -> None:
    """Run an honest and an attacked digits config in process and under `flwr run`; stop unless the delivered models
    and every round's record (sampled nodes, accuracy, loss, replies, failures, clipped updates) are the same bit for
    bit; write what was compared to `path`."""
    compared = []
    fields = ("phase", "round", "sampled", "accuracy", "loss", "train_loss", "replies", "failures", "clipped", "failed")
    config = run_config("digits", "fedkd defaults", args.seeds[0], args.rounds, args.local_epochs)
    with tempfile.TemporaryDirectory() as tmp, simulation_superlink(Path(tmp) / "flwr-home") as env:
        for attack, attackers in ((HONEST, 0), ("label_flip", 2)):
            local = run_local(client_of(attack, attackers), {**config, "output-dir": f"{tmp}/{attack}-local"})
            app = app_source() if attack == HONEST else byzantine_app(Path(tmp) / "app", attack, attackers)
            out = Path(tmp) / f"{attack}-flwr"
            done = flwr_run(env, {**config, "output-dir": str(out)}, NODES, app=app, actors=2)
            if done.returncode != 0:
                raise SystemExit(f"flwr run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            records = [
                [{k: r[k] for k in fields} for r in json.loads((d / "history.json").read_text())]
                for d in (local, run_directory(out))
            ]
            if records[0] != records[1] or not _same_weights(local, run_directory(out)):
                raise SystemExit(f"{attack}: in process and under flwr run differ:\n{records[0]}\n{records[1]}")
            print(f"{attack} x{attackers}: the same model and {len(records[0])} rounds both ways", flush=True)
            compared.append({"attack": attack, "attackers": attackers, "rounds": records[0]})
    path.write_text(json.dumps({"config": config, "fields": fields, "equal": compared, "provenance": provenance()}))


def _cell(rows: list[dict], seeds: int) -> str:
    """Mean (std) of the final accuracies; a mark for runs that aborted (a) or ended with a non-finite model (n),
    and the count of runs where fewer than `seeds`."""
    if not rows:
        return "-"
    aborted = sum(r["status"] != "complete" for r in rows)
    infinite = sum(r["finite_model"] is False for r in rows)
    marks = (f" a{aborted}" if aborted else "") + (f" n{infinite}" if infinite else "")
    scored = [r["accuracy"] for r in rows if r["status"] == "complete" and r["accuracy"] is not None]
    return (_ms(scored) if scored else "aborted") + marks + (f" [{len(rows)}]" if len(rows) < seeds else "")


def _pick(rows: list[dict], attack: str, attackers: int, setting: str) -> list[dict]:
    return [r for r in rows if (r["attack"], r["attackers"], r["setting"]) == (attack, attackers, setting)]


def report(path: Path) -> str:
    """byzantine.md: per dataset and length, accuracy by attack and setting; the settings' cost with no attacker;
    FedMD against extreme logits."""
    rows = _load(path)
    aggregation = _load(path.with_name("aggregation.json"))
    lines = [
        "Final accuracy on the server's test set, mean (std) over seeds, 10 nodes all sampled every round "
        "(Dirichlet 0.5, mlp-32), k attackers among them (tests/byzantine_app). `a<n>`: n runs aborted (too few "
        "usable replies: the run stops and says why); `n<n>`: n runs ended with a non-finite model. "
        "plain FedAvg = `max-weight-share = 1`, `clip-median-multiple = 0` (Flower's FedAvg aggregate); "
        "fedkd defaults = `aggregator = mean`, `max-weight-share = 0.5`, `clip-median-multiple = 3`; the robust "
        "aggregators keep the default clipping. Krum and MultiKrum assume 2 attackers, Bulyan 1 (the most 10 "
        "replies allow it). `= honest`: the setting ignores counts, so honest weights claiming many examples "
        "give it the honest run exactly (not rerun). `-`: not measured in the time the machine gave (the benchmark "
        "runs the most telling cells first: see `conditions`); `[n]`: the seeds of a cell, where fewer than the "
        "table's.",
        "",
    ]
    recorded = [r["provenance"] for r in rows if "provenance" in r]
    if recorded:
        commits = sorted({p["commit"] for p in recorded})
        loads = [r["load_average"] for r in rows]
        lines += [
            provenance_line(recorded[-1]) + (f" Rows from commits {', '.join(commits)}." if len(commits) > 1 else ""),
            f"1-minute load average after each run {min(loads):.1f}-{max(loads):.1f} (mean "
            f"{statistics.fmean(loads):.1f}) on {recorded[-1]['cores']} cores: other work shared the machine. The "
            "accuracies do not depend on it; the aggregation times are CPU time, which depends on it little.",
            "",
        ]
    cells = sorted(
        {(r["dataset"], r["rounds"], r["local_epochs"]) for r in rows}, key=lambda c: (DATASETS.index(c[0]), *c)
    )
    for dataset, rounds, epochs in cells:
        picked = [r for r in rows if (r["dataset"], r["rounds"], r["local_epochs"]) == (dataset, rounds, epochs)]
        seeds = sorted({r["seed"] for r in picked})
        title = f"{dataset}, {rounds} rounds of {epochs} local epochs, seeds {', '.join(map(str, seeds))}"
        lines += [f"### {title}: accuracy under attack", "", "| attack | k | " + " | ".join(SETTINGS) + " |"]
        lines.append("|---|---|" + "---|" * len(SETTINGS))
        for attack, attackers in [(HONEST, 0), *((a, k) for a in WEIGHT_ATTACKS for k in ATTACKERS)]:
            found = [
                _cell(_pick(picked, attack, attackers, s), len(seeds))
                if attack != "lying_counts" or s in COUNT_WEIGHTED
                else "= honest"
                for s in SETTINGS
            ]
            lines.append(f"| {attack} | {attackers} | " + " | ".join(found) + " |")
        lines += [
            "",
            f"### {title}: what each setting costs with no attacker",
            "",
            "Points: accuracy against plain FedAvg's honest run. Aggregation: the server's CPU milliseconds to clip "
            "and combine one round's 10 replies of this dataset's mlp-32 (aggregation.json), the median of 5; all a "
            "setting changes in a round's time, the nodes' training being the same.",
            "",
            "| setting | accuracy | points | aggregation ms |",
            "|---|---|---|---|",
        ]
        plain = [r["accuracy"] for r in _pick(picked, HONEST, 0, "plain FedAvg") if r["status"] == "complete"]
        cpu = {r["setting"]: r["cpu_seconds"] for r in aggregation if r["dataset"] == dataset}
        for setting in SETTINGS:
            honest = _pick(picked, HONEST, 0, setting)
            scored = [r["accuracy"] for r in honest if r["status"] == "complete"]
            points = f"{100 * (statistics.fmean(scored) - statistics.fmean(plain)):+.1f}" if scored and plain else "-"
            ms = f"{1000 * cpu[setting]:.1f}" if setting in cpu else "-"
            lines.append(f"| {setting} | {_cell(honest, len(seeds))} | {points} | {ms} |")
        lines += [
            "",
            f"### {title}: FedMD against extreme logits",
            "",
            f"FedMD with `{'`, `'.join(f'{k} = {v}' for k, v in FEDMD_SETTINGS.items())}`; its consensus centres "
            "each node's logits, bounds them and takes the median (common/distill.py).",
            "",
            "| attackers | accuracy |",
            "|---|---|",
            f"| none | {_cell(_pick(picked, HONEST, 0, FEDMD), len(seeds))} |",
            *(f"| {k} | {_cell(_pick(picked, LOGIT_ATTACK, k, FEDMD), len(seeds))} |" for k in ATTACKERS),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    """Measure the chosen runs (or only report, or only check the in-process runs), then write the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument(
        "--settings", nargs="+", default=[*SETTINGS, FEDMD], choices=[*SETTINGS, FEDMD], help="only these columns"
    )
    parser.add_argument("--costs", action="store_true", help="only time each setting's aggregation")
    parser.add_argument("--report", action="store_true", help="only write the tables")
    parser.add_argument("--check", action="store_true", help="only compare in-process runs with flwr run's")
    parser.add_argument("--results", type=Path, default=RESULTS / "byzantine", help="where byzantine.{json,md} go")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.check:
        check(args, args.results / "check.json")
        return
    if args.costs:
        costs(args.datasets, args.results / "aggregation.json")
    path = args.results / "byzantine.json"
    if not args.report and not args.costs:
        measure(args, path)
    table = report(path)
    (args.results / "byzantine.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
