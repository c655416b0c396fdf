"""The compose deployment for tests and benchmarks: images built offline, `docker compose` driven as a user would.

Flower's images cannot be pulled where fedkd is tested. Where `flwr/superlink:1.42.0` and its
siblings are absent, stand-ins with exactly those names are built from `flower_images/Dockerfile`
on a local Debian base (debootstrap + `docker import`); so is the proxy's nginx image, from
`nginx_image/Dockerfile` on a Debian base that debootstrap made with Debian's nginx. Python packages
come from a wheel directory filled by `pip download`; the bases, the stand-ins and the wheels are
cached, so a second run on the same machine builds only what changed.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

from deploy.compose_init import FLOWER_GID, FLOWER_UID
from deploy.local import Federation
from deploy.processes import APP_PARTS, PROJECT, flower_env, free_port

FLOWER_IMAGES = Path(__file__).resolve().parent / "flower_images"
NGINX_IMAGE = Path(__file__).resolve().parent / "nginx_image"
BASE_IMAGE = "fedkd-test/debian:bookworm"
NGINX_BASE_IMAGE = "fedkd-test/debian-nginx:bookworm"
STAND_IN_LABEL = "org.fedkd.test.stand-in"
CACHE = Path(os.environ.get("FEDKD_DOCKER_CACHE", Path.home() / ".cache" / "fedkd-docker"))
CONNECTION = "fedkd-compose"
# What the compose project needs besides the app's own parts: the image's build inputs and the file itself.
PROJECT_FILES = (*APP_PARTS, "deploy", "docker-compose.yml", ".dockerignore")


def flwr_version() -> str:
    """The flwr version pyproject pins, which is also the compose file's image tag."""
    dependencies = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in dependencies if d.startswith("flwr["))


