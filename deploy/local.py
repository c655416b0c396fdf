"""A real deployment on one machine: a SuperLink and N SuperNodes as separate processes, TLS and
SuperNode authentication on, each SuperNode with its own data file; `flwr run` submits to it.

    python -m common.data export --dataset digits --num-partitions 3 --out data/
    python -m deploy.local --data data/ --run-config "two-stage.num-teacher-rounds=5 num-student-rounds=5"

Everything it starts is stopped when it ends, whatever happens. The command lines it ran are
written to <work>/commands.json (the compose file is checked against them).

The SuperLink listens on loopback, where `flwr` (the operator) reaches it; the SuperNodes reach it
through nginx (deploy/proxy.py), which forwards the Fleet API alone. Every runtime API (the
SuperLink's, each SuperNode's) asks its SuperExec for a shared secret. nginx must be installed
(`apt-get install nginx`).
"""

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from deploy.certs import make_secret, make_supernode_key, make_tls
from deploy.network import LOOPBACK, Network
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
    wait_log,
)
from deploy.proxy import Proxy, server_config, standalone_config

CONNECTION = "deploy"


@dataclass
class Federation:
    """A SuperLink that the `flwr` CLI reaches through `connection` in the FLWR_HOME of `env`."""

    env: dict[str, str]
    connection: str

    def _record(self, command: list[str], prefix: list[str] | None = None) -> list[str]:
        """The command line to run (a hook for subclasses that keep what they ran)."""
        return [*(prefix or []), *command]

    def flwr(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """A `flwr` CLI call against this deployment; raises with its output when it fails."""
        done = subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=PROJECT
        )
        if done.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done

    def online(self) -> int:
        """How many SuperNodes the SuperLink sees online."""
        listing = json.loads(self.flwr(["supernode", "list", self.connection, "--format", "json"]).stdout)
        return sum(1 for n in listing.get("nodes", []) if str(n.get("status", "")).lower() == "online")

    def wait_online(self, count: int, timeout: float = 90) -> None:
        """Wait until `count` SuperNodes are online."""
        deadline = time.monotonic() + timeout
        while (seen := self.online()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {seen} of {count} SuperNodes came online within {timeout:.0f} s")
            time.sleep(1)

    def run(
        self, run_config: dict[str, object] | str, app: Path | None = None, capture: bool = True
    ) -> subprocess.Popen:
        """Start `flwr run <app> <connection> --stream` (app: fedkd); the caller waits for it (or kills nodes
        meanwhile).

        `run_config` is a dict, or the text of `--run-config` as a user typed it; with `capture`
        the run's output comes back through the process's stdout, otherwise it goes to the terminal.
        """
        command = [str(BIN / "flwr"), "run", str(app or app_source()), self.connection, "--stream"]
        overrides = config_args(run_config) if isinstance(run_config, dict) else run_config
        if overrides:
            command += ["--run-config", overrides]
        output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True} if capture else {}
        return subprocess.Popen(self._record(command), env=self.env, cwd=PROJECT, **output)


