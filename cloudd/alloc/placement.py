"""Placement of one VM, and the capacity questions: pure functions over a ``Snapshot``.

Hard rules first: a node must be an up hypervisor out of maintenance, allowed by the VM's
pinning, free of the VM's anti-affinity group, and have room (RAM never overcommitted,
vCPUs up to the cluster's ratio per core, disk). Among the nodes left, the policy scores:

- ``resource``: the free share of RAM, vCPUs and disk the node keeps after taking the VM
  (spreads allocations);
- ``usage``: the same from what the agents observe (RAM used, CPU load) where it matters;
- ``trend``: like usage, from a short forecast of it (EWMA level plus trend), so a node
  that is filling up is avoided before it is full.

Every decision can explain itself: the score and its parts for each candidate, the reason
for each refused node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from cloudd.alloc.snapshot import AllocSettings, Demand, NodeLoad, Snapshot, demand_of, vm_disk_gb
from cloudd.alloc.snapshot import eligibility as eligible

WEIGHTS = {"ram": 0.5, "cpu": 0.3, "disk": 0.2}

__all__ = [
    "AllocSettings", "Capacity", "Decision", "Demand", "Score", "Snapshot", "capacity", "demand_of", "eligible", "fits",
    "fit_count", "largest_possible", "n_plus_one", "place", "score", "used", "vm_disk_gb",
]


@dataclass(frozen=True)
class Score:
    total: float
    parts: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"total": round(self.total, 4), **{k: round(v, 4) for k, v in self.parts.items()}}


@dataclass
class Decision:
    node: str | None
    scores: dict[str, Score] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def reason(self) -> str:
        """Why no node took it (for the VM's state reason)."""
        if self.node is not None:
            return f"placed on {self.node}"
        return "no node can take it: " + ("; ".join(f"{n}: {r}" for n, r in sorted(self.refused.items())) or "no hypervisors")

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "candidates": [{"node": n, **s.to_dict()} for n, s in sorted(self.scores.items(), key=lambda kv: (-kv[1].total, kv[0]))],
            "refused": [{"node": n, "reason": r} for n, r in sorted(self.refused.items())],
        }


def _share(free: float, cap: float) -> float:
    return max(0.0, free / cap) if cap > 0 else 0.0


def score(load: NodeLoad, d: Demand, settings: AllocSettings) -> Score:
    """How good ``load`` is for ``d`` under the policy (higher is better, 0..1)."""
    cpu_free, ram_free, disk_free = load.free_after(d)
    disk = _share(disk_free, load.cap_disk_gb)
    if settings.policy == "resource":
        ram, cpu = _share(ram_free, load.cap_ram_mb), _share(cpu_free, load.cap_vcpus)
    else:
        observed_ram = load.forecast_ram_mb if settings.policy == "trend" else load.used_ram_mb
        observed_cpu = load.forecast_cpu if settings.policy == "trend" else load.used_cpu
        total_ram = load.cap_ram_mb + settings.ram_reserve_mb
        ram = _share(total_ram - observed_ram - d.ram_mb, total_ram)
        cpu = max(0.0, 1.0 - observed_cpu - d.vcpus / (load.cores * settings.cpu_ratio))
    parts = {"ram": ram, "cpu": cpu, "disk": disk}
    return Score(sum(WEIGHTS[k] * v for k, v in parts.items()), parts)


def place(snap: Snapshot, d: Demand, exclude: frozenset[str] | set[str] = frozenset(), why_excluded: str = "excluded") -> Decision:
    """The best node for ``d`` (None when no node may take it), with every node's score or
    refusal. ``exclude``: nodes not to consider (the VM's current one, a dead one)."""
    decision = Decision(None)
    best: tuple[float, str] | None = None
    for name, load in snap.nodes.items():
        if name in exclude:
            decision.refused[name] = why_excluded
            continue
        why = load.refusal(d)
        if why is not None:
            decision.refused[name] = why
            continue
        s = score(load, d, snap.settings)
        decision.scores[name] = s
        if best is None or s.total > best[0] or (s.total == best[0] and name < best[1]):
            best = (s.total, name)
    decision.node = best[1] if best else None
    return decision


