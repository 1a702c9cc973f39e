"""Network namespaces for tests: created with unique names, always removed.

``Namespaces`` hands out namespaces (``add``), veth pairs between them (``veth``) and runs
commands inside one (``run``, argv only). ``close`` deletes every namespace it made, which
also deletes every link inside them; links it created in the host namespace are deleted by
name. Processes started through ``spawn`` are ended by their PID first.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from typing import Sequence

import pytest


def require_netns_tools() -> None:
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install.sh installs iproute2 and nftables)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")


class Namespaces:
    def __init__(self) -> None:
        self.tag = secrets.token_hex(2)
        self.names: list[str] = []
        self.host_links: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, role: str) -> str:
        name = f"t{self.tag}{role}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.run(name, ["ip", "link", "set", "lo", "up"])
        return name

    def run(self, ns: str | None, argv: Sequence[str], check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        full = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
        return subprocess.run(full, check=check, capture_output=True, text=True, input=input, timeout=timeout)

    def spawn(self, ns: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def veth(self, ns_a: str | None, name_a: str, ns_b: str | None, name_b: str) -> None:
        """A veth pair with ``name_a`` in ``ns_a`` and ``name_b`` in ``ns_b`` (None: the host)."""
        argv = ["ip", "link", "add", name_a]
        if ns_a is not None:
            argv += ["netns", ns_a]
        argv += ["type", "veth", "peer", "name", name_b]
        if ns_b is not None:
            argv += ["netns", ns_b]
        subprocess.run(argv, check=True, capture_output=True)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if ns is None:
                self.host_links.append(name)
            self.run(ns, ["ip", "link", "set", name, "up"])

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        self.run(ns, ["ip", "addr", "add", cidr, "dev", dev])

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for name in self.host_links:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns():
    require_netns_tools()
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.close()