def compose_command() -> list[str] | None:
    """`docker compose` (v2) where the plugin is installed, else `docker-compose` (v1), else None."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def docker_unavailable() -> str | None:
    """Why the compose deployment cannot run here, or None when it can."""
    if not shutil.which("docker"):
        return "no docker client on PATH"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers: {info.stderr.strip()[-300:]}"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def _docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def image_label(image: str, label: str) -> str | None:
    """A label of a local image; None when the image is absent ('' when it lacks the label)."""
    done = subprocess.run(
        ["docker", "image", "inspect", image, "--format", f'{{{{index .Config.Labels "{label}"}}}}'],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().replace("<no value>", "") if done.returncode == 0 else None


def requirements() -> list[str]:
    """Every package the app image installs: torch's CPU build, the build backend, pyproject's dependencies."""
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    return ["torch==2.13.0", *pyproject["build-system"]["requires"], *pyproject["project"]["dependencies"]]


def wheels() -> Path:
    """A directory with a wheel for every requirement (cached; downloaded again when the list changes)."""
    folder, stamp = CACHE / "wheels", CACHE / "wheels.requirements"
    wanted = "\n".join(requirements())
    if not (stamp.exists() and stamp.read_text() == wanted):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), *requirements()], check=True)
        stamp.write_text(wanted)
    return folder


def base_image(name: str = BASE_IMAGE, packages: str = "python3,python3-venv,ca-certificates") -> str:
    """A local Debian bookworm image `name` with `packages` (debootstrap + docker import), made once."""
    if image_label(name, STAND_IN_LABEL) is None:
        with tempfile.TemporaryDirectory(prefix="fedkd-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(rootfs)],
                check=True,
                capture_output=True,
            )
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            _docker("import", "-", name, stdin=tar.stdout)
            tar.wait()
    return name


def proxy_image() -> dict[str, str]:
    """The compose file's nginx image: 'published' where present, else a stand-in built here from Debian's nginx."""
    name = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())["services"]["proxy"]["image"]
    digest = hashlib.sha256((NGINX_IMAGE / "Dockerfile").read_bytes()).hexdigest()[:16]
    label = image_label(name, STAND_IN_LABEL)
    if label == "":
        return {name: "published"}
    if label != digest:
        base = base_image(NGINX_BASE_IMAGE, "nginx")
        _docker(
            "build",
            "-q",
            "--build-arg",
            f"BASE={base}",
            "--label",
            f"{STAND_IN_LABEL}={digest}",
            "-t",
            name,
            str(NGINX_IMAGE),
        )
    return {name: "stand-in"}


def flower_images() -> dict[str, str]:
    """Flower's images under the compose file's names: 'published' where present, else stand-ins built here."""
    version, used = flwr_version(), {}
    digest = hashlib.sha256((FLOWER_IMAGES / "Dockerfile").read_bytes() + version.encode()).hexdigest()[:16]
    for component in ("superlink", "supernode", "superexec"):
        name = f"flwr/{component}:{version}"
        label = image_label(name, STAND_IN_LABEL)
        if label == "":
            used[name] = "published"
            continue
        if label != digest:
            with tempfile.TemporaryDirectory(prefix="fedkd-flower-image-") as tmp:
                context = Path(tmp)
                shutil.copy(FLOWER_IMAGES / "Dockerfile", context / "Dockerfile")
                # flwr and what it needs only, from the app's wheel directory.
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        "-q",
                        "--no-index",
                        "--find-links",
                        str(wheels()),
                        "-d",
                        str(context / "wheels"),
                        f"flwr=={version}",
                    ],
                    check=True,
                )
                _docker(
                    "build",
                    "-q",
                    "--target",
                    component,
                    "--build-arg",
                    f"BASE={base_image()}",
                    "--build-arg",
                    f"FLWR_VERSION={version}",
                    "--label",
                    f"{STAND_IN_LABEL}={digest}",
                    "-t",
                    name,
                    str(context),
                )
        used[name] = "stand-in"
    return used


@dataclass(kw_only=True)
class ComposeStack(Federation):
    """The repository's docker-compose.yml, run from a copy of the project in `work` as a user would run it."""

    work: Path
    project: str
    # The host's loopback ports: the SuperLink's (the operator's `flwr`), and the proxy's (SuperNodes').
    port: int
    fleet_port: int

    @property
    def compose_env(self) -> dict[str, str]:
        return {
            **self.env,
            "FEDKD_CONTROL_PORT": str(self.port),
            "FEDKD_FLEET_PORT": str(self.fleet_port),
            "PIP_FIND_LINKS": "wheels",
        }

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """A compose command on this project; raises with its output when it fails."""
        done = subprocess.run(
            [*compose_command(), "-p", self.project, *args],
            cwd=self.work,
            env=self.compose_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    @property
    def supernode_image(self) -> str:
        return f"flwr/supernode:{flwr_version()}"

    def down(self) -> None:
        """Remove the project's containers, networks and volumes (its certificates, keys and state)."""
        subprocess.run(
            [*compose_command(), "-p", self.project, "down", "-v", "--remove-orphans", "-t", "5"],
            cwd=self.work,
            env=self.compose_env,
            capture_output=True,
        )

    def container(self, service: str) -> str:
        """The id of `service`'s container."""
        return self.compose("ps", "-q", service).stdout.strip()

    def state(self, service: str) -> dict:
        """Docker's State of `service`'s container, with its RestartCount."""
        inspected = json.loads(_docker("inspect", self.container(service)).stdout)[0]
        return {**inspected["State"], "RestartCount": inspected["RestartCount"]}

    def crash(self, service: str) -> None:
        """SIGKILL the main process of `service`'s container from the host, as a crash would end it."""
        os.kill(self.state(service)["Pid"], signal.SIGKILL)

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service).stdout

    def run_dirs(self) -> list[Path]:
        """Run directories under the host's ./outputs, oldest first."""
        return sorted(p for p in (self.work / "outputs").iterdir() if p.is_dir() and not p.is_symlink())

    def build(self) -> dict[str, str]:
        """Build the app image with the wheels cached here (no index), as `--build-arg PIP_FIND_LINKS=wheels`,
        and the proxy's stand-in where nginx's image is absent; returns which nginx image the proxy uses."""
        proxy = proxy_image()
        source, link = wheels(), self.work / "wheels"
        shutil.copytree(source, link, copy_function=os.link if _same_device(source, self.work) else shutil.copy2)
        try:
            self.compose("build", timeout=1800)
        finally:
            shutil.rmtree(link)
        return proxy


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def compose_stack(work: Path) -> ComposeStack:
    """A copy of the project in `work` with node data, certificates and a `flwr` connection, ready for `up`.

    Data and certificates are made by the README's own commands; the data files are handed to the
    containers' user by ownership, as the README says, and readable by no one else.
    """
    work.mkdir(parents=True, exist_ok=True)
    for part in (*PROJECT_FILES, ".gitignore"):
        source = PROJECT / part
        if source.is_dir():
            shutil.copytree(source, work / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, work / part)
    for command in (
        ["common.data", "export", "--dataset", "digits", "--num-partitions", "3", "--out", "data/"],
        [
            "deploy.certs",
            "--out",
            "certs",
            "--host",
            "superlink",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
            "--supernodes",
            "3",
        ],
    ):
        subprocess.run([sys.executable, "-m", *command], cwd=work, check=True, capture_output=True)
    # Only root may give files away; a user of the docker group keeps them as exported (readable by all).
    for data in (work / "data").glob("*.npz") if os.geteuid() == 0 else ():
        os.chown(data, FLOWER_UID, FLOWER_GID)
        data.chmod(0o600)
    home = work / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{work / "certs" / "ca.crt"}"\n'
    )
    return ComposeStack(
        env=flower_env(home),
        connection=CONNECTION,
        work=work,
        port=port,
        fleet_port=free_port(),
        project=f"fedkdtest{os.getpid()}{time.monotonic_ns() % 10_000}",
    )
