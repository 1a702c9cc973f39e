"""The cluster ``bench/migrate.py`` migrates through: three real ``cloudd serve`` processes
(tests/cluster/harness.py) on 127.0.0.230-232. node1 leads and holds no VM; node2 and
node3 each drive a private libvirtd (tests/e2e/libvirtd.py) that the other reaches over
its unix socket (/tmp is shared), with one VM directory both see (the cluster's
``shared_vm_storage`` on, ``migration_unsafe`` on since libvirt cannot tell a plain
local directory is shared). The same setup as the ``live`` fixture of
tests/e2e/test_cluster_migration.py, on ports no test uses (VNC 7600-7699, migration
49600-49699), and with cloudd's default timings (``cloudd init``'s): the agents' and
the manager's periods as a real cluster runs them.

``BenchCluster.start()`` brings it all up, ``close()`` ends what it started (the cloudd
processes and both libvirtds with their guests, by PID) and removes its directory.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from cloudd.config import Timings
from tests.cluster.harness import wait_for
from tests.e2e.libvirtd import PrivateLibvirtd, SharedDirCluster

FIRST_HOST = 230  # node1-3: 127.0.0.230-232
HYPERVISORS = {"node2": ((7600, 7649), (49600, 49649)), "node3": ((7650, 7699), (49650, 49699))}  # VNC, migration ports
MIGRATE_URI = "tcp://127.0.0.1"


class BenchCluster:
    def __init__(self) -> None:
        # short: qemu's monitor sockets and the libvirtds' paths must fit AF_UNIX
        self.root = Path(tempfile.mkdtemp(prefix="cdbm", dir="/tmp"))
        self.vm_dir = self.root / "shared-vms"
        self.vm_dir.mkdir()
        self.daemons: dict[str, PrivateLibvirtd] = {}
        self.nodes = SharedDirCluster(self.root, self.vm_dir, self.daemons, first_host=FIRST_HOST, timings=dataclasses.asdict(Timings()))

    def start(self, guest: Path) -> BenchCluster:
        """Both libvirtds, the three nodes, the cluster settings, a flavor and the guest image."""
        for name, (vnc, ports) in HYPERVISORS.items():
            (self.root / f"{name}-libvirtd").mkdir()
            self.daemons[name] = PrivateLibvirtd(vnc, log_dir=self.root / f"{name}-libvirtd", migration_ports=ports).start()
        self.nodes.init(3)
        with self.api() as admin:
            admin.patch("/api/v1/cluster/settings", json={"shared_vm_storage": True}).raise_for_status()
            admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "bench-guest", "path": str(guest), "format": "kernel", "size_gb": 1}).raise_for_status()
            wait_for(
                lambda: all((n.get("compute") or {}).get("live_migration") for n in admin.get("/api/v1/nodes").json()["items"] if n["name"] in self.daemons),
                60, what="both hypervisors live-capable",
            )
        return self

    def api(self, name: str = "node1") -> httpx.Client:
        return self.nodes.api(name)

    def create_vm(self, name: str) -> tuple[str, str]:
        """A VM of the tiny flavor and the guest image, pinned to the two hypervisors, once
        it runs: (its id, the node it runs on)."""
        with self.api() as admin:
            created = admin.post("/api/v1/vms", json={"name": name, "flavor": "tiny", "image": "bench-guest", "nodes": sorted(self.daemons)})
            if created.status_code != 202:
                raise RuntimeError(f"creating the VM: {created.status_code} {created.text}")
            vm_id = str(created.json()["id"])
            vm = wait_for(lambda: (v := admin.get(f"/api/v1/vms/{vm_id}").json())["state"] == "running" and v, 120, what="the VM running")
        return vm_id, str(vm["node"])

    def vm(self, vm_id: str) -> dict[str, Any]:
        with self.api() as admin:
            return dict(admin.get(f"/api/v1/vms/{vm_id}").json())

    def logs(self, name: str) -> str:
        return self.nodes.nodes[name].log_text()

    def close(self) -> None:
        try:
            self.nodes.close()  # the cloudd processes, by PID
        finally:
            try:
                for daemon in self.daemons.values():
                    daemon.stop()  # destroys its guests, ends its qemus by their pid files
            finally:
                shutil.rmtree(self.root, ignore_errors=True)
