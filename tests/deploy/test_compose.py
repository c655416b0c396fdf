"""`docker compose up` for real: the repository's docker-compose.yml on a Docker engine, with Flower's
images and nginx's (stand-ins where they cannot be pulled), TLS and SuperNode authentication, 3 SuperNodes
behind the proxy; what a SuperNode's container can reach.

Skips where no Docker engine runs, and fails there instead when CI is set (CI starts one).
"""

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.certs import make_supernode_key
from deploy.processes import BIN, app_source, sigterm_unwinds
from tests.deploy.compose_stack import compose_stack, docker_unavailable, flower_images

pytestmark = pytest.mark.e2e

NODES = ("supernode-0", "supernode-1", "supernode-2")
QUICK = {
    "two-stage.num-teacher-rounds": 1,
    "num-student-rounds": 1,
    "fraction-train": 1.0,
    "fraction-evaluate": 0.0,
    "local-epochs": 1,
    "round-timeout": 120,
    "server-test": "/data/server-test.npz",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = docker_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine for the compose deployment: {reason}")
        pytest.skip(f"compose deployment not tested: {reason}")
    images = flower_images()
    stack = compose_stack(tmp_path_factory.mktemp("compose"))
    with sigterm_unwinds():
        try:
            images.update(stack.build())
            print(f"images: {images}")
            stack.compose("up", "-d")
            yield stack
        finally:
            stack.down()


def first_round_recorded(stack, before: set, run) -> None:
    """Wait until the run `run` submitted has a round in its history (or has ended, or 5 minutes passed)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        new = set(stack.run_dirs()) - before
        if new and (history := next(iter(new)) / "history.json").exists() and json.loads(history.read_text()):
            return
        time.sleep(0.5)


def submit(stack, config: dict, during=None) -> tuple[dict, list[dict], str]:
    """Run fedkd to the end on the compose deployment, calling `during()` once its first round is recorded; its
    summary, history and output."""
    before = set(stack.run_dirs())
    run = stack.run({**QUICK, **config}, app=stack.work)
    try:
        if during is not None:
            first_round_recorded(stack, before, run)
            during()
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-4000:]
    (run_dir,) = set(stack.run_dirs()) - before
    # `flwr run` exits 0 when the ServerApp fails: an aborted run (no history) shows its reason.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "history.json").exists(), output[-4000:]
    return summary, json.loads((run_dir / "history.json").read_text()), output


def test_nodes_started_before_their_keys_are_registered_come_back(stack):
    # The SuperNodes are up before any key is registered: each is refused, exits, and is restarted.
    deadline = time.monotonic() + 120
    while min(stack.state(n)["RestartCount"] for n in NODES) < 1 and time.monotonic() < deadline:
        time.sleep(1)
    assert min(stack.state(n)["RestartCount"] for n in NODES) >= 1, stack.logs("supernode-0")[-2000:]
    assert "Failed to activate SuperNode" in stack.logs("supernode-0") or "305" in stack.logs("supernode-0")
    for i in range(3):
        stack.flwr(["supernode", "register", str(stack.work / "certs" / f"supernode-{i}.pub"), stack.connection])
    stack.wait_online(3, timeout=120)


def operator_commands_from_the_node_side(stack) -> None:
    """`flwr run` and `flwr supernode register` at the address SuperNodes use, from outside (the proxy's published
    port) and from inside a SuperNode's container with its own key: the proxy refuses each with 403."""
    home = stack.work / "node-side-flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink.fleet]\naddress = "127.0.0.1:{stack.fleet_port}"\n'
        f'root-certificates = "{stack.work / "certs" / "ca.crt"}"\n'
    )
    flwr = {"env": {**stack.env, "FLWR_HOME": str(home)}, "cwd": stack.work}
    inside = [
        *("docker", "exec", "-i", "-e", "FLWR_HOME=/tmp/flwr", stack.container("supernode-0"), "sh", "-c"),
        "mkdir -p /tmp/flwr && cat > /tmp/flwr/config.toml && flwr supernode register /key/supernode.pub fleet",
    ]
    commands = [
        ([str(BIN / "flwr"), "run", str(app_source()), "fleet"], flwr),
        ([str(BIN / "flwr"), "supernode", "register", "certs/supernode-0.pub", "fleet"], flwr),
        (inside, {"input": '[superlink.fleet]\naddress = "superlink:9092"\nroot-certificates = "/ca/ca.crt"\n'}),
    ]
    # All at once, so that they finish while the nodes still train.
    with ThreadPoolExecutor(len(commands)) as pool:
        attempts = list(
            pool.map(lambda c: subprocess.run(c[0], capture_output=True, text=True, timeout=180, **c[1]), commands)
        )
    for attempt, path in zip(attempts, ("start-run", "register-node", "register-node")):
        said = attempt.stdout + attempt.stderr
        assert attempt.returncode != 0 and "403 Forbidden" in said and f"/v1/control/{path}" in said, said[-2000:]


