"""Node.load with the decoded-data cache (node config `state-dir`) against decoding every message, one fresh Python
process per message as a deployed SuperNode runs its ClientApp.

    python -m benchmarks.decode_cache --messages 4 --repeats 3

Four nodes: mnist5k's partition 0 of 3 as a node file (`python -m common.data export`), a synthetic .npz of about
50 MB (16,000 rows of 784 float32 features) written uncompressed and compressed, and mnist5k's partition 0 of 3
built in (node config partition-id, no file). For each, in every repeat: --messages processes without a state-dir
(the baseline: every message decodes), and --messages with a fresh state-dir (the first decodes and writes the
entry, the later ones read it), in alternating order. Each process times Node.load alone (its imports are done
before) and reports a digest of the tensors it got, which must be the same for every message of a node; the parent
times each process too. The data files are in the page cache throughout (written just before), as on a node that
answers message after message. Waits for a quiet machine first (--quiet-cpu, --allow-busy); writes
decode_cache.{json,md} to --results (default benchmarks/results), with the commit and the machine.
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import before_timing, provenance, provenance_line, quiet_arguments, quiet_line, reading
from deploy.processes import PROJECT

RESULTS = PROJECT / "benchmarks" / "results"
SYNTHETIC_ROWS = 16_000  # x 784 float32 features: about 50 MB
MNIST = {"dataset": "mnist5k"}


def child(spec: dict) -> None:
    """One message's Node.load in this fresh process: its seconds, the tensors' digest, whether an entry was there."""
    from flwr.app import Context, RecordDict

    from client_app import data_cache
    from client_app.node import Node

    state_dir = spec["node_config"].get("state-dir")
    before = bool(state_dir) and any((Path(state_dir) / data_cache.CACHE_DIR).glob("*.pt"))
    context = Context(
        run_id=1, node_id=1, node_config=spec["node_config"], state=RecordDict(), run_config=spec["run_config"]
    )
    start = time.perf_counter()
    node = Node.load(context)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for t in (node.data.train.x, node.data.train.y, node.data.test.x, node.data.test.y):
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.contiguous().numpy().tobytes())
    print(json.dumps({"load_seconds": seconds, "digest": digest.hexdigest(), "entry_before": before}))


def message(spec: dict) -> dict:
    """Run one message's process; its report and its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.decode_cache", "--child", json.dumps(spec)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-4000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": wall}


def nodes(tmp: Path) -> dict[str, dict]:
    """The four nodes' node and run configs, their files written into `tmp`."""
    from common.config import parse_run_config
    from common.data import export_partitions

    part = export_partitions(parse_run_config(MNIST), 3, tmp / "mnist5k")[0]
    rng = np.random.default_rng(0)
    x = rng.random((SYNTHETIC_ROWS, 784), dtype=np.float32)
    y = rng.integers(0, 10, SYNTHETIC_ROWS)
    np.savez(tmp / "synthetic.npz", x=x, y=y)
    np.savez_compressed(tmp / "synthetic-compressed.npz", x=x, y=y)
    return {
        "mnist5k partition file": {"node_config": {"data-path": str(part)}, "run_config": MNIST},
        "synthetic .npz": {"node_config": {"data-path": str(tmp / "synthetic.npz")}, "run_config": MNIST},
        "synthetic .npz, compressed": {
            "node_config": {"data-path": str(tmp / "synthetic-compressed.npz")},
            "run_config": MNIST,
        },
        "mnist5k partition, built in": {
            "node_config": {"partition-id": 0, "num-partitions": 3},
            "run_config": MNIST,
        },
    }


def sizes(spec: dict, state: Path) -> dict:
    """The node's data file and cache entry sizes in bytes (None where it has none)."""
    path = spec["node_config"].get("data-path")
    entries = list((state / "data-cache").glob("*.pt"))
    return {
        "data_file_bytes": Path(path).stat().st_size if path else None,
        "entry_bytes": entries[0].stat().st_size if entries else None,
    }


def run(specs: dict[str, dict], tmp: Path, messages: int, repeats: int) -> list[dict]:
    """Every node's baseline and cached messages, alternately, `repeats` times."""
    records = []
    for repeat in range(repeats):
        for name, spec in specs.items():
            order = ("baseline", "cached") if repeat % 2 == 0 else ("cached", "baseline")
            for mode in order:
                state = tmp / f"state-{repeat}-{len(records)}"
                node_config = {**spec["node_config"], **({"state-dir": str(state)} if mode == "cached" else {})}
                before = reading(1.0)
                runs = [message({**spec, "node_config": node_config}) for _ in range(messages)]
                records.append(
                    {
                        "node": name,
                        "mode": mode,
                        "repeat": repeat,
                        "before_run": before,
                        "messages": runs,
                        **sizes(spec, state),
                    }
                )
                print(f"{repeat} {name} {mode}: {[round(r['load_seconds'], 3) for r in runs]}", flush=True)
    return records


