"""The node agent: registers this node's roles and inventory, then renews its lease.

Written as ``step(env)``; the daemon calls it every ``heartbeat_interval`` seconds.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

from cloudd import __version__
from cloudd.commands.registry import COMMAND_VERSION
from cloudd.env import Env
from cloudd.errors import CloudError
from cloudd.reconcile import LeaseClock

log = logging.getLogger(__name__)


def read_meminfo_mb(path: str = "/proc/meminfo") -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) // 1024
    except OSError:
        pass
    return values


def host_inventory(data_dir: str) -> dict[str, Any]:
    """What this host offers: CPUs, RAM, disk of the data dir, and a few facts."""
    mem = read_meminfo_mb()
    disk = shutil.disk_usage(data_dir)
    return {
        "cpus": os.cpu_count() or 1,
        "ram_mb": max(1, mem.get("MemTotal", 1)),
        "disk_gb": round(disk.total / 2**30, 1),
        "facts": {
            "hostname": platform.node()[:64],
            "kernel": platform.release()[:64],
            "arch": platform.machine()[:32],
            "kvm": os.path.exists("/dev/kvm"),
            "python": platform.python_version(),
            # the newest command table this cloudd knows (cloudd.commands.versions)
            "command_version": COMMAND_VERSION,
        },
    }


def host_usage(data_dir: str) -> dict[str, Any]:
    mem = read_meminfo_mb()
    disk = shutil.disk_usage(data_dir)
    load1 = os.getloadavg()[0]
    return {
        "ram_used_mb": max(0, mem.get("MemTotal", 0) - mem.get("MemAvailable", 0)),
        "disk_used_gb": round(disk.used / 2**30, 2),
        "load1": round(load1, 2),
    }


class Agent:
    def __init__(
        self,
        data_dir: str,
        roles: list[str],
        storage: dict[str, str] | None = None,
        network: dict[str, str] | None = None,
        inventory: Callable[[], dict[str, Any]] | None = None,
        usage: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``inventory`` and ``usage`` read this host's offer and use (default: /proc and
        the data dir's disk; the simulator passes each node's from its cluster.json)."""
        self.data_dir = data_dir
        self.roles = roles
        self.inventory = inventory or (lambda: host_inventory(data_dir))
        self.usage = usage or (lambda: host_usage(data_dir))
        self.storage = storage  # {"export", "portal"} of a storage node
        self.network = network  # {"underlay"} of a hypervisor with VM networks
        self.registered = False
        self.lease: LeaseClock | None = None  # noted at every committed renewal (self-fencing)
        self.on_renewed: Callable[[], None] | None = None  # e.g. feeding the fence guard
        # a hypervisor's CPU models and migration addresses as known now (the CPU models
        # take seconds to learn on a fresh host: registered again once they change)
        self.compute: Callable[[], dict[str, Any]] | None = None
        self.registered_compute: dict[str, Any] | None = None

    async def step(self, env: Env) -> None:
        try:
            compute = self.compute() if self.compute is not None else None
            if not self.registered or compute != self.registered_compute:
                args: dict[str, Any] = {"name": env.node_name, "roles": self.roles, "inventory": self.inventory(), "version": __version__}
                if self.storage is not None:
                    args["storage"] = self.storage
                if self.network is not None:
                    args["network"] = self.network
                if compute is not None:
                    args["compute"] = compute
                outcome = await env.propose("node.register", args)
                if "error" in outcome:
                    log.error("registration refused: %s", outcome["error"]["message"])
                    return
                self.registered, self.registered_compute = True, compute
                log.info("registered with roles %s", ",".join(self.roles))
            sent = env.monotonic()
            outcome = await env.propose("node.heartbeat", {"name": env.node_name, "usage": self.usage()})
            if "error" in outcome:
                log.warning("lease renewal refused: %s", outcome["error"]["message"])
                return
            if self.lease is not None:
                self.lease.renewed(sent)  # the lease counts from when the renewal was sent
            if self.on_renewed is not None:
                self.on_renewed()
        except CloudError as exc:
            log.warning("lease renewal failed: %s", exc.message)
