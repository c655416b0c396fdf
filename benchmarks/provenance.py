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
    # Results files are what benchmarks write, not code: they do not make the commit's code differ.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    ).stdout.strip()
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
    return (
        f"Measured at commit `{info['commit']}` on a {info['cores']}-core {info['machine']} ({info['cpu']}), "
        f"{info['os']}, Python {info['python']}, torch {info['torch']}, flwr {info['flwr']}."
    )


def load_average() -> float:
    """The 1-minute load average: how busy the machine was around a timing."""
    return round(os.getloadavg()[0], 2)


QUIET_CPU_SHARE = 0.25


def cpu_busy_share(window: float = 2.0) -> float:
    """Share of all cores' time spent busy over the next `window` seconds (/proc/stat): what runs right now."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    idle, total = sample()
    time.sleep(window)
    idle_after, total_after = sample()
    return round(1 - (idle_after - idle) / max(1, total_after - total), 3)


def reading(window: float = 2.0) -> dict:
    """The CPU share in use and the 1-minute load average now, recorded beside a timing without waiting."""
    return {"cpu_busy": cpu_busy_share(window), "load_average": load_average()}


def wait_until_quiet(threshold: float | None = None, max_wait: float = 180.0, window: float = 2.0) -> dict:
    """Wait until at most `threshold` of the CPU is busy (default a quarter) or `max_wait` seconds have passed.

    The 1-minute load average is recorded beside it, but not waited for: after a previous run it still
    counts that run's processes for minutes, while the CPU share says whether anything runs now.
    """
    limit = QUIET_CPU_SHARE if threshold is None else threshold
    start = time.monotonic()
    while (busy := cpu_busy_share(window)) > limit and time.monotonic() - start < max_wait:
        pass
    return {
        "cpu_busy": busy,
        "load_average": load_average(),
        "threshold": limit,
        "waited_seconds": round(time.monotonic() - start, 1),
        "busy": busy > limit,
    }


def quiet_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --allow-busy, --quiet-cpu and --max-wait: how a timed run waits for a quiet machine."""
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="run even when the CPU stays busier than --quiet-cpu; such runs are marked busy",
    )
    parser.add_argument(
        "--quiet-cpu",
        type=float,
        default=QUIET_CPU_SHARE,
        help="share of the CPU that may be busy when a timed run starts (default %(default)s)",
    )
    parser.add_argument("--max-wait", type=float, default=180.0, help="seconds to wait for it before each timed run")


def before_timing(args: argparse.Namespace) -> dict:
    """wait_until_quiet with the command line's settings; stop unless the machine got quiet or --allow-busy."""
    quiet = wait_until_quiet(args.quiet_cpu, args.max_wait)
    if quiet["busy"] and not args.allow_busy:
        raise SystemExit(
            f"the machine is busy: {quiet['cpu_busy']:.0%} of its CPU in use, above "
            f"{quiet['threshold']:.0%}, after {quiet['waited_seconds']:.0f} s (1-minute load average "
            f"{quiet['load_average']:.2f}); rerun on a quiet machine, or pass --allow-busy to measure "
            "anyway (runs marked busy)"
        )
    return quiet


def quiet_line(records: list[dict], cores: object) -> str:
    """One line for a results page: how busy the machine was before the timed runs, and how many started busy."""
    loads = [r["load_average"] for r in records]
    cpu = [r["cpu_busy"] for r in records if "cpu_busy" in r]
    waited = [r for r in records if "busy" in r]
    share = f"CPU in use before each timed run {min(cpu):.0%}-{max(cpu):.0%}; " if cpu else ""
    checked = (
        f"; {sum(r['busy'] for r in waited)} of {len(waited)} quiet checks (at most "
        f"{waited[0]['threshold']:.0%} of the CPU in use) found the machine busy"
        if waited
        else ""
    )
    return (
        f"{share}1-minute load average before each timed run {min(loads):.2f}-{max(loads):.2f} "
        f"(mean {statistics.mean(loads):.2f}) on {cores} cores{checked}."
    )