def test_restarted_superlink_and_supernode_and_crashed_superexec_rejoin_with_their_keys(stack):
    stack.compose("restart", "supernode-1")
    restarts = stack.state("superexec-supernode-2")["RestartCount"]
    stack.crash("superexec-supernode-2")
    deadline = time.monotonic() + 60
    while (
        not (
            stack.state("superexec-supernode-2")["RestartCount"] > restarts
            and stack.state("superexec-supernode-2")["Running"]
        )
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert stack.state("superexec-supernode-2")["RestartCount"] == restarts + 1
    # The SuperLink's database keeps the registered keys: the nodes authenticate again after its restart.
    stack.compose("restart", "superlink")
    stack.wait_online(3, timeout=120)
    listing = json.loads(stack.flwr(["supernode", "list", stack.connection, "--format", "json"]).stdout)
    assert len(listing["nodes"]) == 3
    # The run of the next test is theirs: every node replies in every round.


def test_both_phases_complete_on_three_nodes_while_the_node_side_is_refused_the_control_api(stack):
    config = {"two-stage.num-teacher-rounds": 2, "fraction-evaluate": 1.0, "local-epochs": 3}
    summary, history, output = submit(stack, config, during=lambda: operator_commands_from_the_node_side(stack))
    # The proxy's log: SuperNode 0's container was refused, and its replies went through before and after.
    node = addresses(stack, "supernode-0")["federation"] + " "
    lines = [line.split("| ", 1)[-1] for line in stack.logs("proxy").splitlines()]
    lines = [line for line in lines if line.startswith(node)]
    refusals = [i for i, line in enumerate(lines) if '"POST /v1/control/register-node HTTP/1.1" 403 ' in line]
    replies = [i for i, line in enumerate(lines) if '"POST /v1/fleet/push-messages HTTP/1.1" 200 ' in line]
    assert len(refusals) == 1 and replies[0] < refusals[0] < replies[-1], [lines[i] for i in sorted(refusals + replies)]
    assert [(r["phase"], r["round"]) for r in history] == [("teacher", 1), ("teacher", 2), ("student", 1)]
    assert all(r["replies"] == 3 and r["failures"] == 0 for r in history)
    assert all(sorted(r["sampled"]) == list(NODES) for r in history)
    assert summary["status"] == "complete"
    assert summary["teacher_accuracy"] > 0.6 and summary["student_accuracy"] > 0.4
    assert summary["teacher_federated_accuracy"] > 0.6 and summary["student_federated_accuracy"] > 0.4
    run_dir = stack.run_dirs()[-1]
    assert {"history.json", "summary.json", "teacher.pt", "student.pt", "checkpoint.pt"} <= {
        p.name for p in run_dir.iterdir()
    }
    # Written by the container's user (uid 49999), readable on the host.
    assert run_dir.stat().st_uid == 49999 and (run_dir / "student.pt").stat().st_mode & 0o004
    assert f"outputs in /app/fedkd-runs/{run_dir.name}" in output
    assert (stack.work / "outputs" / "latest").resolve() == run_dir.resolve()


def test_an_unregistered_supernode_is_refused_and_the_others_stay(stack, tmp_path):
    key, _ = make_supernode_key(tmp_path, "stranger")
    # Readable by the image's user (uid 49999): this key is thrown away.
    tmp_path.chmod(0o755)
    key.chmod(0o644)
    name = f"{stack.project}-stranger"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            f"{stack.project}_federation",
            "-v",
            f"{stack.project}_ca:/ca:ro",
            "-v",
            f"{tmp_path}:/key:ro",
            stack.supernode_image,
            "--superlink",
            "superlink:9092",
            "--root-certificates",
            "/ca/ca.crt",
            "--auth-supernode-private-key",
            "/key/stranger",
            "--isolation",
            "process",
        ],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True
            ).stdout.strip()
            == "true"
            and time.monotonic() < deadline
        ):
            time.sleep(1)
        log = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        log = log.stdout + log.stderr
        code = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True
        ).stdout.strip()
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert "Failed to activate SuperNode" in log and "SuperNode ID" not in log, log[-2000:]
    assert code != "0"
    stack.wait_online(3)
    assert all(stack.state(n)["Running"] for n in NODES)


