"""Start and stop Flower's processes for tests, benchmarks and the launcher: own FLWR_HOME, free ports, PIDs."""

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.config import toml_value

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent
SUPEREXEC_POLL_SECONDS = "0.05"
# What a run of the app needs: its manifest and the packages its ServerApp and ClientApp import.
APP_PARTS = ("pyproject.toml", "README.md", "common", "server_app", "client_app")


def app_copy(dest: Path, parts: tuple[str, ...] = APP_PARTS, pyproject: str | None = None) -> Path:
    """Copy the app's `parts` to `dest` (and `pyproject` as its pyproject.toml, if given); returns `dest`."""
    for part in parts:
        source = PROJECT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__", "results"))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, dest / part)
    if pyproject is not None:
        (dest / "pyproject.toml").write_text(pyproject)
    return dest


@functools.cache
def app_source() -> Path:
    """The app to `flwr run` from tests and benchmarks: a copy of its parts, made once per process.

    `flwr run DIR` walks every file under DIR before it filters what goes into the FAB: with the
    virtual environment inside the project that walk alone takes about 5 s per run.
    """
    copy = Path(tempfile.mkdtemp(prefix="fedkd-app-"))
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    return app_copy(copy / "fedkd")


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower commands: private FLWR_HOME, no runtime installs, no telemetry."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        MPLCONFIGDIR=str(home / "mpl"),
        # In subprocess isolation Flower starts `flower-superexec` by name.
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        # The SuperExec checks for new ClientApp/ServerApp tasks every second by default.
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL=SUPEREXEC_POLL_SECONDS,
    )
    return env


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `command` in its own process group, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process we started, and its children, by its process group."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    # Children (a SuperExec, a ClientApp) may outlive their parent briefly: end the group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit, so the `finally`s that stop our Flower processes run.

    They start in their own sessions: without this, `kill` on a test or benchmark leaves them running.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def listening(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_listening(process: subprocess.Popen, host: str, port: int, log: Path, timeout: float = 60) -> None:
    """Wait until `process` listens on host:port; fail with its log's tail if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while not listening(host, port):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(process.args[0]).name} did not start listening on {host}:{port}:\n{tail}")
        time.sleep(0.2)


def wait_log(process: subprocess.Popen, log: Path, text: str, timeout: float = 60) -> None:
    """Wait until `text` appears in `log` (for processes in another network namespace, whose ports this one
    cannot probe)."""
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(process.args[0]).name} did not log {text!r}:\n{tail}")
        time.sleep(0.2)


def config_args(values: dict[str, object]) -> str:
    """`k=v k2="s"` for --run-config and --node-config."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())
