"""A snapshot of the cluster for allocation: pure data built once per manager pass.

Everything in ``cloudd.alloc`` works on a ``Snapshot``: per hypervisor its capacity
(vCPUs with the cluster's overcommit ratio, RAM less the host reserve, disk), what the
VMs assigned to it take (allocation), what its agent observes (usage) and a short
forecast of that usage (trend), and the anti-affinity groups of its VMs. Building one
costs one pass over nodes and VMs; placing a VM into it (``add``) or taking one out
(``remove``) is O(1), so a manager pass or a planner can try thousands of moves.

No I/O, no clock: time comes in with the data (usage samples carry their own times).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from cloudd.alloc.cpu import compatible

POLICIES = ("resource", "usage", "trend")
HISTORY_MAX = 60  # usage samples kept per node (one a minute at most: an hour)
HISTORY_EVERY_S = 60.0


@dataclass(frozen=True)
class AllocSettings:
    """The cluster's allocation policy (``cluster.alloc`` in the state; admins set it)."""

    policy: str = "resource"  # resource | usage | trend
    cpu_ratio: float = 4.0  # vCPUs per physical core
    ram_reserve_mb: int = 1024  # kept for the host; RAM is never overcommitted
    disk_reserve_gb: float = 0.0
    trend_horizon_s: float = 1800.0  # how far ahead the trend policy looks
    rebalance_auto: bool = False
    rebalance_max_moves: int = 10
    rebalance_interval_s: float = 600.0  # rebalance_auto: how often the leader looks
    migrations_per_node: int = 2  # at once, as source or target
    migrations_per_cluster: int = 4
    migration_bandwidth_mib_s: int = 0  # live migrations; 0: unlimited
    migration_max_downtime_ms: int = 300  # the longest pause a live migration may cause

    @classmethod
    def from_state(cls, cluster: Mapping[str, Any]) -> "AllocSettings":
        data = cluster.get("alloc") or {}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Demand:
    """What one VM takes from a hypervisor (and the constraints of where it may go)."""

    vm_id: str
    vcpus: int
    ram_mb: int
    disk_gb: float
    group: str | None = None  # anti-affinity: no two VMs of a group on one node
    pinned: tuple[str, ...] = ()  # allowed nodes (empty: any)
    ha: bool = False
    priority: int = 0
    cpu_model: str | None = None  # the named CPU model the VM runs with (None: the default)


def vm_disk_gb(vm: Mapping[str, Any]) -> float:
    """All the node-local disk a VM takes: its OS disk, swap and extra disks."""
    return vm["disk_gb"] + vm.get("swap_mb", 0) / 1024 + sum(d["size_gb"] for d in vm.get("disks", ()))


def demand_of(vm: Mapping[str, Any]) -> Demand:
    placement = vm.get("placement") or {}
    return Demand(
        vm["id"], vm["vcpus"], vm["ram_mb"], vm_disk_gb(vm),
        placement.get("group"), tuple(placement.get("nodes") or ()), bool(vm.get("ha")), int(vm.get("ha_priority", 0)),
        vm.get("cpu_model"),
    )


@dataclass
class NodeLoad:
    """One hypervisor in a snapshot. Capacities already apply the settings."""

    name: str
    cap_vcpus: float
    cap_ram_mb: float
    cap_disk_gb: float
    cores: int = 1
    usable: str | None = None  # None: it may take VMs; else why not
    cpu_models: tuple[str, ...] = ()  # the named CPU models it runs (empty: cannot tell)
    alloc_vcpus: int = 0
    alloc_ram_mb: int = 0
    alloc_disk_gb: float = 0.0
    used_cpu: float = 0.0  # observed, as a share of the node's cores (0..1)
    used_ram_mb: float = 0.0  # observed
    used_disk_gb: float = 0.0
    forecast_cpu: float = 0.0  # trend policy: expected in ``trend_horizon_s``
    forecast_ram_mb: float = 0.0
    groups: Counter[str] = field(default_factory=Counter)
    vms: dict[str, Demand] = field(default_factory=dict)
    reserved: dict[str, Demand] = field(default_factory=dict)  # migrating here, not yet here

    def free_after(self, d: Demand) -> tuple[float, float, float]:
        return (
            self.cap_vcpus - self.alloc_vcpus - d.vcpus,
            self.cap_ram_mb - self.alloc_ram_mb - d.ram_mb,
            self.cap_disk_gb - self.alloc_disk_gb - d.disk_gb,
        )

    def refusal(self, d: Demand) -> str | None:
        """None when ``d`` may go here, else why not (eligibility, constraints, room)."""
        if self.usable is not None:
            return self.usable
        if d.pinned and self.name not in d.pinned:
            return f"the VM is pinned to {', '.join(d.pinned)}"
        if d.group and self.groups.get(d.group):
            return f"holds a VM of anti-affinity group {d.group}"
        cpu_reason = compatible(d.cpu_model, self.cpu_models)
        if cpu_reason:
            return cpu_reason
        cpu, ram, disk = self.free_after(d)
        if ram < 0:
            return f"RAM: {self.cap_ram_mb - self.alloc_ram_mb:g} MiB free, {d.ram_mb} MiB needed"
        if cpu < 0:
            return f"vCPUs: {self.cap_vcpus - self.alloc_vcpus:g} free, {d.vcpus} needed"
        if disk < -1e-9:
            return f"disk: {self.cap_disk_gb - self.alloc_disk_gb:g} GB free, {d.disk_gb:g} GB needed"
        return None


