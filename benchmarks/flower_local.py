"""Run the app with `flwr run` on a private simulation SuperLink: own FLWR_HOME, free ports, stopped by PID.

Used by the end-to-end tests and the benchmarks, so that neither touches a user's ~/.flwr
or a SuperLink that another session started.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
    )
    return env


def stop(process: subprocess.Popen) -> None:
    """Stop a process we started, and its children, by its process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def simulation_superlink(home: Path) -> Iterator[dict[str, str]]:
    """Start `flower-superlink --simulation` on free ports; yield the env whose connection `test` reaches it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(home)
    log = open(home / "superlink.log", "w")
    process = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation", "--database", ":flwr-in-memory:"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SuperLink did not start; see {home / 'superlink.log'}")
            time.sleep(0.2)
        yield env
    finally:
        stop(process)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def federation_config(num_supernodes: int, actors: int = 5) -> str:
    """Simulation options: `actors` single-threaded ClientApp workers, however many cores there are.

    A ClientApp call on the seed-sized task mostly waits on Python dispatch and Ray hand-offs,
    so five workers on two cores overlap that waiting and serve a round's five clients at once.
    """
    return f"num-supernodes={num_supernodes} client-resources-num-cpus=1 init-args-num-cpus={actors}"


def flwr_run(
    env: dict[str, str], run_config: dict[str, object], num_supernodes: int, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`flwr run . test --stream` with `run_config`; returns the finished process with its output."""
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    command = [
        str(BIN / "flwr"), "run", str(PROJECT), "test", "--stream",
        "--federation-config", federation_config(num_supernodes),
    ]
    if overrides:
        command += ["--run-config", overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT)


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def run_directory(output_dir: Path) -> Path:
    """The single run directory a run wrote under `output_dir`."""
    runs = [p for p in output_dir.iterdir() if p.is_dir()]
    if len(runs) != 1:
        raise RuntimeError(f"expected one run directory in {output_dir}, found {runs}")
    return runs[0]


def have_flower() -> bool:
    """True when the Flower CLI of this environment is installed."""
    return shutil.which("flwr", path=str(BIN)) is not None
