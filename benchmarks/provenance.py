"""Where a benchmark's figures come from: the commit and the machine, read when the benchmark runs."""

import os
import platform
import subprocess
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
