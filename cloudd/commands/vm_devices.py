"""A VM's extra disks and its ISO: what users attach and detach, running or not.

The replicated state only records what the VM should have; the node's agent creates the
files, hot-plugs into a running guest and updates the domain's definition, and reports
the disks it sees live (``observed.disks``). Extra disks count against the node's disk.
"""

from __future__ import annotations

from typing import Any

from cloudd.alloc.placement import Demand, fits, largest_possible, used, vm_disk_gb
from cloudd.commands.common import OBJECT_ID
from cloudd.commands.compute import DISK_GB, get_vm, usable_iso
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State

MAX_EXTRA_DISKS = 8
# vda: the OS disk; vdb: swap when the VM has some; extra disks take the next free name
EXTRA_DISK_TARGETS = tuple(f"vd{c}" for c in "cdefghijklmnopqrstuvwxy")
BUSY = ("deleting", "migrating")


def _changeable(vm: dict[str, Any], what: str) -> None:
    if vm["state"] in BUSY:
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: cannot {what}", {"state": vm["state"]})


@command("vm.disk.add", {"id": OBJECT_ID, "disk_id": OBJECT_ID, "size_gb": DISK_GB}, target="id")
def vm_disk_add(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Give the VM a blank extra disk (hot-plugged when it runs)."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "add a disk")
    disks = vm.get("disks", [])
    if any(d["id"] == args["disk_id"] for d in disks):
        raise CloudError("conflict", f"VM {vm['name']} already has disk {args['disk_id']}")
    if len(disks) >= MAX_EXTRA_DISKS:
        raise CloudError("conflict", f"VM {vm['name']} has {MAX_EXTRA_DISKS} extra disks already (the most it may have)")
    size = args["size_gb"]
    if vm["node"] is not None:
        node = state.nodes.get(vm["node"])
        reason = fits(node, Demand(0, 0, size), used(vm["node"], state.vms.values())) if node else None
        if reason:
            raise CloudError("conflict", f"node {vm['node']} has no room for the disk: {reason}")
    elif size + vm_disk_gb(vm) > largest_possible(state.nodes).disk_gb:
        raise CloudError("invalid", f"size_gb={size:g} is more than any hypervisor has", {"field": "size_gb"})
    taken = {d["target"] for d in disks}
    target = next(t for t in EXTRA_DISK_TARGETS if t not in taken)
    disk = {"id": args["disk_id"], "size_gb": size, "target": target, "created_at": ctx.ts}
    vm["disks"] = [*disks, disk]
    return {"id": vm["id"], "disk": dict(disk)}


@command("vm.disk.remove", {"id": OBJECT_ID, "disk_id": OBJECT_ID}, target="id")
def vm_disk_remove(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Detach an extra disk and delete it with its data."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "remove a disk")
    disks = vm.get("disks", [])
    kept = [d for d in disks if d["id"] != args["disk_id"]]
    if len(kept) == len(disks):
        raise CloudError("not_found", f"VM {vm['name']} has no disk {args['disk_id']}")
    vm["disks"] = kept
    return {"id": vm["id"], "disk_id": args["disk_id"]}


@command("vm.iso.attach", {"id": OBJECT_ID, "image": OBJECT_ID}, target="id")
def vm_iso_attach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Insert an ISO image as the VM's CD-ROM (SCSI, hot-plugged when it runs)."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "attach an ISO")
    usable_iso(state, args["image"], vm["owner"])
    if vm.get("iso") not in (None, args["image"]):
        raise CloudError("conflict", f"VM {vm['name']} has ISO {vm['iso']} attached: detach it first", {"iso": vm["iso"]})
    vm["iso"] = args["image"]
    return {"id": vm["id"], "iso": vm["iso"]}


@command("vm.iso.detach", {"id": OBJECT_ID}, target="id")
def vm_iso_detach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Eject the VM's ISO."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "detach an ISO")
    if vm.get("iso") is None:
        raise CloudError("conflict", f"VM {vm['name']} has no ISO attached")
    vm["iso"] = None
    return {"id": vm["id"], "iso": None}