def fit_count(snap: Snapshot, d: Demand) -> dict[str, int]:
    """Per node: how many more VMs like ``d`` fit now (constraints and room; anti-affinity
    lets one per node)."""
    out: dict[str, int] = {}
    for name, load in snap.nodes.items():
        if load.refusal(d) is not None:
            out[name] = 0
            continue
        cpu, ram, disk = load.cap_vcpus - load.alloc_vcpus, load.cap_ram_mb - load.alloc_ram_mb, load.cap_disk_gb - load.alloc_disk_gb
        counts = [int(ram // d.ram_mb) if d.ram_mb else 10**6, int(cpu // d.vcpus) if d.vcpus else 10**6]
        if d.disk_gb > 0:
            counts.append(int(disk // d.disk_gb + 1e-9))
        out[name] = 1 if d.group else max(0, min(counts))
    return out


def n_plus_one(snap: Snapshot, ha_only: bool = False) -> dict[str, list[str]]:
    """For each hypervisor, the VMs that would find no room if it were lost (biggest first,
    each on the first node with room, nodes by free RAM). Empty lists everywhere: the
    cluster survives the loss of any one node. Nothing is copied: what each lost node's VMs
    would add elsewhere is kept aside, so 1,000 nodes cost a second, not minutes."""
    order = sorted((load for load in snap.nodes.values() if load.usable is None), key=lambda l: (l.alloc_ram_mb - l.cap_ram_mb, l.name))
    out: dict[str, list[str]] = {}
    for name, load in snap.nodes.items():
        lost = sorted((d for d in load.vms.values() if d.ha or not ha_only), key=lambda d: (-d.ram_mb, -d.vcpus, d.vm_id))
        extra: dict[str, tuple[int, int, float, frozenset[str]]] = {}
        stranded = []
        for d in lost:
            for cand in order:
                if cand.name == name:
                    continue
                vcpus, ram, disk, groups = extra.get(cand.name, (0, 0, 0.0, frozenset()))
                if d.pinned and cand.name not in d.pinned:
                    continue
                if d.group and (cand.groups.get(d.group) or d.group in groups):
                    continue
                cpu_free, ram_free, disk_free = cand.free_after(d)
                if ram_free - ram < 0 or cpu_free - vcpus < 0 or disk_free - disk < -1e-9:
                    continue
                extra[cand.name] = (vcpus + d.vcpus, ram + d.ram_mb, disk + d.disk_gb, groups | ({d.group} if d.group else set()))
                break
            else:
                stranded.append(d.vm_id)
        out[name] = stranded
    return out


# --- the older node-record API, used inside the replicated apply ---------------------------


@dataclass(frozen=True)
class Capacity:
    vcpus: float
    ram_mb: float
    disk_gb: float


def capacity(node: Mapping[str, Any], settings: AllocSettings | None = None) -> Capacity:
    settings = settings or AllocSettings()
    inv = node.get("inventory") or {}
    return Capacity(inv.get("cpus", 0) * settings.cpu_ratio, max(0, inv.get("ram_mb", 0) - settings.ram_reserve_mb), inv.get("disk_gb", 0.0))


def used(node_name: str, vms: Any, exclude: str | None = None) -> Demand:
    """What the VMs take from ``node_name``: those assigned to it and those migrating to it
    (their room is held on both nodes until the move ends); ``exclude``: one VM left out."""
    vcpus = ram = 0
    disk = 0.0
    for vm in vms:
        if vm["id"] == exclude:
            continue
        if vm.get("node") == node_name or (vm.get("migration") or {}).get("target") == node_name:
            vcpus += vm["vcpus"]
            ram += vm["ram_mb"]
            disk += vm_disk_gb(vm)
    return Demand("", vcpus, ram, disk)


def fits(node: Mapping[str, Any], demand: Demand, in_use: Demand, settings: AllocSettings | None = None) -> str | None:
    """None when ``demand`` fits on ``node`` next to ``in_use``, else the reason."""
    cap = capacity(node, settings)
    if in_use.ram_mb + demand.ram_mb > cap.ram_mb:
        return f"RAM: {cap.ram_mb - in_use.ram_mb:g} MiB free, {demand.ram_mb} MiB needed"
    if in_use.vcpus + demand.vcpus > cap.vcpus:
        return f"vCPUs: {cap.vcpus - in_use.vcpus:g} free, {demand.vcpus} needed"
    if in_use.disk_gb + demand.disk_gb > cap.disk_gb:
        return f"disk: {cap.disk_gb - in_use.disk_gb:g} GB free, {demand.disk_gb:g} GB needed"
    return None


def largest_possible(nodes: Mapping[str, Mapping[str, Any]], settings: AllocSettings | None = None) -> Capacity:
    """The most any single hypervisor could ever hold (for 'beyond any node' checks)."""
    caps = [capacity(n, settings) for n in nodes.values() if "hypervisor" in n.get("roles", [])]
    if not caps:
        return Capacity(0, 0, 0.0)
    return Capacity(max(c.vcpus for c in caps), max(c.ram_mb for c in caps), max(c.disk_gb for c in caps))
