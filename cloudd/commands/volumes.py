"""Storage pools and volumes: what admins and users ask for, what storage agents report.

A storage pool lives on one storage node (``file``: a directory, ``lvm``: a volume group,
``drbd``: LVM volumes replicated to a peer storage node). A volume lives in a pool and,
while it is attached to a VM, is exported over iSCSI to the hypervisor that runs the VM,
and to no one else (``export_initiators``): moving the VM moves the ACL, which is how a
fenced node loses access to its disks.

Volume states: ``creating`` → ``available`` ⇄ ``attached`` (→ ``detaching`` while a
running guest lets go), ``resizing`` (back to where it was), ``deleting`` → gone;
``error`` when the storage node could not create it.
"""

from __future__ import annotations

import re
from typing import Any

from cloudd.commands.common import NODE_NAME, OBJECT_ID, USER_NAME, get_node, require_initialized
from cloudd.commands.compute import get_vm
from cloudd.commands.pools import Usage, check_quota
from cloudd.commands.registry import Context, command
from cloudd.commands.replication import new_replica
from cloudd.errors import CloudError
from cloudd.model.attachments import settle as _settle
from cloudd.model.migration import hosts
from cloudd.model.state import State
from cloudd.model.tasks import follow_volume, open_task, vm_gone
from cloudd.ops.storage import VOLUME_ID_RE, node_initiator
from cloudd.validate import Field

GIB = 1 << 30
STORAGE_POOL_NAME = Field("str", pattern=re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$"))
VOLUME_NAME = Field("str", pattern=re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))
VOLUME_SIZE_GB = Field("num", min=0.001, max=64 << 10)  # 0 or less: a 400 naming the field
LVM_NAME_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,63}$")
BACKEND_CONFIG = {
    "file": {"path": Field("str", max_len=4096, check=lambda v: None if v.startswith("/") and "\x00" not in v and "/../" not in v + "/" else "must be an absolute path")},
    "lvm": {"vg": Field("str", pattern=LVM_NAME_RE), "thin_pool": Field("str", pattern=LVM_NAME_RE, required=False)},
    "drbd": {"vg": Field("str", pattern=LVM_NAME_RE), "thin_pool": Field("str", pattern=LVM_NAME_RE, required=False), "peer": NODE_NAME},
}
VOLUME_STATES = ("creating", "available", "attached", "detaching", "resizing", "deleting", "error")
BUSY = ("creating", "resizing", "deleting", "detaching")
MAX_DEVICES = 8  # extra disks and volumes together, vdc…


def get_storage_pool(state: State, name: str) -> dict[str, Any]:
    pool = state.storage_pools.get(name)
    if pool is None:
        raise CloudError("not_found", f"storage pool {name} not found")
    return pool


def get_volume(state: State, volume_id: str) -> dict[str, Any]:
    volume = state.volumes.get(volume_id)
    if volume is None:
        raise CloudError("not_found", f"volume {volume_id} not found")
    return volume


def export_initiators(state: State, volume: dict[str, Any]) -> list[str]:
    """Who may reach the volume over iSCSI now: the node of the VM it is attached to, and
    during a live migration its target too (never longer: the ACL is storage fencing)."""
    vm = state.vms.get(volume.get("attached_to") or "")
    if vm is None or vm["node"] is None:
        return []
    return [node_initiator(node) for node in sorted(hosts(vm))]


def volumes_gb(volumes: list[dict[str, Any]]) -> float:
    return sum(v["size_gb"] for v in volumes)


@command(
    "storage_pool.create",
    {"name": STORAGE_POOL_NAME, "node": NODE_NAME, "backend": Field("str", choices=tuple(BACKEND_CONFIG)), "config": Field("dict", max_len=8)},
)
def storage_pool_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Create a storage pool on a storage node (its agent reports the capacity)."""
    require_initialized(state)
    if args["name"] in state.storage_pools:
        raise CloudError("conflict", f"storage pool {args['name']} already exists")
    node = get_node(state, args["node"])
    if node["roles"] and "storage" not in node["roles"]:
        raise CloudError("invalid", f"node {node['name']} does not have the storage role", {"field": "node"})
    from cloudd.validate import check_args

    config = check_args(args["config"], BACKEND_CONFIG[args["backend"]], prefix="config.")
    if args["backend"] == "drbd":
        peer = get_node(state, config["peer"])
        if peer["name"] == node["name"]:
            raise CloudError("invalid", "a DRBD pool needs a second storage node as its peer", {"field": "config.peer"})
    state.storage_pools[args["name"]] = {
        "name": args["name"],
        "node": node["name"],
        "backend": args["backend"],
        "config": config,
        "capacity": None,
        "error": None,
        "created_at": ctx.ts,
    }
    return dict(state.storage_pools[args["name"]])


@command("storage_pool.delete", {"name": STORAGE_POOL_NAME})
def storage_pool_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Forget a storage pool that holds no volumes (its data stays on the node)."""
    get_storage_pool(state, args["name"])
    held = sorted(v["name"] for v in state.volumes.values() if v["pool"] == args["name"])
    if held:
        raise CloudError("conflict", f"storage pool {args['name']} still holds volumes: {', '.join(held[:5])}", {"volumes": held})
    del state.storage_pools[args["name"]]
    return {"name": args["name"]}


