"""A VM's extra disks and its ISO: what users attach and detach, running or not.

The replicated state only records what the VM should have; the node's agent creates the
files, hot-plugs into a running guest and updates the domain's definition, and reports
the disks it sees live (``observed.disks``). Extra disks count against the node's disk.
"""

from __future__ import annotations

from typing import Any

from cloudd.alloc.placement import AllocSettings, Demand, fits, largest_possible, used, vm_disk_gb
from cloudd.commands.common import OBJECT_ID
from cloudd.commands.compute import DISK_GB, RAM_MB, VCPUS, get_vm, usable_iso
from cloudd.commands.pools import Usage, check_quota
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.model.tasks import open_task
from cloudd.validate import Field
from cloudd.vm_layout import ISO_TARGET

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
    if len(disks) + len(vm.get("volumes", ())) >= MAX_EXTRA_DISKS:
        raise CloudError("conflict", f"VM {vm['name']} has {MAX_EXTRA_DISKS} extra disks and volumes already (the most it may have)")
    size = args["size_gb"]
    check_quota(state, vm["owner"], Usage(disk_gb=size))
    if vm["node"] is not None:
        node = state.nodes.get(vm["node"])
        reason = fits(node, Demand("", 0, 0, size), used(vm["node"], state.vms.values()), AllocSettings.from_state(state.cluster)) if node else None
        if reason:
            raise CloudError("conflict", f"node {vm['node']} has no room for the disk: {reason}")
    elif size + vm_disk_gb(vm) > largest_possible(state.nodes, AllocSettings.from_state(state.cluster)).disk_gb:
        raise CloudError("invalid", f"size_gb={size:g} is more than any hypervisor has", {"field": "size_gb"})
    taken = {d["target"] for d in disks} | {v["target"] for v in vm.get("volumes", ())}
    target = next(t for t in EXTRA_DISK_TARGETS if t not in taken)
    disk = {"id": args["disk_id"], "size_gb": size, "target": target, "created_at": ctx.ts}
    vm["disks"] = [*disks, disk]
    task = open_task(state, ctx, "vm.disk.add", vm, target=target, disk_id=disk["id"])
    return {"id": vm["id"], "disk": dict(disk), "task": dict(task)}


@command("vm.disk.remove", {"id": OBJECT_ID, "disk_id": OBJECT_ID}, target="id")
def vm_disk_remove(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Detach an extra disk and delete it with its data."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "remove a disk")
    disks = vm.get("disks", [])
    gone = [d for d in disks if d["id"] == args["disk_id"]]
    if not gone:
        raise CloudError("not_found", f"VM {vm['name']} has no disk {args['disk_id']}")
    vm["disks"] = [d for d in disks if d["id"] != args["disk_id"]]
    task = open_task(state, ctx, "vm.disk.remove", vm, target=gone[0]["target"], disk_id=args["disk_id"])
    return {"id": vm["id"], "disk_id": args["disk_id"], "task": dict(task)}


@command("vm.iso.attach", {"id": OBJECT_ID, "image": OBJECT_ID}, target="id")
def vm_iso_attach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Insert an ISO image as the VM's CD-ROM (SCSI, hot-plugged when it runs)."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "attach an ISO")
    usable_iso(state, args["image"], vm["owner"])
    if vm.get("iso") not in (None, args["image"]):
        raise CloudError("conflict", f"VM {vm['name']} has ISO {vm['iso']} attached: detach it first", {"iso": vm["iso"]})
    vm["iso"] = args["image"]
    task = open_task(state, ctx, "vm.iso.attach", vm, target=ISO_TARGET, image=args["image"])
    return {"id": vm["id"], "iso": vm["iso"], "task": dict(task)}


@command("vm.iso.detach", {"id": OBJECT_ID}, target="id")
def vm_iso_detach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Eject the VM's ISO."""
    vm = get_vm(state, args["id"])
    _changeable(vm, "detach an ISO")
    if vm.get("iso") is None:
        raise CloudError("conflict", f"VM {vm['name']} has no ISO attached")
    vm["iso"] = None
    task = open_task(state, ctx, "vm.iso.detach", vm, target=ISO_TARGET)
    return {"id": vm["id"], "iso": None, "task": dict(task)}


RESIZABLE = ("pending", "stopped")


@command(
    "vm.resize",
    {
        "id": OBJECT_ID,
        "flavor": Field("str", max_len=64, required=False),
        "vcpus": Field("int", min=VCPUS.min, max=VCPUS.max, required=False),
        "ram_mb": Field("int", min=RAM_MB.min, max=RAM_MB.max, required=False),
        "disk_gb": Field("num", min=DISK_GB.min, max=DISK_GB.max, required=False),
    },
    target="id",
)
def vm_resize(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Change a stopped (or not yet placed) VM's vCPUs, RAM and OS disk size.

    The OS disk only grows; the node's agent grows its file before the next start.
    Checked against the pool's limits and against the VM's node.
    """
    vm = get_vm(state, args["id"])
    if vm["state"] not in RESIZABLE:
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: stop it before resizing", {"state": vm["state"]})
    sizes = {k: vm[k] for k in ("vcpus", "ram_mb", "disk_gb")}
    if "flavor" in args:
        flavor = state.flavors.get(args["flavor"])
        if flavor is None:
            raise CloudError("not_found", f"flavor {args['flavor']} not found")
        sizes.update({k: flavor[k] for k in ("vcpus", "ram_mb", "disk_gb")})
    sizes.update({k: args[k] for k in ("vcpus", "ram_mb", "disk_gb") if k in args})
    if len(args) == 1:
        raise CloudError("invalid", "give a flavor, vcpus, ram_mb or disk_gb")
    if sizes["disk_gb"] < vm["disk_gb"]:
        raise CloudError("invalid", f"the OS disk can only grow (it has {vm['disk_gb']:g} GB)", {"field": "disk_gb"})
    grow = Demand("", max(0, sizes["vcpus"] - vm["vcpus"]), max(0, sizes["ram_mb"] - vm["ram_mb"]), sizes["disk_gb"] - vm["disk_gb"])
    check_quota(state, vm["owner"], Usage(grow.vcpus, grow.ram_mb, grow.disk_gb, 0, 0))
    if vm["node"] is not None:
        node = state.nodes.get(vm["node"])
        reason = fits(node, grow, used(vm["node"], state.vms.values()), AllocSettings.from_state(state.cluster)) if node else None
        if reason:
            raise CloudError("conflict", f"node {vm['node']} has no room for the new size: {reason}")
    else:
        biggest = largest_possible(state.nodes, AllocSettings.from_state(state.cluster))
        for key, want, have in (("vcpus", sizes["vcpus"], biggest.vcpus), ("ram_mb", sizes["ram_mb"], biggest.ram_mb)):
            if want > have:
                raise CloudError("invalid", f"{key}={want:g} is more than any hypervisor has ({have:g})", {"field": key})
    vm.update(sizes)
    if "flavor" in args:
        vm["flavor"] = args["flavor"]
    elif any(k in args for k in ("vcpus", "ram_mb", "disk_gb")):
        vm["flavor"] = None
    task = open_task(state, ctx, "vm.resize", vm, **sizes)
    return {"id": vm["id"], **sizes, "task": dict(task)}
