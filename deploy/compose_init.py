"""Prepare docker-compose.yml's volumes for Flower's images, which run as user `app` (uid 49999).

    python -m deploy.compose_init --certs /src/certs --data /src/data --volumes /volumes --outputs /outputs

Runs once as root (the compose `init` service) before anything else starts. `deploy.certs` writes
private keys readable by their owner alone, and Docker creates named volumes and missing bind
mounts owned by root, so the non-root services could read no key and write no state. This copies
each service only what it needs, owned by uid 49999 with the key at mode 0600, and hands the
state volumes and the output folder to that user, leaving the files on the host as they are:

- `<volumes>/ca`: `ca.crt`, for every service that verifies the SuperLink;
- `<volumes>/superlink-tls`: `ca.crt`, `superlink.crt`, `superlink.key`;
- `<volumes>/<node>-key`: `supernode` and `supernode.pub`, the key pair `deploy.certs` wrote as `<node>`;
- `<volumes>/*-secret`: `superexec.secret`, the secret a runtime API (the SuperLink's, a SuperNode's)
  and its SuperExec share, made here once (random, 0600) and kept across restarts;
- `<volumes>/*-state` and `<outputs>`: owned by uid 49999.

Anything missing is an error that names the file and the command that makes it, before a
service starts. Node data files stay where they are, bind-mounted read-only: each must be readable
by uid 49999, which `chown 49999:49999` gives without making the file readable by anyone else.
"""

import argparse
import os
import shutil
import stat
from pathlib import Path

from deploy.certs import make_secret

FLOWER_UID = FLOWER_GID = 49999
CERTS_HINT = "python -m deploy.certs --out certs --host superlink --host localhost --host 127.0.0.1 --supernodes 3"
DATA_HINT = "python -m common.data export --dataset digits --num-partitions 3 --out data/"


class SetupError(Exception):
    """Something the deployment needs is missing or unreadable; the message says what and how to fix it."""


def _require(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise SetupError(f"{path} is missing (or not a file); create it with `{hint}` before `docker compose up`")
    return path


def _install(source: Path, dest: Path, mode: int, uid: int, gid: int) -> None:
    """Copy `source` to `dest` with `mode`, owned by uid:gid."""
    shutil.copyfile(source, dest)
    os.chown(dest, uid, gid)
    os.chmod(dest, mode)


def _own(path: Path, uid: int, gid: int) -> None:
    """Hand `path` and everything below it to uid:gid."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid)


def _readable_by(path: Path, uid: int, gid: int) -> bool:
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IRUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)


def prepare(
    certs: Path, data: Path | None, volumes: Path, outputs: Path | None, uid: int = FLOWER_UID, gid: int = FLOWER_GID
) -> list[str]:
    """Fill and hand over every volume mounted under `volumes`; returns what was done, a line each."""
    done = []
    for volume in sorted(p for p in volumes.iterdir() if p.is_dir()):
        name = volume.name
        if name == "ca":
            files = {"ca.crt": 0o644}
            sources = {"ca.crt": "ca.crt"}
        elif name == "superlink-tls":
            files = {"ca.crt": 0o644, "superlink.crt": 0o644, "superlink.key": 0o600}
            sources = {f: f for f in files}
        elif name.endswith("-key"):
            node = name.removesuffix("-key")
            files = {"supernode": 0o600, "supernode.pub": 0o644}
            sources = {"supernode": node, "supernode.pub": f"{node}.pub"}
        elif name.endswith("-state"):
            _own(volume, uid, gid)
            done.append(f"{name}: owned by {uid}")
            continue
        elif name.endswith("-secret"):
            # Made once: a SuperNode and its SuperExec restart separately and must go on agreeing.
            secret = volume / "superexec.secret"
            if not secret.exists():
                make_secret(secret)
            _own(volume, uid, gid)
            done.append(f"{name}: superexec.secret")
            continue
        else:
            raise SetupError(
                f"volume {name} is mounted but not one this knows "
                "(ca, superlink-tls, <node>-key, <name>-secret, <name>-state)"
            )
        for target, mode in files.items():
            _install(_require(certs / sources[target], CERTS_HINT), volume / target, mode, uid, gid)
        os.chown(volume, uid, gid)
        done.append(f"{name}: {', '.join(files)}")
    if data is not None:
        files = [_require(data / "server-test.npz", DATA_HINT), *sorted(data.glob("part-*.npz"))]
        for part in files if len(files) > 1 else [*files, _require(data / "part-0.npz", DATA_HINT)]:
            if not _readable_by(part, uid, gid):
                raise SetupError(
                    f"{part} is not readable by uid {uid}, the user Flower's images run as: hand it to that user "
                    f"on the host, `chown {uid}:{gid} data/{part.name}` (no one else need read it)"
                )
    if outputs is not None:
        os.chown(outputs, uid, gid)
        done.append(f"{outputs}: owned by {uid}")
    return done


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m deploy.compose_init`."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.compose_init", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--certs", type=Path, required=True, help="what `python -m deploy.certs` wrote")
    parser.add_argument("--data", type=Path, help="the node data files, checked readable by the container user")
    parser.add_argument("--volumes", type=Path, required=True, help="folder under which the volumes are mounted")
    parser.add_argument("--outputs", type=Path, help="the run output folder, handed to the container user")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: prepare the volumes, or exit with a message that says what is missing."""
    args = parser().parse_args(argv)
    try:
        for line in prepare(args.certs, args.data, args.volumes, args.outputs):
            print(line, flush=True)
    except SetupError as error:
        raise SystemExit(f"fedkd init: {error}") from None


if __name__ == "__main__":
    main()
