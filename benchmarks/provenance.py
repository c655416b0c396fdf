"""Where a benchmark's figures come from: the commit and the machine, read when the benchmark runs."""

import argparse
import os
import platform
import statistics
import subprocess
import time
from importlib.metadata import version

from deploy.processes import PROJECT


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True)
    if done.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT,
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + ("+changes" if dirty else "")


def provenance() -> dict[str, object]:
    """The commit, cores, CPU model, OS, Python, torch and flwr versions of this run."""
    return {
        "commit": _commit(),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": version("torch"),
        "flwr": version("flwr"),
    }


def provenance_line(info: dict[str, object]) -> str:
    """One line for a results page: 'commit abc1234, 2-core x86_64 (CPU model), Linux ..., torch .., flwr ..'."""
    return (f"Measured at commit `{info['commit']}` on a {info['cores']}-core {info['machine']} ({info['cpu']}), "
            f"{info['os']}, Python {info['python']}, torch {info['torch']}, flwr {info['flwr']}.")


def load_average() -> float:
    """The 1-minute load average: how busy the machine was around a timing."""
    return round(os.getloadavg()[0], 2)


def quiet_threshold() -> float:
    """The default load a timed run waits for: half a load per core."""
    # The benchmarks keep every core busy, so a background load of half a core per core stretches their
    # timings noticeably; an idle machine sits near 0, so this is reached within a minute or two of the
    # previous run ending.
    return 0.5 * (os.cpu_count() or 1)


def wait_until_quiet(threshold: float | None = None, max_wait: float = 180.0, poll: float = 5.0) -> dict:
    """Wait until the 1-minute load average is at most `threshold` or `max_wait` seconds have passed."""
    # The kernel updates the 1-minute average every 5 s and, once the work ends, it decays with a 1-minute
    # time constant: waiting after a previous run is normal, and 180 s brings ~20x the threshold down to it.
    limit = quiet_threshold() if threshold is None else threshold
    start = time.monotonic()
    while (load := load_average()) > limit and (left := max_wait - (time.monotonic() - start)) > 0:
        time.sleep(min(poll, left))
    return {"load_average": load, "threshold": limit, "waited_seconds": round(time.monotonic() - start, 1),
            "busy": load > limit}


def quiet_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --allow-busy, --quiet-load and --max-wait: how a timed run waits for a quiet machine."""
    parser.add_argument("--allow-busy", action="store_true",
                        help="run even when the load average stays above --quiet-load; such runs are marked busy")
    parser.add_argument("--quiet-load", type=float, default=None,
                        help=f"1-minute load average to wait for before each timed run (default: 0.5 per core, "
                             f"{quiet_threshold():g} here)")
    parser.add_argument("--max-wait", type=float, default=180.0, help="seconds to wait for it before each timed run")


def before_timing(args: argparse.Namespace) -> dict:
    """wait_until_quiet with the command line's settings; stop unless the machine got quiet or --allow-busy."""
    quiet = wait_until_quiet(args.quiet_load, args.max_wait)
    if quiet["busy"] and not args.allow_busy:
        raise SystemExit(f"the machine is busy: 1-minute load average {quiet['load_average']:.2f} is above "
                         f"{quiet['threshold']:g} after {quiet['waited_seconds']:.0f} s; rerun on a quiet machine, "
                         "or pass --allow-busy to measure anyway (runs marked busy)")
    return quiet


def quiet_line(records: list[dict], cores: object) -> str:
    """One line for a results page: the load before the timed runs, and how many started busy."""
    loads = [r["load_average"] for r in records]
    busy = sum(r["busy"] for r in records)
    return (f"1-minute load average before each timed run: {min(loads):.2f}-{max(loads):.2f} "
            f"(mean {statistics.mean(loads):.2f}) on {cores} cores, after waiting at most "
            f"{max(r['waited_seconds'] for r in records):.0f} s for it to fall to {records[0]['threshold']:g}; "
            f"{busy} of {len(records)} runs started above it (busy).")