def summary(records: list[dict], name: str) -> dict:
    """Medians of one node's Node.load and process seconds: baseline, first cached message, later ones."""
    base = [m for r in records if r["node"] == name and r["mode"] == "baseline" for m in r["messages"]]
    cached = [r["messages"] for r in records if r["node"] == name and r["mode"] == "cached"]
    first, later = [runs[0] for runs in cached], [m for runs in cached for m in runs[1:]]
    digests = {m["digest"] for m in base + [m for runs in cached for m in runs]}
    entry = next(r["entry_bytes"] for r in records if r["node"] == name and r["mode"] == "cached")
    data = next(r["data_file_bytes"] for r in records if r["node"] == name)

    def median(ms: list[dict], key: str) -> float:
        return statistics.median(m[key] for m in ms)

    return {
        "baseline_load": median(base, "load_seconds"),
        "first_load": median(first, "load_seconds"),
        "later_load": median(later, "load_seconds"),
        "baseline_process": median(base, "process_seconds"),
        "first_process": median(first, "process_seconds"),
        "later_process": median(later, "process_seconds"),
        "identical": len(digests) == 1,
        "hits_as_expected": all(
            not runs[0]["entry_before"] and all(m["entry_before"] for m in runs[1:]) for runs in cached
        )
        and not any(m["entry_before"] for m in base),
        "data_file_bytes": data,
        "entry_bytes": entry,
    }


def megabytes(n: int | None) -> str:
    return "built in" if n is None else f"{n / 1e6:.1f} MB"


def main() -> None:
    """Build the nodes, time their messages, write the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4, help="messages (processes) per node and mode and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for decode_cache.{json,md}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    quiet_arguments(parser)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.messages < 2:
        parser.error("--messages must be 2 or more: a first message and later ones")
    with tempfile.TemporaryDirectory(prefix="fedkd-decode-cache-") as tmp:
        specs = nodes(Path(tmp))
        quiet = before_timing(args)
        records = run(specs, Path(tmp), args.messages, args.repeats)
    info = provenance()
    results = {name: summary(records, name) for name in specs}
    rows = [
        f"| {name} | {megabytes(s['data_file_bytes'])} | {megabytes(s['entry_bytes'])} "
        f"| {s['baseline_load']:.3f} | {s['first_load']:.3f} ({s['first_load'] / s['baseline_load']:.2f}) "
        f"| {s['later_load']:.3f} ({s['later_load'] / s['baseline_load']:.2f}) "
        f"| {s['baseline_process']:.2f} / {s['later_process']:.2f} | {'yes' if s['identical'] else 'NO'} |"
        for name, s in results.items()
    ]
    table = "\n".join(
        [
            f"`Node.load` in a fresh Python process per message, as a deployed SuperNode runs its ClientApp: "
            f"{args.messages} messages per node without a state-dir (every message decodes: the baseline) and "
            f"{args.messages} with a fresh one (the first decodes and writes the cache entry, the later ones read "
            f"it), {args.repeats} repeats, alternately. Medians in seconds; in brackets the ratio to the baseline "
            "of the same run. Data files in the page cache, as on a node answering message after message.",
            "",
            "| node | data file | cache entry | `Node.load`, no cache (s) | first message, cache written (s) "
            "| later messages, cache read (s) | whole process, no cache / cache read (s) | tensors identical |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Nodes: mnist5k's partition 0 of 3 as its node file (`python -m common.data export`) and built in "
            "(node config partition-id, which imports datasets and flwr-datasets and partitions the pool); a "
            f"synthetic .npz of {SYNTHETIC_ROWS:,} rows of 784 float32 features, written by `np.savez` and "
            "`np.savez_compressed`. 'Tensors identical': every message of the node, cached or not, got the same "
            "tensors (a SHA-256 of their dtypes, shapes and bytes). Every first cached message found no entry and "
            "every later one found it: "
            + ("yes." if all(s["hits_as_expected"] for s in results.values()) else "NO.")
            + " The whole process includes Python, torch and flwr's imports, the same with and without the cache.",
            "",
            quiet_line([quiet, *(r["before_run"] for r in records)], info["cores"]),
            "",
            provenance_line(info),
        ]
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "decode_cache.json").write_text(
        json.dumps({"provenance": info, "quiet_check": quiet, "summary": results, "runs": records}, indent=2)
    )
    (args.results / "decode_cache.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