def eligibility(node: Mapping[str, Any]) -> str | None:
    """None when the node may take new VMs, else why not."""
    if "hypervisor" not in node.get("roles", []):
        return "not a hypervisor"
    if node.get("maintenance"):
        return "in maintenance"
    if node.get("status") != "up":
        return f"status {node.get('status')}"
    return None


def forecast(history: list[list[float]], column: int, horizon_s: float, alpha: float = 0.3) -> float | None:
    """EWMA level plus EWMA trend (per second) of one column of ``[ts, cpu, ram, disk]``
    samples, projected ``horizon_s`` ahead (Holt's linear method); None without history."""
    if not history:
        return None
    level = history[0][column]
    trend = 0.0
    for (t0, *_), sample in zip(history, history[1:]):
        dt = max(1.0, sample[0] - t0)
        previous = level
        level = alpha * sample[column] + (1 - alpha) * (level + trend * dt)
        trend = alpha * (level - previous) / dt + (1 - alpha) * trend
    return max(0.0, level + trend * horizon_s)


@dataclass
class Snapshot:
    nodes: dict[str, NodeLoad]
    settings: AllocSettings
    where: dict[str, str] = field(default_factory=dict)  # vm id -> node

    @classmethod
    def build(cls, nodes: Mapping[str, Mapping[str, Any]], vms: Iterable[Mapping[str, Any]], settings: AllocSettings | None = None) -> "Snapshot":
        settings = settings or AllocSettings()
        loads: dict[str, NodeLoad] = {}
        for name in sorted(nodes):
            node = nodes[name]
            if "hypervisor" not in node.get("roles", []):
                continue
            inv = node.get("inventory") or {}
            cores = int(inv.get("cpus", 0))
            load = NodeLoad(
                name,
                cap_vcpus=cores * settings.cpu_ratio,
                cap_ram_mb=max(0.0, inv.get("ram_mb", 0) - settings.ram_reserve_mb),
                cap_disk_gb=max(0.0, inv.get("disk_gb", 0.0) - settings.disk_reserve_gb),
                cores=max(1, cores),
                usable=eligibility(node),
                cpu_models=tuple((node.get("compute") or {}).get("cpu_models") or ()),
            )
            usage = node.get("usage") or {}
            load.used_ram_mb = float(usage.get("ram_used_mb", 0) or 0)
            load.used_disk_gb = float(usage.get("disk_used_gb", 0) or 0)
            load.used_cpu = min(1.0, float(usage.get("load1", 0) or 0) / load.cores)
            history = node.get("usage_history") or []
            cpu_f = forecast(history, 1, settings.trend_horizon_s)
            ram_f = forecast(history, 2, settings.trend_horizon_s)
            load.forecast_cpu = min(1.0, (cpu_f if cpu_f is not None else load.used_cpu * load.cores) / load.cores)
            load.forecast_ram_mb = ram_f if ram_f is not None else load.used_ram_mb
            loads[name] = load
        snap = cls(loads, settings)
        for vm in vms:
            node = vm.get("node")
            if node in loads:  # a VM being deleted holds its resources until it is gone
                snap.add(demand_of(vm), node)
            target = (vm.get("migration") or {}).get("target")
            if target in loads:  # a migrating VM holds room on its target too
                snap.reserve(demand_of(vm), target)
        return snap

    def reserve(self, d: Demand, node: str) -> None:
        """Hold ``d``'s room on ``node`` without placing it there (a migration's target):
        it counts for capacity and anti-affinity, and no planner moves it."""
        self._take(d, node).reserved[d.vm_id] = d

    def add(self, d: Demand, node: str) -> None:
        self._take(d, node).vms[d.vm_id] = d
        self.where[d.vm_id] = node

    def _take(self, d: Demand, node: str) -> NodeLoad:
        load = self.nodes[node]
        load.alloc_vcpus += d.vcpus
        load.alloc_ram_mb += d.ram_mb
        load.alloc_disk_gb += d.disk_gb
        if d.group:
            load.groups[d.group] += 1
        return load

    def remove(self, vm_id: str) -> Demand | None:
        node = self.where.pop(vm_id, None)
        if node is None:
            return None
        load = self.nodes[node]
        d = load.vms.pop(vm_id)
        load.alloc_vcpus -= d.vcpus
        load.alloc_ram_mb -= d.ram_mb
        load.alloc_disk_gb -= d.disk_gb
        if d.group:
            load.groups[d.group] -= 1
            if not load.groups[d.group]:
                del load.groups[d.group]
        return d

    def copy(self) -> "Snapshot":
        nodes = {n: replace(load, groups=Counter(load.groups), vms=dict(load.vms), reserved=dict(load.reserved)) for n, load in self.nodes.items()}
        return Snapshot(nodes, self.settings, dict(self.where))
