"""A simulated cluster described as data: ``cluster.json`` and ``cmdlist.json``.

``cluster.json``::

    {
      "timings": {"down_after": 15, ...},          # overrides of cloudd.config.Timings
      "sim": {"tick": 0.5, "reconcile_interval": 2, "election_delay": 0.5,
              "leader_fallback": 1.0, "until": 120},
      "settings": {"cpu_ratio": 4},                # cluster.settings_set (alloc policy...)
      "flavors": {"small": {"vcpus": 1, "ram_mb": 1024, "disk_gb": 5}},
      "nodes": [{"name": "n1", "voter": true, "roles": ["hypervisor"], "cpus": 4,
                 "ram_mb": 5120, "disk_gb": 100, "guard": true,
                 "clock_offset": 0, "clock_rate": 1.0}],
      "vms": [{"id": "a", "node": "n2", "ha": true, "priority": 5, "flavor": "small"}]
    }

A VM with ``node`` starts the run placed there; one without is left pending for the
leader. ``cmdlist.json`` is a list of ``[time, action, args...]`` (see ``ACTIONS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cloudd.config import Timings

DEFAULT_FLAVORS = {
    "small": {"vcpus": 1, "ram_mb": 1024, "disk_gb": 5},
    "medium": {"vcpus": 2, "ram_mb": 2048, "disk_gb": 10},
    "large": {"vcpus": 2, "ram_mb": 3072, "disk_gb": 10},
}

# action -> the argument names it takes (cmdlist entries are [time, action, *args]; "?": optional)
ACTIONS: dict[str, tuple[str, ...]] = {
    "power_off": ("node",),  # the host dies: cloudd, its guard and every domain on it
    "power_on": ("node",),  # boots: domains stay defined but off; the guard and cloudd start
    "kill_cloudd": ("node",),  # cloudd dies (kill -9); qemu and the fence guard live on
    "start_cloudd": ("node",),  # systemd starts cloudd again
    "isolate": ("node",),  # the node's network is cut from every other node
    "partition": ("groups",),  # [[n1, n2], [n3]]: who reaches whom (unlisted: first group)
    "heal": (),  # everyone reaches everyone again
    "create_vm": ("vm",),  # {"id", "flavor", "ha", "priority", "power", "nodes", "group"}
    "delete_vm": ("id",),
    "stop_vm": ("id",),
    "start_vm": ("id",),
    "kill_vm": ("id", "node"),  # the domain dies behind cloudd's back (qemu crash)
    "maintenance": ("node", "on", "drain?"),  # "on" / "off"; drain: live (default), all, none
    "migrate": ("id", "node", "mode", "force?"),  # an admin migrates a VM: mode live / offline
    "cancel_migration": ("id",),
    "rebalance": (),  # an admin applies the planner's moves (they run as migrations)
    "fill": ("node", "ram_mb"),  # a non-HA VM pinned to the node takes that much RAM
    "unfill": ("node",),  # deletes the node's fill VMs
    "end": (),  # the run stops here
}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    voter: bool = True
    roles: tuple[str, ...] = ("hypervisor",)
    cpus: int = 4
    ram_mb: int = 5120  # 4096 MiB for VMs after the default 1024 MiB host reserve
    disk_gb: float = 100.0
    guard: bool = True  # runs a fence guard fed by the agent
    clock_offset: float = 0.0  # this host's monotonic clock reads offset + rate * uptime
    clock_rate: float = 1.0


@dataclass(frozen=True)
class VmSpec:
    id: str
    node: str | None = None
    flavor: str = "small"
    ha: bool = False
    priority: int = 0
    power: str = "running"
    nodes: tuple[str, ...] = ()  # pinned
    group: str | None = None  # anti-affinity group

    def create_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"id": self.id, "name": self.id.lower().replace("_", "-"), "owner": "bob", "flavor": self.flavor, "power": self.power}
        if self.ha:
            args["ha"] = True
        if self.priority:
            args["ha_priority"] = self.priority
        if self.nodes:
            args["nodes"] = list(self.nodes)
        if self.group:
            args["group"] = self.group
        return args


@dataclass(frozen=True)
class SimSettings:
    tick: float = 0.5
    reconcile_interval: float = 2.0
    election_delay: float = 0.5  # a majority without a leader elects one after this
    leader_fallback: float = 1.0  # a leader cut off believes it leads this long (pysyncobj)
    until: float = 120.0


@dataclass(frozen=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    vms: tuple[VmSpec, ...] = ()
    timings: Timings = field(default_factory=Timings)
    sim: SimSettings = field(default_factory=SimSettings)
    settings: dict[str, Any] = field(default_factory=dict)
    flavors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_FLAVORS))

    @property
    def voters(self) -> list[str]:
        return sorted(n.name for n in self.nodes if n.voter)

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(f"no node {name} in the cluster")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSpec:
        nodes = tuple(_build(NodeSpec, {**n, "roles": tuple(n.get("roles", ("hypervisor",)))}) for n in data["nodes"])
        vms = tuple(_build(VmSpec, {**v, "nodes": tuple(v.get("nodes", ()))}) for v in data.get("vms", ()))
        spec = cls(
            nodes=nodes,
            vms=vms,
            timings=_build(Timings, data.get("timings", {})),
            sim=_build(SimSettings, data.get("sim", {})),
            settings=dict(data.get("settings", {})),
            flavors={**DEFAULT_FLAVORS, **data.get("flavors", {})},
        )
        if len(spec.voters) not in (1, 3, 5):
            raise ValueError(f"a cluster has 1, 3 or 5 voters, not {len(spec.voters)}")
        if len({n.name for n in nodes}) != len(nodes):
            raise ValueError("node names repeat")
        return spec


def _build(kind: Any, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {', '.join(unknown)}")
    return kind(**data)


Action = tuple[float, str, tuple[Any, ...]]


def parse_cmdlist(entries: list[list[Any]], tick: float) -> list[Action]:
    """``[[10, "power_off", "n2"], ...]`` -> sorted (time, action, args); checks names and
    arities, and that every time falls on a tick."""
    out: list[Action] = []
    for entry in entries:
        at, name, args = float(entry[0]), entry[1], tuple(entry[2:])
        if name not in ACTIONS:
            raise ValueError(f"unknown action {name!r} (known: {', '.join(sorted(ACTIONS))})")
        required = [a for a in ACTIONS[name] if not a.endswith("?")]
        if not len(required) <= len(args) <= len(ACTIONS[name]):
            raise ValueError(f"{name} takes {', '.join(ACTIONS[name]) or 'nothing'}, got {list(args)}")
        if abs(at / tick - round(at / tick)) > 1e-9:
            raise ValueError(f"{name} at {at}: not a multiple of the tick {tick}")
        out.append((at, name, args))
    return sorted(out, key=lambda a: a[0])  # stable: same-time actions keep their order


def load_scenario(folder: Path) -> tuple[ClusterSpec, list[Action]]:
    spec = ClusterSpec.from_dict(json.loads((folder / "cluster.json").read_text()))
    cmdlist = json.loads((folder / "cmdlist.json").read_text()) if (folder / "cmdlist.json").exists() else []
    return spec, parse_cmdlist(cmdlist, spec.sim.tick)
