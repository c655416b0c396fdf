"""A real deployment on this machine: SuperLink + 3 SuperNodes as processes, TLS, SuperNode authentication,
node-local .npz files, nginx in front of the SuperLink; one SuperNode is killed mid-run, and a SuperNode's host
is refused the operator's commands while the others train."""

import json
import re
import shlex
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml

from common.config import parse_run_config
from common.data import export_partitions
from deploy.certs import make_supernode_key
from deploy.local import deployment
from deploy.network import namespaces_work
from deploy.processes import BIN, PROJECT, app_source
from deploy.simulation import run_directory

pytestmark = pytest.mark.e2e

# Long enough for a ClientApp process to start on a loaded 2-core machine; a killed node costs it per round.
ROUND_TIMEOUT = 30
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT.parent / "shared" / "compose" / "compose-spec.json"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    files = export_partitions(parse_run_config({"dataset": "digits", "partitioner": "iid"}), 3, data)
    # The second data owner keeps its rows as a CSV table (64 pixel columns and a label), not an .npz.
    with np.load(files[1]) as part:
        columns = {f"p{i}": part["x"][:, i] for i in range(64)}
        pd.DataFrame({**columns, "label": part["y"]}).to_csv(data / "part-1.csv", index=False)
    files[1] = data / "part-1.csv"
    # A fourth data owner whose file has 10 features instead of digits' 64.
    np.savez(data / "wrong.npz", x=np.zeros((20, 10), dtype=np.float32), y=np.zeros(20, dtype=np.int64))
    with deployment(tmp_path_factory.mktemp("deploy"), [*files, data / "wrong.npz"]) as dep:
        yield dep, data


def wait_for_rounds(out: Path, count: int, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        runs = list(out.glob("*/history.json"))
        if runs and len(json.loads(runs[0].read_text())) >= count:
            return
        time.sleep(0.5)
    output = process.communicate(timeout=30)[0] if process.poll() is not None else "(still running)"
    raise AssertionError(f"{count} rounds did not finish in time:\n{output[-3000:]}")


def test_a_bad_run_config_stops_the_run_naming_the_key(deployed, tmp_path):
    dep, _ = deployed
    output, _ = dep.run({"two-stage.alpha": 1.5, "output-dir": str(tmp_path)}).communicate(timeout=300)
    assert "run config 'two-stage.alpha' = 1.5: Input should be less than or equal to 1" in output, output[-3000:]
    assert not list(tmp_path.iterdir())


def test_more_clients_than_nodes_stops_the_run(deployed, tmp_path):
    dep, _ = deployed
    online = dep.online()
    output, _ = dep.run({"min-train-nodes": online + 1, "output-dir": str(tmp_path)}).communicate(timeout=300)
    assert f"'min-train-nodes' = {online + 1} is more than the {online} connected nodes" in output, output[-3000:]


def operator_commands_from_a_node_host(dep, index: int, tmp_path: Path) -> dict[str, subprocess.CompletedProcess]:
    """From SuperNode `index`'s host (its network namespace), `flwr run` and `flwr supernode register` against the
    address SuperNodes use, and a plain connection to the SuperLink's own port on that host's way in."""
    home = tmp_path / "node-side-flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink.fleet]\naddress = "{dep.host}:{dep.fleet_port}"\nroot-certificates = "{dep.certs / "ca.crt"}"\n'
    )
    _, intruder = make_supernode_key(tmp_path, "intruder")
    prefix, env = dep.network.node_prefix(index), {**dep.env, "FLWR_HOME": str(home)}
    commands = {
        "run": [str(BIN / "flwr"), "run", str(app_source()), "fleet"],
        "register": [str(BIN / "flwr"), "supernode", "register", str(intruder), "fleet"],
        "superlink": [sys.executable, "-c", f"import socket; socket.create_connection(('{dep.host}', {dep.port}), 3)"],
    }
    # All at once, so that they finish while the nodes still train.
    with ThreadPoolExecutor(len(commands)) as pool:
        done = pool.map(
            lambda c: subprocess.run([*prefix, *c], env=env, capture_output=True, text=True, timeout=180, cwd=PROJECT),
            commands.values(),
        )
        return dict(zip(commands, done))


