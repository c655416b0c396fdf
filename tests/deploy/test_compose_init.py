"""deploy.compose_init on real files: what each volume receives, with which owner and mode, and the errors."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from deploy.certs import make_supernode_key, make_tls
from deploy.compose_init import SetupError, prepare

ROOT = Path(__file__).resolve().parents[2]
UID, GID = os.getuid(), os.getgid()


@pytest.fixture
def layout(tmp_path):
    certs, data, volumes, outputs = (tmp_path / d for d in ("certs", "data", "volumes", "outputs"))
    make_tls(certs, ["superlink"])
    make_supernode_key(certs, "supernode-0")
    data.mkdir()
    for name in ("part-0.npz", "server-test.npz"):
        np.savez(data / name, x=np.zeros((2, 64), np.float32), y=np.zeros(2, np.int64))
    for volume in (
        "ca",
        "superlink-tls",
        "superlink-state",
        "superlink-secret",
        "supernode-0-key",
        "supernode-0-state",
        "supernode-0-secret",
    ):
        (volumes / volume).mkdir(parents=True)
    (volumes / "superlink-state" / "old.db").write_text("state")
    outputs.mkdir()
    return certs, data, volumes, outputs


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_each_volume_gets_only_its_files_with_private_keys_0600(layout):
    certs, data, volumes, outputs = layout
    done = prepare(certs, data, volumes, outputs, UID, GID)
    assert sorted(p.name for p in (volumes / "ca").iterdir()) == ["ca.crt"]
    assert sorted(p.name for p in (volumes / "superlink-tls").iterdir()) == ["ca.crt", "superlink.crt", "superlink.key"]
    assert sorted(p.name for p in (volumes / "supernode-0-key").iterdir()) == ["supernode", "supernode.pub"]
    assert (volumes / "supernode-0-key" / "supernode").read_bytes() == (certs / "supernode-0").read_bytes()
    assert (
        mode(volumes / "supernode-0-key" / "supernode") == 0o600
        and mode(volumes / "superlink-tls" / "superlink.key") == 0o600
    )
    assert mode(volumes / "ca" / "ca.crt") == 0o644
    # A secret per runtime API, made here, readable by its owner alone.
    secrets = [volumes / v / "superexec.secret" for v in ("superlink-secret", "supernode-0-secret")]
    assert all(mode(s) == 0o600 and len(s.read_text()) == 64 for s in secrets)
    assert secrets[0].read_text() != secrets[1].read_text()
    assert (volumes / "superlink-state" / "old.db").read_text() == "state"
    assert "supernode-0-key: supernode, supernode.pub" in done and f"{outputs}: owned by {UID}" in done
    # The host's files are left as they were.
    assert mode(certs / "supernode-0") == 0o600


def test_a_secret_outlives_the_next_init(layout):
    # A SuperNode and its SuperExec restart on their own; the one left running must still match.
    certs, data, volumes, outputs = layout
    prepare(certs, data, volumes, outputs, UID, GID)
    secret = (volumes / "supernode-0-secret" / "superexec.secret").read_text()
    prepare(certs, data, volumes, outputs, UID, GID)
    assert (volumes / "supernode-0-secret" / "superexec.secret").read_text() == secret


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid needs root")
def test_as_root_everything_goes_to_flowers_user(layout):
    certs, data, volumes, outputs = layout
    prepare(certs, data, volumes, outputs)
    for path in [outputs, *volumes.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (49999, 49999), path


def test_a_missing_key_names_the_file_and_the_command(layout):
    certs, data, volumes, outputs = layout
    (volumes / "supernode-1-key").mkdir()
    with pytest.raises(SetupError, match=r"certs/supernode-1 is missing .*python -m deploy.certs"):
        prepare(certs, data, volumes, outputs, UID, GID)


def test_missing_or_unreadable_data_is_refused_before_anything_starts(layout):
    certs, data, volumes, outputs = layout
    (data / "server-test.npz").unlink()
    with pytest.raises(SetupError, match=r"data/server-test.npz is missing .*python -m common.data export"):
        prepare(certs, data, volumes, outputs, UID, GID)
    np.savez(data / "server-test.npz", x=np.zeros((2, 64)), y=np.zeros(2))
    (data / "part-0.npz").chmod(0o600)
    if os.geteuid() == 0:  # a file of root's, 0600: the container's user could not open it
        # The advice hands the file to that user; it never makes it readable by everyone.
        with pytest.raises(SetupError, match=r"part-0.npz is not readable by uid 49999.*chown 49999:49999") as e:
            prepare(certs, data, volumes, outputs)
        assert "chmod" not in str(e.value) and "a+r" not in str(e.value)
        # Done as advised: owned by 49999, still readable by its owner alone, accepted.
        os.chown(data / "part-0.npz", 49999, 49999)
        prepare(certs, data, volumes, outputs)
        assert mode(data / "part-0.npz") == 0o600


def test_an_unknown_volume_is_an_error(layout):
    certs, data, volumes, outputs = layout
    (volumes / "scratch").mkdir()
    with pytest.raises(SetupError, match="volume scratch is mounted but not one this knows"):
        prepare(certs, data, volumes, outputs, UID, GID)


def test_the_compose_file_mounts_every_volume_into_init():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    init = {v.split(":")[0] for v in compose["services"]["init"]["volumes"]}
    assert set(compose["volumes"]) <= init
    assert compose["services"]["init"]["user"] == "0:0"


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="Compose v1 (docker-compose) is not installed")
def test_compose_v1_accepts_the_file(tmp_path):
    # Compose v1 resolves the file without an engine; v2 is checked by the schema test and by running it.
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
