"""Run the app with `flwr run` on a private simulation SuperLink: own FLWR_HOME, free port, stopped by PID.

Used by the end-to-end tests and the benchmarks, so that neither touches a user's ~/.flwr or a
SuperLink that someone else started.
"""

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.processes import (
    BIN,
    PROJECT,
    app_source,
    config_args,
    flower_env,
    free_port,
    sigterm_unwinds,
    start,
    stop,
    wait_listening,
)
from server_app.records import Summary, read_summary


@contextmanager
def simulation_superlink(home: Path) -> Iterator[dict[str, str]]:
    """Start `flower-superlink --simulation` on a free port; yield the env whose connection `test` reaches it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = flower_env(home)
    log = home / "superlink.log"
    with sigterm_unwinds():
        process = start(
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--simulation",
                "--isolation",
                "subprocess",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
                "--database",
                ":flwr-in-memory:",
            ],
            env,
            log,
        )
        try:
            wait_listening(process, "127.0.0.1", port, log)
            yield env
        finally:
            stop(process)


def federation_config(num_supernodes: int, actors: int = 5) -> str:
    """Simulation options: `actors` single-threaded ClientApp workers, however many cores there are.

    A ClientApp call on the seed-sized task mostly waits on Python dispatch and Ray hand-offs,
    so five workers on two cores overlap that waiting and serve a round's five clients at once.
    """
    return f"num-supernodes={num_supernodes} client-resources-num-cpus=1 init-args-num-cpus={actors}"


def flwr_run_command(
    run_config: dict[str, object], num_supernodes: int, app: Path | None = None, actors: int = 5
) -> list[str]:
    """`flwr run <app> test --stream` with `run_config` (app: fedkd)."""
    command = [
        str(BIN / "flwr"),
        "run",
        str(app or app_source()),
        "test",
        "--stream",
        "--federation-config",
        federation_config(num_supernodes, actors),
    ]
    if run_config:
        command += ["--run-config", config_args(run_config)]
    return command


def flwr_run(
    env: dict[str, str],
    run_config: dict[str, object],
    num_supernodes: int,
    timeout: float = 900,
    app: Path | None = None,
    actors: int = 5,
) -> subprocess.CompletedProcess:
    """`flwr_run_command`, run to its end; the finished process with its output."""
    command = flwr_run_command(run_config, num_supernodes, app, actors)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT)


def flower_pids(flwr_home: str, program: str) -> list[int]:
    """PIDs of the `program` processes (e.g. "flwr-serverapp") started under FLWR_HOME=`flwr_home`.

    Matching the environment, not only the name, leaves other sessions' Flower processes alone.
    """
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if program.encode() in (proc / "cmdline").read_bytes() and f"FLWR_HOME={flwr_home}".encode() in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return pids


def run_directory(output_dir: Path) -> Path:
    """The single run directory a run wrote under `output_dir`."""
    # Not the `latest` link to it.
    runs = [p for p in output_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    if len(runs) != 1:
        raise RuntimeError(f"expected one run directory in {output_dir}, found {runs}")
    return runs[0]


def run_summary(env: dict[str, str], run_config: dict[str, object], num_supernodes: int, out: Path) -> Summary:
    """`flwr_run` with output-dir `out`; the run's summary.json, or an error carrying the run's output."""
    done = flwr_run(env, {**run_config, "output-dir": str(out)}, num_supernodes)
    if done.returncode != 0:
        raise RuntimeError(f"flwr run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return read_summary(run_directory(out) / "summary.json")
