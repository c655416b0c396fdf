"""deploy.proxy: the shipped nginx configurations are its output, nginx accepts them, and a proxy started from
one forwards the Fleet API's calls and nothing else (a stand-in HTTPS server plays the SuperLink)."""

import dataclasses
import http.client
import http.server
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from deploy.certs import make_tls
from deploy.processes import free_port, start, stop, wait_listening
from deploy.proxy import FILES, REFUSAL, SHIPPED, Proxy, server_config, standalone_config

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


def test_the_shipped_configurations_are_the_renderers_output():
    for name, proxy in SHIPPED.items():
        assert (FILES / name).read_text() == server_config(proxy), f"run `python -m deploy.proxy --write` ({name})"
    # The command line's defaults are the separate-hosts file's.
    done = subprocess.run([sys.executable, "-m", "deploy.proxy"], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout == (FILES / "fedkd.conf").read_text()


def test_the_compose_file_mounts_the_compose_configuration_where_nginx_reads_it():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    proxy, superlink = compose["services"]["proxy"], compose["services"]["superlink"]
    assert "./deploy/nginx/compose.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    assert "superlink-tls:/etc/fedkd/tls:ro" in proxy["volumes"]
    shipped = SHIPPED["compose.conf"]
    # The proxy's upstream is the SuperLink's own port, under the alias it has on the network they share.
    host, port = shipped.superlink.split(":")
    assert superlink["command"][superlink["command"].index("--port") + 1] == port
    assert host in superlink["networks"]["operator"]["aliases"]
    # SuperNodes dial `superlink`: on their network that is the proxy, the name in the SuperLink's certificate.
    assert proxy["networks"]["federation"]["aliases"] == ["superlink"] == [shipped.superlink_name]
    assert "federation" not in superlink["networks"] and "federation" not in compose["services"][
        "superexec-serverapp"
    ].get("networks", [])


@needs_nginx
@pytest.mark.parametrize("name", SHIPPED)
def test_nginx_accepts_the_shipped_configurations(name, tmp_path):
    make_tls(tmp_path / "certs", ["localhost"])
    server = tmp_path / "fedkd.conf"
    server.write_text(server_config(dataclasses.replace(SHIPPED[name], certs=str(tmp_path / "certs"))))
    (tmp_path / "nginx.conf").write_text(standalone_config(server, tmp_path))
    done = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


class _Recorder(http.server.BaseHTTPRequestHandler):
    """The SuperLink's stand-in: answers every POST with 200 and keeps the paths it was asked for."""

    seen: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    """nginx from the renderer in front of an HTTPS stand-in for the SuperLink; (proxy port, CA, paths seen)."""
    work = tmp_path_factory.mktemp("proxy")
    make_tls(work / "certs", ["localhost", "127.0.0.1"])
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(work / "certs" / "superlink.crt", work / "certs" / "superlink.key")
    backend.socket = context.wrap_socket(backend.socket, server_side=True)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    proxy = Proxy(f"127.0.0.1:{port}", f"127.0.0.1:{backend.server_address[1]}", str(work / "certs"))
    (work / "fedkd.conf").write_text(server_config(proxy))
    (work / "nginx.conf").write_text(standalone_config(work / "fedkd.conf", work))
    nginx = start(
        [NGINX, "-p", str(work), "-e", str(work / "error.log"), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
        {},
        work / "nginx.log",
    )
    try:
        wait_listening(nginx, "127.0.0.1", port, work / "error.log")
        yield port, work / "certs" / "ca.crt", _Recorder.seen
    finally:
        stop(nginx)
        backend.shutdown()


def post(port: int, ca: Path, path: str) -> tuple[int, str]:
    """POST `path` exactly as written (no client-side normalisation), verifying the proxy's certificate."""
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)), timeout=10
    )
    try:
        connection.request("POST", path, body=b"x")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@needs_nginx
def test_only_the_fleet_api_reaches_the_superlink(proxied):
    port, ca, seen = proxied
    for path in ("/v1/fleet/pull-messages", "/v1/fleet/push-object", "/v1/fleet/activate-node"):
        assert post(port, ca, path) == (200, ""), path
    refused = [
        "/v1/control/start-run",
        "/v1/control/register-node",
        "/v1/runtime/acquire-task",
        "/health",
        "/docs",
        # Paths that nginx normalises to another API, and ones only a lax router would read as the Fleet API's.
        "/v1/fleet/../control/start-run",
        "/v1/fleet/%2e%2e/control/start-run",
        "/v1/fleet/..%2fcontrol/start-run",
        "/v1/fleet//../../v1/control/start-run",
        "/v1/fleet/pull-messages/../../control/start-run",
        "/v1/fleet/",
        "/v1/fleetx/pull-messages",
    ]
    for path in refused:
        assert post(port, ca, path) == (403, REFUSAL + "\n"), path
    assert seen == ["/v1/fleet/pull-messages", "/v1/fleet/push-object", "/v1/fleet/activate-node"]
