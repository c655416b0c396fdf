"""Hosts for a one-machine deployment: each SuperNode in its own network namespace with its own
address on a bridge, when running as root where `ip netns` works; loopback otherwise."""

import os
import shutil
import subprocess

LOOPBACK = "127.0.0.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """The SuperLink's address, and a command prefix that puts a SuperNode on a host of its own."""

    def __init__(self, use_namespaces: bool | None = None) -> None:
        tag = os.getpid() % 250 + 1
        self.bridge, self.subnet = f"fkbr{tag}", f"10.231.{tag}"
        self.namespaces: list[str] = []
        wanted = namespaces_work() if use_namespaces is None else use_namespaces
        self.isolated = False
        if wanted:
            try:
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
                self.isolated = True
            except subprocess.CalledProcessError:
                self.close()
        self.superlink_host = f"{self.subnet}.1" if self.isolated else LOOPBACK

    def node_address(self, index: int) -> str:
        """The address SuperNode `index` reaches the SuperLink's proxy from."""
        return f"{self.subnet}.{10 + index}" if self.isolated else LOOPBACK

    def node_prefix(self, index: int) -> list[str]:
        """`ip netns exec <ns>` for SuperNode `index` (its namespace made on first use), or nothing on loopback."""
        if not self.isolated:
            return []
        name = f"{self.bridge}-n{index}"
        if name not in self.namespaces:
            outside, inside = f"fk{self.bridge[4:]}n{index}a", f"fk{self.bridge[4:]}n{index}b"
            _ip("netns", "add", name)
            self.namespaces.append(name)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", name)
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
            _ip("netns", "exec", name, "ip", "addr", "add", f"{self.node_address(index)}/24", "dev", inside)
            _ip("netns", "exec", name, "ip", "link", "set", inside, "up")
            _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        return ["ip", "netns", "exec", name]

    def close(self) -> None:
        """Remove the namespaces (their veth pairs go with them) and the bridge."""
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def namespaces_work() -> bool:
    """True when this process may create network namespaces (root, with `ip` present)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"fkprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made
