"""deploy.certs: private keys and secrets are readable by their owner alone from the first byte, whatever the umask."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import certs

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = ("ca.key", "superlink.key", "supernode-0", "supernode-1", "superexec.secret")


@pytest.fixture
def umask_zero():
    """Files are created as the process asks, with nothing taken away: a write-then-chmod would show 0666."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.fixture
def writes(monkeypatch):
    """Every os.write: the file's mode at that moment and what was written."""
    seen: list[tuple[int, bytes]] = []
    real = os.write

    def spy(fd: int, data) -> int:
        seen.append((stat.S_IMODE(os.fstat(fd).st_mode), bytes(data)))
        return real(fd, data)

    monkeypatch.setattr(certs.os, "write", spy)
    return seen


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_and_secrets_are_0600_before_their_first_byte(tmp_path, umask_zero, writes):
    certs.make_tls(tmp_path, ["superlink", "127.0.0.1"])
    for i in range(2):
        certs.make_supernode_key(tmp_path, f"supernode-{i}")
    certs.make_secret(tmp_path / "superexec.secret")
    at_0600 = b"".join(data for m, data in writes if m == 0o600)
    elsewhere = b"".join(data for m, data in writes if m != 0o600)
    for name in PRIVATE:
        content = (tmp_path / name).read_bytes()
        assert mode(tmp_path / name) == 0o600, name
        # Every byte of each private file went through a write on a file that was already 0600, and none other.
        assert content in at_0600 and content not in elsewhere, name
    # What is meant to be public stays readable.
    assert mode(tmp_path / "ca.crt") == mode(tmp_path / "supernode-0.pub") == 0o666


def test_an_older_world_readable_key_is_narrowed_before_it_is_rewritten(tmp_path, umask_zero, writes):
    old = tmp_path / "supernode-0"
    old.write_text("an older key")
    old.chmod(0o644)
    certs.make_supernode_key(tmp_path, "supernode-0")
    assert mode(old) == 0o600 and b"OPENSSH PRIVATE KEY" in old.read_bytes()
    assert [m for m, data in writes if b"PRIVATE KEY" in data] == [0o600]


def test_the_command_line_writes_a_secret_readable_by_its_owner_alone(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "deploy.certs", "--secret", str(tmp_path / "s")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # A umask of 0: the file's mode is the module's doing, not the shell's.
        preexec_fn=lambda: os.umask(0),
    )
    assert done.returncode == 0, done.stderr
    assert mode(tmp_path / "s") == 0o600 and len((tmp_path / "s").read_text()) == 64