@dataclass(kw_only=True)
class Deployment(Federation):
    """A running SuperLink, its proxy and its SuperNodes, started here as processes."""

    work: Path
    # The SuperLink's one port (Fleet, Control and Runtime APIs), on loopback: the operator's.
    port: int
    # The proxy's port on `host`, where SuperNodes connect: the Fleet API only.
    fleet_port: int
    tls: bool
    network: Network
    # The SuperLink's state: a SQLite file that outlives a restart, or ":flwr-in-memory:".
    database: str = "file"
    superlink: subprocess.Popen | None = None
    proxy: subprocess.Popen | None = None
    supernodes: dict[int, subprocess.Popen] = field(default_factory=dict)
    superexecs: dict[str, subprocess.Popen] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)

    @property
    def certs(self) -> Path:
        return self.work / "certs"

    @property
    def host(self) -> str:
        """Where SuperNodes reach the federation: the proxy's address (a bridge's, with network namespaces)."""
        return self.network.superlink_host

    def _secret(self, owner: str) -> list[str]:
        """The flag that gives `owner`'s runtime API, or its SuperExec, their shared secret (made on first use)."""
        path = self.certs / f"{owner}.secret"
        if not path.exists():
            make_secret(path)
        return ["--superexec-auth-secret-file", str(path)]

    def _record(self, command: list[str], prefix: list[str] | None = None) -> list[str]:
        """Keep Flower's command line (without the namespace prefix) in commands.json; return what to run."""
        self.commands.append(command)
        (self.work / "commands.json").write_text(json.dumps(self.commands, indent=1))
        return [*(prefix or []), *command]

    def start_superlink(self, auth: bool) -> None:
        """flower-superlink with TLS (and SuperNode authentication), or explicitly insecure."""
        command = [
            str(BIN / "flower-superlink"),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--isolation",
            "process",
            "--disable-runtime-dependency-installation",
            "--database",
            str(self.work / "superlink-state.db") if self.database == "file" else self.database,
            *self._secret("superlink"),
        ]
        if self.tls:
            command += [
                "--ssl-ca-certfile",
                str(self.certs / "ca.crt"),
                "--ssl-certfile",
                str(self.certs / "superlink.crt"),
                "--ssl-keyfile",
                str(self.certs / "superlink.key"),
            ]
            if auth:
                command.append("--enable-supernode-auth")
        else:
            command.append("--insecure")
        log = self.work / "superlink.log"
        self.superlink = start(self._record(command), self.env, log)
        wait_listening(self.superlink, LOOPBACK, self.port, log)
        tls = ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        self._start_superexec("superlink", f"{LOOPBACK}:{self.port}", tls, [])

    def start_proxy(self) -> None:
        """nginx on `host`:`fleet_port`, forwarding the Fleet API (alone) to the SuperLink on loopback."""
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if nginx is None:
            raise RuntimeError("deploy.local puts nginx in front of the SuperLink: install it (apt-get install nginx)")
        folder = self.work / "proxy"
        folder.mkdir(exist_ok=True)
        proxy = Proxy(
            f"{self.host}:{self.fleet_port}", f"{LOOPBACK}:{self.port}", str(self.certs) if self.tls else None
        )
        (folder / "fedkd.conf").write_text(server_config(proxy))
        (folder / "nginx.conf").write_text(standalone_config(folder / "fedkd.conf", folder))
        command = [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf")]
        log = folder / "nginx.log"
        self.proxy = start([*command, "-g", "daemon off;"], self.env, log)
        wait_listening(self.proxy, self.host, self.fleet_port, log)

    def _start_superexec(self, owner: str, address: str, tls: list[str], prefix: list[str]) -> None:
        """The SuperExec that runs `owner`'s apps in fresh processes (process isolation, as in docker-compose.yml)."""
        command = [str(BIN / "flower-superexec"), "--runtime-api-address", address, *tls, *self._secret(owner)]
        self.superexecs[owner] = start(self._record(command, prefix), self.env, self.work / f"superexec-{owner}.log")

    def register(self, index: int) -> Path:
        """Create SuperNode `index`'s key pair and register its public key with the SuperLink."""
        private, public = make_supernode_key(self.certs, f"supernode-{index}")
        self.flwr(["supernode", "register", str(public), self.connection])
        return private

    def start_supernode(self, index: int, data_path: Path, key: Path | None, **node_config: object) -> None:
        """flower-supernode for data owner `index`, with its data file and a state directory."""
        state = self.work / f"supernode-{index}-state"
        config = {"name": f"supernode-{index}", "data-path": str(data_path), "state-dir": str(state), **node_config}
        port, prefix = free_port(), self.network.node_prefix(index)
        command = [
            str(BIN / "flower-supernode"),
            "--superlink",
            f"{self.host}:{self.fleet_port}",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--isolation",
            "process",
            "--node-config",
            config_args(config),
            *self._secret(f"supernode-{index}"),
        ]
        command += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if key is not None:
            command += ["--auth-supernode-private-key", str(key)]
        log = self.work / f"supernode-{index}.log"
        self.supernodes[index] = start(self._record(command, prefix), self.env, log)
        wait_log(self.supernodes[index], log, f"running on http://{LOOPBACK}:{port}")
        # The node's Runtime API stays on its own host's loopback (in compose: a network of the node's own), and
        # asks for their shared secret besides.
        self._start_superexec(f"supernode-{index}", f"{LOOPBACK}:{port}", ["--insecure"], prefix)

    def kill_supernode(self, index: int) -> None:
        """Stop SuperNode `index`, its SuperExec and the ClientApp it may be running."""
        stop(self.supernodes.pop(index))
        stop(self.superexecs.pop(f"supernode-{index}"))


@contextmanager
def deployment(
    work: Path, data_files: list[Path], tls: bool = True, auth: bool = True, database: str = "file"
) -> Iterator[Deployment]:
    """Start a SuperLink and one SuperNode per data file; stop them all on exit."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "flwr-home"
    home.mkdir(exist_ok=True)
    network = Network()
    dep = Deployment(
        env=flower_env(home),
        connection=CONNECTION,
        work=work,
        port=free_port(),
        fleet_port=free_port(),
        tls=tls,
        network=network,
        database=database,
    )
    if tls:
        make_tls(dep.certs, [dep.host, LOOPBACK, "localhost"])
        connection = f'root-certificates = "{dep.certs / "ca.crt"}"'
    else:
        connection = "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{LOOPBACK}:{dep.port}"\n{connection}\n'
    )
    with ExitStack() as cleanup:
        cleanup.enter_context(sigterm_unwinds())
        cleanup.callback(network.close)
        cleanup.callback(lambda: [stop(p) for p in dep.supernodes.values()])
        cleanup.callback(lambda: [stop(p) for p in dep.superexecs.values()])
        cleanup.callback(lambda: dep.superlink and stop(dep.superlink))
        cleanup.callback(lambda: dep.proxy and stop(dep.proxy))
        dep.start_superlink(auth=tls and auth)
        dep.start_proxy()
        for index, path in enumerate(data_files):
            key = dep.register(index) if tls and auth else None
            dep.start_supernode(index, Path(path).resolve(), key)
        dep.wait_online(len(data_files))
        yield dep


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m deploy.local`."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="folder of part-<i>.npz files (one SuperNode each)")
    parser.add_argument("--run-config", default="", help='run config overrides, e.g. "two-stage.num-teacher-rounds=5"')
    parser.add_argument(
        "--work", type=Path, help="folder for certificates, keys, logs, state (default: a temporary one)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="development only: no TLS and no SuperNode authentication"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: deploy one SuperNode per part-*.npz in --data, submit a run, stream it, tear down."""
    cli = parser()
    args = cli.parse_args(argv)
    files = sorted(args.data.glob("part-*.npz"))
    if not files:
        cli.error(f"no part-*.npz files in {args.data}; write some with `python -m common.data export`")
    with ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedkd-deploy-")))
        dep = stack.enter_context(deployment(work.resolve(), files, tls=not args.insecure))
        hosts = "own network namespaces" if dep.network.isolated else "loopback"
        print(
            f"SuperLink on {LOOPBACK}:{dep.port} ({'insecure' if args.insecure else 'TLS, SuperNode authentication'}), "
            f"its Fleet API on {dep.host}:{dep.fleet_port} (nginx), {len(files)} SuperNodes online on {hosts}; "
            f"logs in {work}",
            flush=True,
        )
        raise SystemExit(dep.run(args.run_config, capture=False).wait())


if __name__ == "__main__":
    main()
