"""`docker compose up` for real: the repository's docker-compose.yml on a Docker engine, with Flower's
images (stand-ins where they cannot be pulled), TLS and SuperNode authentication, 3 SuperNodes.

Skips where no Docker engine runs, and fails there instead when CI is set (CI starts one).
"""

import json
import os
import subprocess
import time

import pytest

from deploy.certs import make_supernode_key
from deploy.processes import sigterm_unwinds
from tests.deploy.compose_stack import compose_stack, docker_unavailable, flower_images

pytestmark = pytest.mark.e2e

# A killed node costs each round it is sampled in this long; ClientApp processes start in 5-15 s on 2 cores.
ROUND_TIMEOUT = 30
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
    print(f"Flower images: {images}")
    stack = compose_stack(tmp_path_factory.mktemp("compose"))
    with sigterm_unwinds():
        try:
            stack.build()
            stack.compose("up", "-d")
            yield stack
        finally:
            stack.down()


def submit(stack, config: dict) -> tuple[dict, list[dict], str]:
    """Run fedkd to the end on the compose deployment; its summary, history and output."""
    before = set(stack.run_dirs())
    run = stack.run({**QUICK, **config}, app=stack.work)
    output, _ = run.communicate(timeout=900)
    assert run.returncode == 0, output[-4000:]
    (run_dir,) = set(stack.run_dirs()) - before
    return (
        json.loads((run_dir / "summary.json").read_text()),
        json.loads((run_dir / "history.json").read_text()),
        output,
    )


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


def test_both_phases_complete_on_three_nodes_with_outputs_on_the_host(stack):
    config = {"two-stage.num-teacher-rounds": 2, "fraction-evaluate": 1.0, "local-epochs": 3}
    summary, history, output = submit(stack, config)
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
    summary, history, _ = submit(stack, {})
    assert summary["status"] == "complete" and [r["replies"] for r in history] == [3, 3]


def test_supernode_killed_mid_run_is_recorded_and_the_run_completes(stack):
    before = set(stack.run_dirs())
    # One phase of two rounds: the round after the kill waits out the deadline on the killed node once.
    run = stack.run(
        # two-stage's teacher rounds are its table's: a fedavg run leaves them at their default.
        {
            **{k: v for k, v in QUICK.items() if not k.startswith("two-stage.")},
            "strategy": "fedavg",
            "num-student-rounds": 2,
            "round-timeout": ROUND_TIMEOUT,
            "min-replies": 0.5,
        },
        app=stack.work,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            new = set(stack.run_dirs()) - before
            if new and (history := next(iter(new)) / "history.json").exists() and json.loads(history.read_text()):
                break
            time.sleep(0.5)
        # An operator's kill: the container stays down (a crash would be restarted).
        stack.compose("kill", "supernode-2")
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output[-4000:]
    (run_dir,) = set(stack.run_dirs()) - before
    history = json.loads((run_dir / "history.json").read_text())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    assert [r["round"] for r in history] == [1, 2] and history[0]["replies"] == 3
    assert [f["node"] for f in history[1]["failed"]] == ["supernode-2"] and history[1]["replies"] == 2
    stack.compose("start", "supernode-2")
    stack.wait_online(3)


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
    assert stack.online() == 3
    assert all(stack.state(n)["Running"] for n in NODES)