def test_run_survives_a_killed_supernode_and_a_node_host_is_refused_the_operators_commands(deployed, tmp_path):
    dep, data = deployed
    nodes = json.loads(dep.flwr(["supernode", "list", dep.connection, "--format", "json"]).stdout)["nodes"]
    out = tmp_path / "out"
    run = dep.run(
        {
            # No final evaluations: each would wait out the deadline on the killed node while it is still listed.
            "two-stage.num-teacher-rounds": 2,
            "num-student-rounds": 1,
            "fraction-train": 1.0,
            "fraction-evaluate": 0.0,
            "local-epochs": 2,
            "round-timeout": ROUND_TIMEOUT,
            "min-replies": 0.5,
            "output-dir": str(out),
            "server-test": str(data / "server-test.npz"),
        }
    )
    try:
        wait_for_rounds(out, 1, run)
        dep.kill_supernode(2)
        # While the other nodes train on, SuperNode 0's host tries the operator's commands through the proxy.
        refused = operator_commands_from_a_node_host(dep, 0, tmp_path)
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-4000:]
    for name, path in (("run", "/v1/control/start-run"), ("register", "/v1/control/register-node")):
        said = refused[name].stdout + refused[name].stderr
        assert refused[name].returncode != 0 and "403 Forbidden" in said and path in said, said[-2000:]
    # The SuperLink listens on loopback alone: a node's host finds nothing at its port (with namespaces; on
    # loopback alone every process shares the SuperLink's address).
    if dep.network.isolated:
        assert "ConnectionRefusedError" in refused["superlink"].stderr, refused["superlink"].stderr[-2000:]
    after = json.loads(dep.flwr(["supernode", "list", dep.connection, "--format", "json"]).stdout)["nodes"]
    assert len(after) == len(nodes)
    # The proxy's log: that host was refused both, and its SuperNode's replies went through before and after.
    node = dep.network.node_address(0) + " "
    lines = [line for line in (dep.work / "proxy" / "access.log").read_text().splitlines() if line.startswith(node)]
    refusals = [i for i, line in enumerate(lines) if '"POST /v1/control/' in line]
    assert {lines[i].split('"')[1] for i in refusals} == {
        "POST /v1/control/start-run HTTP/1.1",
        "POST /v1/control/register-node HTTP/1.1",
    }
    assert all('" 403 ' in lines[i] for i in refusals), lines[-50:]
    replies = [i for i, line in enumerate(lines) if '"POST /v1/fleet/push-messages HTTP/1.1" 200 ' in line]
    assert replies[0] < refusals[0] and replies[-1] > refusals[-1], lines[-50:]
    run_dir = run_directory(out)
    history = json.loads((run_dir / "history.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(r["phase"], r["round"]) for r in history] == [("teacher", 1), ("teacher", 2), ("student", 1)]
    assert history[0]["replies"] == 3
    # The node whose data has another shape is refused by name before round 1, never sampled; the run goes on.
    refused = "its data holds examples of shape (10,); the run's task has (1, 8, 8)"
    assert summary["refused_nodes"] == {"supernode-3": refused}
    assert "node supernode-3 refused: " + refused in output
    assert all("supernode-3" not in r["sampled"] for r in history)
    # After the kill the node never answers: it fails while still listed, then is no longer sampled.
    for r in history[1:]:
        failed = {f["node"] for f in r["failed"]}
        assert r["replies"] == 2 and failed <= {"supernode-2"}
        assert ("supernode-2" in failed) == ("supernode-2" in r["sampled"])
    assert summary["status"] == "complete"
    assert summary["teacher_accuracy"] > 0.6 and summary["student_accuracy"] > 0.4
    assert history[0]["federated_accuracy"] is not None
    assert f"fedkd: run directory: {run_dir}" in output


def test_an_unregistered_supernode_key_is_refused(deployed, tmp_path):
    dep, data = deployed
    key, _ = make_supernode_key(tmp_path, "stranger")
    before = dep.online()
    dep.start_supernode(9, data / "part-0.npz", key)
    log_path = dep.work / "supernode-9.log"
    refusals = ("Failed to activate SuperNode", "Connection attempt failed")
    deadline = time.monotonic() + 60
    while not any(r in log_path.read_text() for r in refusals) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = log_path.read_text()
    dep.kill_supernode(9)
    assert dep.online() == before
    # A registered node gets an id; the stranger never does, it is refused.
    assert "SuperNode ID" in (dep.work / "supernode-0.log").read_text()
    assert "SuperNode ID" not in log and any(r in log for r in refusals), log[-2000:]


def test_every_connection_used_tls_and_authentication(deployed):
    dep, _ = deployed
    # As root, every SuperNode ran on a host of its own (network namespace, own address).
    assert dep.network.isolated == namespaces_work()
    if dep.network.isolated:
        assert dep.host.startswith("10.231.") and len(dep.network.namespaces) >= 4
    commands = json.loads((dep.work / "commands.json").read_text())
    superlink = next(c for c in commands if c[0].endswith("flower-superlink"))
    assert "--enable-supernode-auth" in superlink and "--ssl-certfile" in superlink and "--insecure" not in superlink
    # The SuperLink on loopback (the operator's); SuperNodes dial the proxy's port.
    assert superlink[superlink.index("--host") + 1] == "127.0.0.1"
    supernodes = [c for c in commands if c[0].endswith("flower-supernode")]
    assert len(supernodes) >= 3
    assert all("--root-certificates" in c and "--auth-supernode-private-key" in c for c in supernodes)
    assert {c[c.index("--superlink") + 1] for c in supernodes} == {f"{dep.host}:{dep.fleet_port}"}
    # Every runtime API and every SuperExec holds a secret, readable by its owner alone.
    for command in [c for c in commands if Path(c[0]).name != "flwr"]:
        secret = Path(command[command.index("--superexec-auth-secret-file") + 1])
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, command


def _flags(command: list[str]) -> set[str]:
    return {token for token in command if token.startswith("--")}


def _node_config_keys(command: list[str]) -> set[str]:
    if "--node-config" not in command:
        return set()
    text = command[command.index("--node-config") + 1]
    return {pair.split("=", 1)[0] for pair in shlex.split(text)}


def test_compose_file_is_valid_and_runs_only_tested_command_lines(deployed):
    dep, _ = deployed
    compose = yaml.safe_load(COMPOSE.read_text())
    # The schema declares draft 07 by a URL jsonschema does not recognise; name the draft outright.
    jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(compose)
    flwr_pin = re.search(r'"flwr\[simulation\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    native = json.loads((dep.work / "commands.json").read_text())
    binaries = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}
    checked = 0
    for name, service in compose["services"].items():
        image, tag = service["image"].split(":")
        if service.get("entrypoint") == ["python", "-m", "deploy.compose_init"]:
            continue  # not Flower: it prepares the volumes (tests/deploy/test_compose.py runs it)
        if image == "nginx":
            continue  # the proxy: its configuration is deploy/proxy.py's (tests/deploy/test_proxy.py)
        binary = service.get("entrypoint") or binaries[image]
        if image.startswith("flwr/"):
            assert tag == flwr_pin, f"{name} uses {service['image']}, pyproject pins flwr {flwr_pin}"
        argv = [binary, *service["command"]]
        matches = [
            c
            for c in native
            if Path(c[0]).name == binary
            and _flags(c) == _flags(argv)
            and _node_config_keys(c) == _node_config_keys(argv)
        ]
        assert matches, f"service {name}: {argv} matches no command line the deployment test ran"
        checked += 1
    assert checked == 8
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"FROM flwr/superexec:{flwr_pin}" in dockerfile and "torch==2.13.0" in dockerfile
