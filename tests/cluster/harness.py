"""Real ``cloudd serve`` processes forming a Raft cluster on 127.0.0.x.

Each node gets its own loopback address (127.0.0.11, .12, …) and free ports; the
harness ends only the processes it started, by PID, and removes nothing outside its
temporary directory.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson

from cloudd.ops.tgt import TgtDaemon

BIN = Path(sys.executable).parent
CLOUDD = str(BIN / "cloudd")

# libvirt's simulated hypervisor, one per cloudd process (real guests: tests/e2e)
COMPUTE_URI = "test:///default"
FAST_TIMINGS = {
    "heartbeat_interval": 0.5, "suspect_after": 2.0, "down_after": 4.0, "manager_interval": 0.25,
    # self-fence after 6 s without a renewal (loose enough for a loaded CI machine), failover after 8 s
    "fence_after": 6.0, "failover_margin": 2.0,
}


def free_port(host: str) -> int:
    """A port to listen on later, below the kernel's ephemeral range (32768-60999 by
    default): a port the kernel hands out itself can be taken by an outgoing connection
    before the node binds it (seen: a node failing with 'address already in use')."""
    for _ in range(200):
        port = random.randrange(10_000, 32_768)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {host}")


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_error!r})" if last_error else ""))


@dataclass
class Node:
    name: str
    host: str
    data_dir: Path
    api_addr: str
    raft_addr: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"http://{self.api_addr}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class LocalCluster:
    def __init__(
        self,
        root: Path,
        timings: dict[str, float] | None = None,
        first_host: int = 11,
        compute: list[str] | None = None,
        iscsi: bool = False,
        network: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """``iscsi``: every node runs a private tgtd (real iSCSI exports); otherwise the
        nodes export nothing (volumes are still created in their pools)."""
        self.root = root
        self.iscsi = iscsi
        self.network = network or {}  # node name -> its network settings (default: driver none)
        self.compute = compute or ["--compute-uri", COMPUTE_URI]
        self.timings = timings or FAST_TIMINGS
        self.nodes: dict[str, Node] = {}
        self.next_host = first_host
        self.password = ""
        self.token = ""

    # --- processes ---

    def new_node(self, name: str) -> Node:
        host = f"127.0.0.{self.next_host}"
        self.next_host += 1
        node = Node(name, host, self.root / name, f"{host}:{free_port(host)}", f"{host}:{free_port(host)}")
        self.nodes[name] = node
        return node

    def _set_timings(self, node: Node) -> None:
        path = node.data_dir / "node.json"
        data = orjson.loads(path.read_bytes())
        data["timings"] = dict(self.timings)
        if self.iscsi:
            data["storage"] = {"export": "tgt", "private_tgtd": True, "portal": f"{node.host}:{free_port(node.host)}"}
        else:
            data["storage"] = {"export": "none"}
        # the nodes share this host: networks are modelled, not set up (the e2e tests set
        # them up for real inside namespaces)
        data["network"] = self.network.get(node.name) or {"driver": "none", "prefix": "c" + "".join(ch for ch in node.name if ch.isdigit())[:3]}
        path.write_bytes(orjson.dumps(data))

    def start(self, name: str) -> Node:
        node = self.nodes[name]
        assert node.proc is None or node.proc.poll() is not None, f"{name} already runs"
        log = open(node.log_path, "ab")
        try:
            node.proc = subprocess.Popen(
                [CLOUDD, "serve", "--data-dir", str(node.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()
        return node

    def kill9(self, name: str) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait(10)

    def close(self) -> None:
        for name in self.nodes:
            self.kill9(name)
        for node in self.nodes.values():  # a node's private tgtd outlives a SIGKILL: end it by its PID
            TgtDaemon(0, "", node.data_dir / "tgtd.log", pid_file=node.data_dir / "tgtd.pid").end_leftover()

    def stop(self, name: str) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(15)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(5)

    def run_cloudd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLOUDD, *args], capture_output=True, text=True, timeout=60)

    # --- lifecycle ---

    def init(self, size: int = 3, max_voters: int = 3) -> "LocalCluster":
        first = self.new_node("node1")
        password_file = self.root / "admin-password"
        out = self.run_cloudd(
            "init", "--data-dir", str(first.data_dir), "--name", "node1", "--api-addr", first.api_addr,
            "--raft-addr", first.raft_addr, "--max-voters", str(max_voters), "--password-file", str(password_file),
            *self.compute,
        )
        assert out.returncode == 0, out.stderr
        self.password = password_file.read_text().strip()
        return self._grow_from(first, size)

    def _grow_from(self, first: Node, size: int) -> "LocalCluster":
        """Start the first node (made by init or restore), log in, join the others."""
        self._set_timings(first)
        self.start(first.name)
        self.wait_healthy(first.name)
        self.login(first.name)
        for i in range(2, size + 1):
            self.join(f"node{i}", via=first.name)
        self.wait_leader()
        return self

    def restore(self, backup: Path, password: str, size: int = 3) -> "LocalCluster":
        """A cluster rebuilt from ``backup`` by node1 (``cloudd restore``); the others join
        again under their names."""
        first = self.new_node("node1")
        out = self.run_cloudd(
            "restore", str(backup), "--data-dir", str(first.data_dir), "--name", "node1",
            "--api-addr", first.api_addr, "--raft-addr", first.raft_addr, *self.compute,
        )
        assert out.returncode == 0, out.stderr
        self.password = password
        return self._grow_from(first, size)

    def join(self, name: str, via: str = "node1", want: str = "auto") -> Node:
        node = self.new_node(name)
        token = self.api(via).post("/api/v1/cluster/join-tokens", json={}).json()["token"]
        out = self.run_cloudd(
            "join", self.nodes[via].api_addr, "--token", token, "--data-dir", str(node.data_dir), "--name", name,
            "--api-addr", node.api_addr, "--raft-addr", node.raft_addr, "--as", want, *self.compute,
        )
        assert out.returncode == 0, out.stderr
        self._set_timings(node)
        self.start(name)
        self.wait_healthy(name)
        return node

    def wait_healthy(self, name: str, timeout: float = 30.0) -> None:
        url = self.nodes[name].url + "/healthz"
        wait_for(lambda: httpx.get(url, timeout=1).status_code == 200, timeout, what=f"{name} healthy")

    def login(self, via: str) -> None:
        reply = httpx.post(self.nodes[via].url + "/api/v1/auth/login", json={"username": "admin", "password": self.password}, timeout=10)
        assert reply.status_code == 200, reply.text
        self.token = reply.json()["token"]

    # --- API helpers ---

    def api(self, name: str, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.nodes[name].url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=20)

    def status(self, name: str) -> dict[str, Any]:
        with self.api(name) as client:
            reply = client.get("/api/v1/cluster")
            reply.raise_for_status()
            return reply.json()

    def running(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.proc is not None and node.proc.poll() is None]

    def leader(self, among: list[str] | None = None) -> str | None:
        """The leader if every running node agrees on one (else None)."""
        names = among or self.running()
        leaders = set()
        for name in names:
            data = self.status(name)
            leaders.add(data["leader"]["name"] if data["leader"] else None)
        if len(leaders) == 1:
            return leaders.pop()
        return None

    def wait_leader(self, among: list[str] | None = None, exclude: str | None = None, timeout: float = 20.0) -> str:
        def found() -> str | None:
            leader = self.leader(among)
            return leader if leader and leader != exclude else None

        return str(wait_for(found, timeout, what="an agreed leader"))

    def digest(self, name: str) -> dict[str, Any]:
        with self.api(name) as client:
            reply = client.get("/api/v1/cluster/digest")
            reply.raise_for_status()
            return reply.json()

    def wait_same_digest(self, names: list[str], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until all replicas report the same applied index, then return their digests."""

        def same() -> list[dict[str, Any]] | None:
            digests = [self.digest(n) for n in names]
            return digests if len({d["applied_index"] for d in digests}) == 1 else None

        return list(wait_for(same, timeout, interval=0.05, what="replicas at the same index"))

    def wait_connected(self, names: list[str] | None = None, timeout: float = 20.0) -> None:
        """Wait until every running voter has a Raft link to every other running voter."""
        names = names or self.running()

        def linked() -> bool:
            for name in names:
                raft = self.status(name)["raft"]
                if raft["role"] == "replica":
                    continue
                others = {self.nodes[n].raft_addr for n in names if n != name and self.status(n)["raft"]["role"] != "replica"}
                if not others <= set(raft["connected"]):
                    return False
            return True

        wait_for(linked, timeout, what="all Raft links up")


def add_ui_catalog(admin: httpx.Client) -> None:
    """What the web UI tests pick from: the flavor ``tiny``, the OS image ``busybox`` and
    the ISO ``rescue-cd`` (paths only: libvirt's test driver never reads them)."""
    admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
    admin.post("/api/v1/images", json={"name": "busybox", "path": "/var/lib/cloudd/images/busybox.qcow2", "format": "qcow2", "size_gb": 1}).raise_for_status()
    admin.post("/api/v1/images", json={"name": "rescue-cd", "path": "/srv/isos/rescue.iso", "format": "iso", "size_gb": 1}).raise_for_status()