@command(
    "storage_pool.report",
    {
        "name": STORAGE_POOL_NAME,
        "node": NODE_NAME,
        "total_bytes": Field("int", min=0, max=1 << 62),
        "free_bytes": Field("int", min=0, max=1 << 62),
        "error": Field("str", max_len=1000, nullable=True, required=False),
    },
    audit=False,
    remember=False,
)
def storage_pool_report(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A storage agent reports a pool's capacity (or why it cannot use it)."""
    pool = get_storage_pool(state, args["name"])
    if pool["node"] != args["node"]:
        raise CloudError("conflict", f"storage pool {pool['name']} is on {pool['node']}, not {args['node']}")
    pool["capacity"] = {"total_bytes": args["total_bytes"], "free_bytes": args["free_bytes"], "ts": ctx.ts}
    pool["error"] = args.get("error")
    return {"name": pool["name"]}


def _choose_pool(state: State, size_gb: float) -> dict[str, Any]:
    """The pool with the most free space that fits (deterministic: ties by name)."""
    usable = [p for p in state.storage_pools.values() if p["capacity"] is not None and p["error"] is None]
    usable.sort(key=lambda p: (-_free_gb(state, p), p["name"]))
    if not usable:
        raise CloudError("conflict", "no storage pool is ready (none defined, or none has reported its capacity yet)")
    if _free_gb(state, usable[0]) < size_gb:
        raise CloudError("insufficient_storage", f"no storage pool has {size_gb:g} GB free (the most is {_free_gb(state, usable[0]):.1f} GB in {usable[0]['name']})")
    return usable[0]


def _free_gb(state: State, pool: dict[str, Any]) -> float:
    """Reported free space minus what volumes still being created there will take."""
    if pool["capacity"] is None:
        return 0.0
    pending = volumes_gb([v for v in state.volumes.values() if v["pool"] == pool["name"] and v["state"] == "creating"])
    return pool["capacity"]["free_bytes"] / GIB - pending


@command(
    "volume.create",
    {
        "id": Field("str", pattern=VOLUME_ID_RE),
        "name": VOLUME_NAME,
        "owner": USER_NAME,
        "size_gb": VOLUME_SIZE_GB,
        "pool": Field("str", pattern=STORAGE_POOL_NAME.pattern, required=False),
        "image": Field("str", pattern=OBJECT_ID.pattern, required=False),
    },
    target="id",
)
def volume_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A blank volume, or a copy of an OS image (copy-on-write where the pool allows)."""
    require_initialized(state)
    if args["id"] in state.volumes:
        raise CloudError("conflict", f"volume {args['id']} already exists")
    if args["owner"] not in state.users:
        raise CloudError("not_found", f"user {args['owner']} not found")
    if any(v["name"] == args["name"] and v["owner"] == args["owner"] for v in state.volumes.values()):
        raise CloudError("conflict", f"you already have a volume named {args['name']}")
    size = args["size_gb"]
    if "image" in args:
        image = state.images.get(args["image"])
        if image is None or not (image["public"] or image["owner"] == args["owner"]):
            raise CloudError("not_found", f"image {args['image']} not found")
        if image["format"] not in ("qcow2", "raw"):
            raise CloudError("invalid", f"image {image['name']} is {image['format']}: volumes copy qcow2 or raw images", {"field": "image"})
        if image.get("state", "ready") != "ready":
            raise CloudError("conflict", f"image {image['name']} is {image['state']}, not ready")
        if size < max(image["size_gb"], image.get("min_disk_gb", 0)):
            raise CloudError("invalid", f"image {image['name']} needs at least {max(image['size_gb'], image.get('min_disk_gb', 0)):g} GB", {"field": "size_gb"})
    if "pool" in args:
        pool = get_storage_pool(state, args["pool"])
        if pool["capacity"] is not None and _free_gb(state, pool) < size:
            raise CloudError("insufficient_storage", f"storage pool {pool['name']} has {_free_gb(state, pool):.1f} GB free, {size:g} GB asked", {"field": "size_gb"})
    else:
        pool = _choose_pool(state, size)
    check_quota(state, args["owner"], Usage(disk_gb=size))
    replica = new_replica(state, pool)
    volume = {
        "id": args["id"],
        "name": args["name"],
        "owner": args["owner"],
        "pool": pool["name"],
        "node": pool["node"],
        "size_gb": size,
        "image": args.get("image"),
        "state": "creating",
        "state_since": ctx.ts,
        "attached_to": None,
        "target": None,
        "error": None,
        "observed": {"present": False, "size_bytes": None, "allocated_bytes": None, "exported_to": [], "ts": None},
        "usage": None,
        "created_at": ctx.ts,
        "tasks": [],
    }
    if replica is not None:
        volume["replica"] = replica
    state.volumes[volume["id"]] = volume
    task = open_task(state, ctx, "volume.create", volume, size_gb=size)
    return {"id": volume["id"], "name": volume["name"], "pool": pool["name"], "state": "creating", "task": dict(task)}


def _is_size(reported: int | None, size_gb: float) -> bool:
    """A pool may round a size up to its allocation unit (LVM: 4 MiB extents); a report
    of the size before a resize is never mistaken for the new one."""
    wanted = int(size_gb * GIB)
    return reported is not None and wanted - 4096 <= reported <= wanted + (4 << 20)


@command("volume.delete", {"id": OBJECT_ID}, target="id")
def volume_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Delete a volume and its data; refused while attached."""
    volume = get_volume(state, args["id"])
    if volume["attached_to"] is not None or volume["state"] == "detaching":
        raise CloudError("conflict", f"volume {volume['name']} is attached to a VM: detach it first", {"vm": volume["attached_to"]})
    if volume["state"] in ("deleting", "resizing"):
        raise CloudError("conflict", f"volume {volume['name']} is {volume['state']}", {"state": volume["state"]})
    volume["state"], volume["state_since"] = "deleting", ctx.ts
    task = open_task(state, ctx, "volume.delete", volume)
    return {"id": volume["id"], "state": "deleting", "task": dict(task)}


def taken_targets(vm: dict[str, Any]) -> set[str]:
    return {d["target"] for d in vm.get("disks", ())} | {v["target"] for v in vm.get("volumes", ())}


@command("volume.attach", {"id": OBJECT_ID, "vm": OBJECT_ID}, target="id")
def volume_attach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Attach a volume to a VM of the same owner (hot-plugged when it runs)."""
    from cloudd.commands.vm_devices import EXTRA_DISK_TARGETS

    volume = get_volume(state, args["id"])
    vm = get_vm(state, args["vm"])
    if vm["owner"] != volume["owner"]:
        raise CloudError("not_found", f"VM {args['vm']} not found")
    if volume["state"] != "available":
        raise CloudError("conflict", f"volume {volume['name']} is {volume['state']}, not available", {"state": volume["state"]})
    if vm["state"] in ("deleting", "migrating"):
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}", {"state": vm["state"]})
    taken = taken_targets(vm)
    if len(vm.get("disks", ())) + len(vm.get("volumes", ())) >= MAX_DEVICES:
        raise CloudError("conflict", f"VM {vm['name']} has {MAX_DEVICES} extra disks and volumes already (the most it may have)")
    target = next(t for t in EXTRA_DISK_TARGETS if t not in taken)
    vm["volumes"] = [*vm.get("volumes", []), {"id": volume["id"], "target": target}]
    volume["attached_to"], volume["target"] = vm["id"], target
    _settle(volume, ctx.ts)
    task = open_task(state, ctx, "vm.volume.attach", vm, target=target, volume=volume["id"])
    return {"id": volume["id"], "vm": vm["id"], "target": target, "task": dict(task)}


@command("volume.detach", {"id": OBJECT_ID}, target="id")
def volume_detach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Detach a volume from its VM: unplugged from a running guest first."""
    volume = get_volume(state, args["id"])
    vm = state.vms.get(volume["attached_to"] or "")
    if vm is None:
        raise CloudError("conflict", f"volume {volume['name']} is not attached")
    vm["volumes"] = [v for v in vm.get("volumes", []) if v["id"] != volume["id"]]
    running = vm["state"] == "running" and volume["target"] in (vm["observed"].get("disks") or [])
    volume["attached_to"] = None
    task = open_task(state, ctx, "vm.volume.detach", vm, target=volume["target"], volume=volume["id"])
    if running:
        volume["state"], volume["state_since"] = "detaching", ctx.ts
        vm["releasing"] = [*vm.get("releasing", []), volume["id"]]
    else:
        volume["target"] = None
        _settle(volume, ctx.ts)
    return {"id": volume["id"], "state": volume["state"], "task": dict(task)}


@command("volume.resize", {"id": OBJECT_ID, "size_gb": VOLUME_SIZE_GB, "force": Field("bool", required=False)}, target="id")
def volume_resize(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Offline resize: grow (shrinking needs ``force``: data past the end is lost). Refused
    while the VM it is attached to is not stopped."""
    volume = get_volume(state, args["id"])
    if volume["state"] not in ("available", "attached"):
        raise CloudError("conflict", f"volume {volume['name']} is {volume['state']}", {"state": volume["state"]})
    vm = state.vms.get(volume["attached_to"] or "")
    if vm is not None and vm["state"] != "stopped":
        raise CloudError("conflict", f"volume {volume['name']} is a disk of VM {vm['name']}, which is {vm['state']}: stop it first", {"state": vm["state"]})
    size = args["size_gb"]
    if size == volume["size_gb"]:
        raise CloudError("invalid", f"volume {volume['name']} already has {size:g} GB", {"field": "size_gb"})
    if size < volume["size_gb"] and not args.get("force"):
        raise CloudError("invalid", f"shrinking volume {volume['name']} from {volume['size_gb']:g} GB loses data: give force to do it anyway", {"field": "size_gb"})
    if size > volume["size_gb"]:
        check_quota(state, volume["owner"], Usage(disk_gb=size - volume["size_gb"]))
        pool = state.storage_pools.get(volume["pool"])
        if pool is not None and pool["capacity"] is not None and _free_gb(state, pool) < size - volume["size_gb"]:
            raise CloudError("insufficient_storage", f"storage pool {pool['name']} has {_free_gb(state, pool):.1f} GB free", {"field": "size_gb"})
    volume["size_gb"] = size
    volume["state"], volume["state_since"] = "resizing", ctx.ts
    task = open_task(state, ctx, "volume.resize", volume, size_gb=size)
    return {"id": volume["id"], "size_gb": size, "state": volume["state"], "task": dict(task)}


def _copy_remains(state: State, volume: dict[str, Any]) -> bool:
    """A replicated volume is gone once its secondary removed its copy too (or is not up:
    a dead node's copy goes with it)."""
    replica = volume.get("replica")
    if not replica:
        return False
    other = next(n for n in replica["nodes"] if n != replica["primary"])
    up = (state.nodes.get(other) or {}).get("status") in ("up", "maintenance")
    return up and (replica["sides"].get(other) or {}).get("role") != "Deleted"


@command(
    "volume.report",
    {
        "id": OBJECT_ID,
        "node": NODE_NAME,
        "present": Field("bool"),
        "size_bytes": Field("int", min=0, max=1 << 62, nullable=True, required=False),
        "allocated_bytes": Field("int", min=0, max=1 << 62, nullable=True, required=False),
        "exported_to": Field("list", max_len=8, item=Field("str", max_len=223), required=False),
        "error": Field("str", max_len=1000, nullable=True, required=False),
        "usage": Field("obj", required=False, spec={k: Field("int", min=0, max=1 << 62) for k in ("read_bytes", "read_ops", "write_bytes", "write_ops")}),
    },
    target="id",
    audit=False,
    remember=False,
)
def volume_report(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The storage agent reports what its pool and target show for a volume."""
    volume = get_volume(state, args["id"])
    if volume["node"] != args["node"]:
        raise CloudError("conflict", f"volume {volume['name']} is on {volume['node']}, not {args['node']}")
    volume["observed"] = {
        "present": args["present"],
        "size_bytes": args.get("size_bytes"),
        "allocated_bytes": args.get("allocated_bytes"),
        "exported_to": args.get("exported_to", []),
        "ts": ctx.ts,
    }
    if "usage" in args:
        volume["usage"] = {**args["usage"], "ts": ctx.ts}
    error = args.get("error")
    now = volume["state"]
    if now == "deleting":
        if not args["present"] and not _copy_remains(state, volume):
            del state.volumes[volume["id"]]
            vm_gone(state, volume, ctx.ts)
            return {"id": volume["id"], "state": "deleted"}
    elif error and now in ("creating", "resizing"):
        volume["error"] = error
        if now == "creating":
            volume["state"], volume["state_since"] = "error", ctx.ts
        else:
            _settle(volume, ctx.ts)
    elif now == "creating" and args["present"]:
        volume["error"] = None
        _settle(volume, ctx.ts)
    elif now == "resizing" and args["present"] and _is_size(args.get("size_bytes"), volume["size_gb"]):
        _settle(volume, ctx.ts)
    follow_volume(state, volume, ctx.ts)
    return {"id": volume["id"], "state": volume["state"]}