# Run inside a container: try a TCP connection to each HOST:PORT argument; print each target and what happened.
TCP_PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 3).close()
        print(target, "open")
    except OSError as error:
        print(target, type(error).__name__)
"""
# Run inside a SuperExec's container: ask the runtime API at argv[1] for a task as a SuperExec does, with the
# secret in argv[2] if given; print "accepted" or "refused <HTTP status>".
RUNTIME_PROBE = """
import sys
import httpx
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient
interceptors = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
if len(sys.argv) > 2:
    secret, methods = open(sys.argv[2], "rb").read(), {"/flwr.proto.Runtime/AcquireTask"}
    interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=methods))
client = RuntimeHttpClient.from_server_address(sys.argv[1], True, None, interceptors)
try:
    client.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-clientapp"]))
    print("accepted")
except httpx.HTTPStatusError as error:
    print("refused", error.response.status_code)
"""


def addresses(stack, service: str) -> dict[str, str]:
    """`service`'s address on each of its networks, by the network's name in the compose file."""
    inspected = subprocess.run(["docker", "inspect", stack.container(service)], capture_output=True, text=True)
    networks = json.loads(inspected.stdout)[0]["NetworkSettings"]["Networks"]
    return {name.removeprefix(f"{stack.project}_"): network["IPAddress"] for name, network in networks.items()}


def in_container(stack, service: str, code: str, *args: str) -> str:
    done = subprocess.run(
        ["docker", "exec", stack.container(service), "python", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def reach(stack, service: str, *targets: str) -> dict[str, str]:
    """What became of a TCP connection from `service`'s container to each target."""
    return dict(line.rsplit(" ", 1) for line in in_container(stack, service, TCP_PROBE, *targets).splitlines())


def test_a_nodes_containers_reach_no_other_runtime_api_nor_the_superlink(stack):
    node_0, superlink = addresses(stack, "supernode-0"), addresses(stack, "superlink")
    assert set(node_0) == {"federation", "node-0"} and set(superlink) == {"operator"}
    # Another SuperNode: the proxy, and nothing else of the federation's.
    seen = reach(
        stack,
        "supernode-1",
        "superlink:9092",
        f"{node_0['federation']}:9094",
        f"{node_0['node-0']}:9094",
        "supernode-0-runtime:9094",
        f"{superlink['operator']}:9093",
        "superlink-backend:9093",
    )
    assert seen.pop("superlink:9092") == "open"
    # On the network they share nothing listens at 9094: the runtime API is bound to node-0's address alone.
    assert seen.pop(f"{node_0['federation']}:9094") == "ConnectionRefusedError"
    assert "open" not in seen.values(), seen
    # The ClientApps' container of another node: its own SuperNode's runtime API, nothing else.
    seen = reach(
        stack,
        "superexec-supernode-1",
        "supernode-1-runtime:9094",
        f"{node_0['federation']}:9094",
        f"{node_0['node-0']}:9094",
        "superlink:9092",
        f"{superlink['operator']}:9093",
    )
    assert seen.pop("supernode-1-runtime:9094") == "open"
    assert "open" not in seen.values(), seen
    # And even there, its runtime API hands out tasks only to a caller with their shared secret.
    address = "supernode-1-runtime:9094"
    assert in_container(stack, "superexec-supernode-1", RUNTIME_PROBE, address).split() == ["refused", "401"]
    assert in_container(stack, "superexec-supernode-1", RUNTIME_PROBE, address, "/secret/superexec.secret") == (
        "accepted\n"
    )
