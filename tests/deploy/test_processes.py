"""Killing a benchmark or test with SIGTERM stops the Flower processes it started (they run in their own sessions)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Enter a private simulation SuperLink, report its PID, then wait to be killed.
CHILD = """
import sys, time
from pathlib import Path
from deploy.simulation import flower_pids, simulation_superlink
home = Path(sys.argv[1])
with simulation_superlink(home):
    print(*flower_pids(str(home), "flower-superlink"), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigterm_stops_the_private_superlink(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "flwr-home")], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        superlinks = [int(pid) for pid in child.stdout.readline().split()]
        assert len(superlinks) == 1, superlinks
        assert alive(superlinks[0])
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while alive(superlinks[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(superlinks[0]), "the SuperLink outlived the SIGTERM'd process that started it"
    finally:
        # SIGTERM first, so a failed assertion above still lets the child stop its SuperLink.
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
