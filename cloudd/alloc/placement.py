"""Placement of one VM: pure functions over node and VM records (no I/O, no clock).

For now: the hypervisor with the most free RAM among those that are up, not in
maintenance and have room (RAM never overcommitted, vCPUs up to ``cpu_ratio`` per core,
disk). The allocator of the leader's-work issue replaces the scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

CPU_RATIO = 4.0
RAM_RESERVE_MB = 1024


@dataclass(frozen=True)
class Demand:
    vcpus: int
    ram_mb: int
    disk_gb: float


@dataclass(frozen=True)
class Capacity:
    vcpus: float
    ram_mb: int
    disk_gb: float


def capacity(node: Mapping[str, Any]) -> Capacity:
    inv = node.get("inventory") or {}
    return Capacity(
        vcpus=inv.get("cpus", 0) * CPU_RATIO,
        ram_mb=max(0, inv.get("ram_mb", 0) - RAM_RESERVE_MB),
        disk_gb=inv.get("disk_gb", 0.0),
    )


def vm_disk_gb(vm: Mapping[str, Any]) -> float:
    """All the node-local disk a VM takes: its OS disk, swap and extra disks."""
    return vm["disk_gb"] + vm.get("swap_mb", 0) / 1024 + sum(d["size_gb"] for d in vm.get("disks", ()))


def demand_of(vm: Mapping[str, Any]) -> Demand:
    return Demand(vm["vcpus"], vm["ram_mb"], vm_disk_gb(vm))


def used(node_name: str, vms: Iterable[Mapping[str, Any]]) -> Demand:
    vcpus = ram = 0
    disk = 0.0
    for vm in vms:
        if vm.get("node") == node_name:
            vcpus += vm["vcpus"]
            ram += vm["ram_mb"]
            disk += vm_disk_gb(vm)
    return Demand(vcpus, ram, disk)


def fits(node: Mapping[str, Any], demand: Demand, in_use: Demand) -> str | None:
    """None when ``demand`` fits on ``node``, else the reason it does not."""
    cap = capacity(node)
    if in_use.ram_mb + demand.ram_mb > cap.ram_mb:
        return f"RAM: {cap.ram_mb - in_use.ram_mb} MiB free, {demand.ram_mb} MiB needed"
    if in_use.vcpus + demand.vcpus > cap.vcpus:
        return f"vCPUs: {cap.vcpus - in_use.vcpus:g} free, {demand.vcpus} needed"
    if in_use.disk_gb + demand.disk_gb > cap.disk_gb:
        return f"disk: {cap.disk_gb - in_use.disk_gb:g} GB free, {demand.disk_gb:g} GB needed"
    return None


def eligible(node: Mapping[str, Any]) -> str | None:
    if "hypervisor" not in node.get("roles", []):
        return "not a hypervisor"
    if node.get("maintenance"):
        return "in maintenance"
    if node.get("status") != "up":
        return f"status {node.get('status')}"
    return None


def choose_node(
    nodes: Mapping[str, Mapping[str, Any]], vms: Mapping[str, Mapping[str, Any]], demand: Demand
) -> tuple[str | None, dict[str, str]]:
    """Pick a node for ``demand``; returns (node or None, reason per rejected node)."""
    rejected: dict[str, str] = {}
    best: tuple[int, str] | None = None
    for name in sorted(nodes):
        node = nodes[name]
        reason = eligible(node)
        in_use = used(name, vms.values())
        if reason is None:
            reason = fits(node, demand, in_use)
        if reason is not None:
            rejected[name] = reason
            continue
        free_ram = capacity(node).ram_mb - in_use.ram_mb
        if best is None or free_ram > best[0]:
            best = (free_ram, name)
    return (best[1] if best else None), rejected


def largest_possible(nodes: Mapping[str, Mapping[str, Any]]) -> Capacity:
    """The most any single hypervisor could ever hold (for 'beyond any node' checks)."""
    caps = [capacity(n) for n in nodes.values() if "hypervisor" in n.get("roles", [])]
    if not caps:
        return Capacity(0, 0, 0.0)
    return Capacity(max(c.vcpus for c in caps), max(c.ram_mb for c in caps), max(c.disk_gb for c in caps))
