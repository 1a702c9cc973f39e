"""Flavors, images and VMs: what users ask for and what agents report back.

Users change a VM's *desired* state (power, actions); agents report its *observed*
state; the lifecycle state (``cloudd.model.vm``) moves only along allowed transitions,
and a user action that would take a forbidden one is a 409 naming the current state.
"""

from __future__ import annotations

import re
from typing import Any

from cloudd.alloc.cpu import common_model, compatible
from cloudd.alloc.placement import AllocSettings, demand_of, eligible, fits, largest_possible, used
from cloudd.commands.common import NODE_NAME, OBJECT_ID, USER_NAME, get_node, require_initialized
from cloudd.commands.keypairs import MAX_PUBLIC_KEY, public_key_problem
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.commands.alloc import shared_vm_storage
from cloudd.commands.networks import MAC_RE, MAX_PORTS_PER_VM, NIC, new_ports, release_vm_ports
from cloudd.commands.pools import Usage, check_quota
from cloudd.model.attachments import released_by, vm_volumes_released
from cloudd.model.state import State
from cloudd.model.tasks import follow_vm, open_task, vm_gone
from cloudd.model.vm import POWER_STATES, move
from cloudd.validate import HOSTNAME_RE, Field

VCPUS = Field("int", min=1, max=256)
RAM_MB = Field("int", min=64, max=4 << 20)
DISK_GB = Field("num", min=1, max=64 << 10)
FLAVOR_NAME = Field("str", pattern=re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$"))
DISK_TARGET_RE = re.compile(r"^(vd|sd)[a-z]{1,2}$")
SWAP_MB = Field("int", min=0, max=64 << 10, required=False)
SSH_KEY = Field("str", max_len=MAX_PUBLIC_KEY, check=public_key_problem)  # as keypairs: one OpenSSH public key line


def get_vm(state: State, vm_id: str) -> dict[str, Any]:
    vm = state.vms.get(vm_id)
    if vm is None:
        raise CloudError("not_found", f"VM {vm_id} not found")
    return vm


def usable_iso(state: State, image_id: str, owner: str) -> dict[str, Any]:
    """The ISO image ``image_id`` if ``owner`` may use it (404 otherwise, 409 not ready)."""
    image = state.images.get(image_id)
    if image is None or not (image["public"] or image["owner"] == owner):
        raise CloudError("not_found", f"image {image_id} not found")
    if image["format"] != "iso":
        raise CloudError("invalid", f"image {image['name']} is {image['format']}, not an ISO")
    if image.get("state", "ready") != "ready":
        raise CloudError("conflict", f"image {image['name']} is {image['state']}, not ready", {"state": image["state"]})
    return image


@command("flavor.create", {"name": FLAVOR_NAME, "vcpus": VCPUS, "ram_mb": RAM_MB, "disk_gb": DISK_GB})
def flavor_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Define a named size."""
    require_initialized(state)
    if args["name"] in state.flavors:
        raise CloudError("conflict", f"flavor {args['name']} already exists")
    state.flavors[args["name"]] = {**args, "created_at": ctx.ts}
    return dict(state.flavors[args["name"]])


@command("flavor.delete", {"name": FLAVOR_NAME})
def flavor_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Remove a flavor; VMs created from it keep their sizes."""
    if args["name"] not in state.flavors:
        raise CloudError("not_found", f"flavor {args['name']} not found")
    del state.flavors[args["name"]]
    return {"name": args["name"]}


@command(
    "vm.create",
    {
        "id": OBJECT_ID,
        "name": Field("str", pattern=HOSTNAME_RE),
        "owner": USER_NAME,
        "flavor": Field("str", max_len=64, required=False),
        "vcpus": Field("int", min=1, max=1 << 20, required=False),
        "ram_mb": Field("int", min=64, max=1 << 40, required=False),
        "disk_gb": Field("num", min=1, max=1 << 40, required=False),
        "image": Field("str", pattern=OBJECT_ID.pattern, nullable=True, required=False),
        "power": Field("str", choices=("running", "stopped"), required=False),
        "ha": Field("bool", required=False),
        "ha_priority": Field("int", min=0, max=100, required=False),
        "ssh_keys": Field("list", max_len=16, item=SSH_KEY, required=False),
        "user_data": Field("str", max_len=64 << 10, required=False),
        "vnc_password": Field("str", pattern=re.compile(r"^[A-Za-z0-9]{8}$"), required=False),
        "swap_mb": SWAP_MB,
        "iso": Field("str", pattern=OBJECT_ID.pattern, required=False),
        "networks": Field("list", max_len=MAX_PORTS_PER_VM, item=NIC, required=False),
        "group": Field("str", pattern=re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$"), required=False),  # anti-affinity
        "nodes": Field("list", max_len=64, item=NODE_NAME, required=False),  # pinned: only these nodes
    },
    target="id",
    volatile=("vnc_password",),
)
def vm_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Accept a VM; the leader places it, the node's agent creates it."""
    require_initialized(state)
    if args["id"] in state.vms:
        raise CloudError("conflict", f"VM {args['id']} already exists")
    if args["owner"] not in state.users:
        raise CloudError("not_found", f"user {args['owner']} not found")
    if any(vm["name"] == args["name"] and vm["owner"] == args["owner"] for vm in state.vms.values()):
        raise CloudError("conflict", f"you already have a VM named {args['name']}")
    sizes = {}
    if "flavor" in args:
        flavor = state.flavors.get(args["flavor"])
        if flavor is None:
            raise CloudError("not_found", f"flavor {args['flavor']} not found")
        sizes = {k: flavor[k] for k in ("vcpus", "ram_mb", "disk_gb")}
    for key in ("vcpus", "ram_mb", "disk_gb"):
        if key in args:
            sizes[key] = args[key]
        if key not in sizes:
            raise CloudError("invalid", f"give a flavor or {key}", {"field": key})
    image = None
    if "image" not in args and not args.get("iso") and state.cluster.get("default_image"):
        args = {**args, "image": state.cluster["default_image"]}
    if args.get("image"):
        image = state.images.get(args["image"])
        if image is None or not (image["public"] or image["owner"] == args["owner"]):
            raise CloudError("not_found", f"image {args['image']} not found")
        if sizes["disk_gb"] < max(image["min_disk_gb"], image["size_gb"]):
            raise CloudError("invalid", f"image {image['name']} needs a disk of at least {max(image['min_disk_gb'], image['size_gb']):g} GB")
        if sizes["ram_mb"] < image["min_ram_mb"]:
            raise CloudError("invalid", f"image {image['name']} needs at least {image['min_ram_mb']} MiB of RAM")
    if image is not None and image["format"] == "iso":
        raise CloudError("invalid", f"image {image['name']} is an ISO: give it as iso, with a blank disk")
    if image is not None and image.get("state", "ready") != "ready":
        raise CloudError("conflict", f"image {image['name']} is {image['state']}, not ready", {"state": image["state"]})
    if args.get("iso"):
        usable_iso(state, args["iso"], args["owner"])
    if args.get("ha") and not shared_vm_storage(state):
        raise CloudError(
            "invalid",
            "ha needs the VM's disks on shared storage, and this cluster keeps them on each node: a VM whose node dies "
            "cannot be restarted elsewhere without them (an admin sets shared_vm_storage when the VM directory is shared, e.g. NFS)",
            {"field": "ha"},
        )
    unknown = [n for n in args.get("nodes", []) if n not in state.nodes]
    if unknown:
        raise CloudError("not_found", f"nodes {', '.join(unknown)} not found", {"field": "nodes"})
    total_disk = sizes["disk_gb"] + args.get("swap_mb", 0) / 1024
    check_quota(state, args["owner"], Usage(sizes["vcpus"], sizes["ram_mb"], total_disk, 1, 0))
    biggest = largest_possible(state.nodes, AllocSettings.from_state(state.cluster))
    for key, want, have in (("vcpus", sizes["vcpus"], biggest.vcpus), ("ram_mb", sizes["ram_mb"], biggest.ram_mb), ("disk_gb", total_disk, biggest.disk_gb)):
        if want > have:
            raise CloudError("invalid", f"{key}={want:g} is more than any hypervisor has ({have:g})", {"field": key})
    vm = {
        "id": args["id"],
        "name": args["name"],
        "owner": args["owner"],
        "flavor": args.get("flavor"),
        **sizes,
        "image": args.get("image"),
        "iso": args.get("iso"),
        "swap_mb": args.get("swap_mb", 0),
        "disks": [],
        "ha": args.get("ha", False),
        "placement": {"group": args.get("group"), "nodes": sorted(set(args.get("nodes", [])))},
        "ha_priority": args.get("ha_priority", 0),
        "ssh_keys": args.get("ssh_keys", []),
        "user_data": args.get("user_data"),
        "vnc_password": args.get("vnc_password"),
        "node": None,
        "state": "pending",
        "state_since": ctx.ts,
        "state_reason": None,
        "desired": {"power": args.get("power", "running"), "action": None, "action_seq": 0, "stop_mode": "clean"},
        "observed": {"power": None, "ts": None, "error": None, "vnc_port": None},
        "error": None,
        "created_at": ctx.ts,
        "tasks": [],
    }
    ports = new_ports(state, ctx, vm, args.get("networks", []), 0)
    vm["ports"] = [port["id"] for port in ports]
    vm["nic_seq"] = len(ports)
    state.add_vm(vm)
    for port in ports:
        state.ports[port["id"]] = port
    task = open_task(state, ctx, "vm.create", vm, power=vm["desired"]["power"])
    return {"id": vm["id"], "name": vm["name"], "state": vm["state"], "task": dict(task)}


def refusal(state: State, node: dict[str, Any], vm: dict[str, Any]) -> str | None:
    """Why ``node`` cannot take ``vm`` now (None: it can), checked inside apply: the node's
    role and status, the VM's pinning, anti-affinity group and CPU model, and room (the
    VM's own room, held on a migration's target, is not counted against it)."""
    placement = vm.get("placement") or {}
    if placement.get("nodes") and node["name"] not in placement["nodes"]:
        return f"the VM is pinned to {', '.join(placement['nodes'])}"
    group = placement.get("group")
    if group and any(
        other["id"] != vm["id"] and (other.get("placement") or {}).get("group") == group
        and node["name"] in (other.get("node"), (other.get("migration") or {}).get("target"))
        for other in state.vms.values()
    ):
        return f"holds a VM of anti-affinity group {group}"
    return (
        eligible(node)
        or cpu_refusal(vm.get("cpu_model"), node)
        or fits(node, demand_of(vm), used(node["name"], state.vms.values(), exclude=vm["id"]), AllocSettings.from_state(state.cluster))
    )


def cpu_refusal(cpu_model: str | None, node: dict[str, Any]) -> str | None:
    """None when the node runs ``cpu_model`` (or cannot tell which models it runs)."""
    return compatible(cpu_model, (node.get("compute") or {}).get("cpu_models") or [])


def group_cpu_model(state: State, vm: dict[str, Any]) -> str | None:
    """The CPU model the VM gets: the best one every hypervisor it may run on offers (its
    pinned nodes, else all), so it can move between them; None when some cannot tell."""
    allowed = (vm.get("placement") or {}).get("nodes") or [n for n, node in state.nodes.items() if "hypervisor" in node.get("roles", [])]
    models = {name: (state.nodes[name].get("compute") or {}).get("cpu_models") or [] for name in allowed if name in state.nodes}
    return common_model(models) if models else None


@command("vm.place", {"id": OBJECT_ID, "node": NODE_NAME}, target="id")
def vm_place(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The leader assigns a pending VM to a node with room (checked again here)."""
    vm = get_vm(state, args["id"])
    node = get_node(state, args["node"])
    if vm["state"] != "pending":
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}, not pending", {"state": vm["state"]})
    reason = refusal(state, node, vm)
    if reason:
        raise CloudError("conflict", f"node {node['name']} cannot take VM {vm['name']}: {reason}")
    vm["node"] = node["name"]
    if "cpu_model" not in vm:
        vm["cpu_model"] = group_cpu_model(state, vm)
    move(vm, "creating", ctx.ts, f"placed on {node['name']}")
    follow_vm(state, vm, ctx.ts)
    return {"id": vm["id"], "node": vm["node"], "state": vm["state"]}


@command("vm.unplaceable", {"id": OBJECT_ID, "reason": Field("str", max_len=500)}, target="id")
def vm_unplaceable(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The leader found no node for a pending VM; it stays pending with the reason."""
    vm = get_vm(state, args["id"])
    if vm["state"] != "pending":
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}, not pending", {"state": vm["state"]})
    vm["state_reason"] = args["reason"]
    follow_vm(state, vm, ctx.ts)
    return {"id": vm["id"], "reason": args["reason"]}


def _power_change(vm: dict[str, Any], power: str, ts: float) -> None:
    vm["desired"]["power"] = power
    if vm["state"] in ("pending", "creating"):
        return  # applied when the VM is created
    if power == "running":
        if vm["state"] in ("running", "starting"):
            return
        move(vm, "starting", ts, "start requested")
    else:
        if vm["state"] in ("stopped", "stopping"):
            return
        move(vm, "stopping", ts, f"{vm['desired']['stop_mode']} stop requested")


@command("vm.start", {"id": OBJECT_ID}, target="id")
def vm_start(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Ask for the VM to run (a no-op when it already runs)."""
    vm = get_vm(state, args["id"])
    if vm["state"] in ("deleting", "migrating"):
        move(vm, "starting", ctx.ts)  # raises the 409
    _power_change(vm, "running", ctx.ts)
    vm["error"] = None
    task = open_task(state, ctx, "vm.start", vm)
    return {"id": vm["id"], "state": vm["state"], "task": dict(task)}


def _stop(state: State, ctx: Context, args: dict[str, Any], mode: str) -> dict[str, Any]:
    vm = get_vm(state, args["id"])
    if vm["state"] in ("deleting", "migrating"):
        move(vm, "stopping", ctx.ts)  # raises the 409
    vm["desired"]["stop_mode"] = mode
    _power_change(vm, "stopped", ctx.ts)
    task = open_task(state, ctx, "vm.stop" if mode == "force" else "vm.shutdown", vm)
    return {"id": vm["id"], "state": vm["state"], "task": dict(task)}


@command("vm.shutdown", {"id": OBJECT_ID}, target="id")
def vm_shutdown(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Clean shutdown: ACPI power button, forced off after the node's timeout."""
    return _stop(state, ctx, args, "clean")


@command("vm.stop", {"id": OBJECT_ID}, target="id")
def vm_stop(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Force off at once (like pulling the plug)."""
    return _stop(state, ctx, args, "force")


def _action(state: State, ctx: Context, args: dict[str, Any], action: str) -> dict[str, Any]:
    vm = get_vm(state, args["id"])
    if vm["state"] != "running":
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: {action} needs it running", {"state": vm["state"]})
    vm["desired"]["action"] = action
    vm["desired"]["action_seq"] += 1
    task = open_task(state, ctx, f"vm.{action}", vm, action_seq=vm["desired"]["action_seq"])
    return {"id": vm["id"], "action": action, "action_seq": vm["desired"]["action_seq"], "task": dict(task)}


@command("vm.reset", {"id": OBJECT_ID}, target="id")
def vm_reset(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Hard reset (the reset button)."""
    return _action(state, ctx, args, "reset")


@command("vm.reboot", {"id": OBJECT_ID}, target="id")
def vm_reboot(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Ask the guest to reboot (ACPI)."""
    return _action(state, ctx, args, "reboot")


@command("vm.delete", {"id": OBJECT_ID}, target="id")
def vm_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Delete the VM: at once when never placed, else through its node's agent."""
    vm = get_vm(state, args["id"])
    if vm["state"] == "pending":
        task = open_task(state, ctx, "vm.delete", vm)
        state.remove_vm(vm["id"])
        vm_gone(state, vm, ctx.ts)
        vm_volumes_released(state, vm, ctx.ts)
        release_vm_ports(state, vm)
        return {"id": vm["id"], "state": "deleted", "task": dict(task)}
    move(vm, "deleting", ctx.ts, "delete requested")
    task = open_task(state, ctx, "vm.delete", vm)
    return {"id": vm["id"], "state": vm["state"], "task": dict(task)}


@command(
    "vm.report",
    {
        "id": OBJECT_ID,
        "node": NODE_NAME,
        "power": Field("str", choices=POWER_STATES),
        "error": Field("str", max_len=1000, nullable=True, required=False),
        "vnc_port": Field("int", min=0, max=65535, nullable=True, required=False),
        "action_seq": Field("int", min=0, required=False),
        "disks": Field("list", max_len=32, item=Field("str", pattern=DISK_TARGET_RE), required=False),
        "nics": Field("list", max_len=32, item=Field("str", pattern=MAC_RE), required=False),  # MACs plugged in now
        # a disk or ISO change that failed: shown, but the VM keeps its lifecycle state
        "device_error": Field("str", max_len=1000, nullable=True, required=False),
        "usage": Field(
            "obj",
            required=False,
            spec={
                "cpu_pct": Field("num", min=0, max=1e6),
                "ram_used_mb": Field("num", min=0, max=1 << 40),
                "disk_read_bytes": Field("num", min=0, required=False),
                "disk_write_bytes": Field("num", min=0, required=False),
            },
        ),
    },
    target="id",
    audit=False,
    remember=False,
)
def vm_report(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """An agent reports what its host shows; the lifecycle follows the report."""
    vm = get_vm(state, args["id"])
    if vm["node"] != args["node"]:
        raise CloudError("conflict", f"VM {vm['name']} is assigned to {vm['node']}, not {args['node']}")
    power, error = args["power"], args.get("error")
    vm["observed"] = {
        "power": power,
        "ts": ctx.ts,
        "error": error,
        "vnc_port": args.get("vnc_port"),
        "disks": args.get("disks", []),
        "nics": args.get("nics", []),
        "device_error": args.get("device_error"),
    }
    if "usage" in args:
        vm["usage"] = {**args["usage"], "ts": ctx.ts}
    elif power != "running":
        vm["usage"] = None
    if args.get("action_seq") is not None and args["action_seq"] >= vm["desired"]["action_seq"]:
        vm["desired"]["action"] = None
    now = vm["state"]
    if vm.get("migration"):
        # the migration's own steps move the lifecycle; a report only records what the node sees
        follow_vm(state, vm, ctx.ts)
        return {"id": vm["id"], "state": now, "desired": dict(vm["desired"])}
    if vm.get("failover_waiting") and not error:
        # an HA VM that found no room elsewhere: its own node is back, so it is managed again
        vm["failover_waiting"] = False
        vm["error"] = None
        move(vm, "running" if power == "running" else "stopped", ctx.ts, "its node is back")
        now = vm["state"]
    if now == "deleting":
        if power == "absent":
            state.remove_vm(vm["id"])
            vm_gone(state, vm, ctx.ts)
            vm_volumes_released(state, vm, ctx.ts)
            release_vm_ports(state, vm)
            return {"id": args["id"], "state": "deleted"}
        return {"id": vm["id"], "state": now}
    if error:
        vm["error"] = error
        move(vm, "error", ctx.ts, error[:200])
    elif power == "running" and now in ("creating", "starting", "error", "stopped"):
        move(vm, "running", ctx.ts, "reported running")
    elif power in ("shut_off", "crashed") and (
        now in ("stopping", "running") or (now == "creating" and vm["desired"]["power"] == "stopped")
    ):
        move(vm, "stopped", ctx.ts, f"reported {power}")
    if not error and vm["state"] != "error":
        vm["error"] = None
    follow_vm(state, vm, ctx.ts)
    released_by(state, vm, ctx.ts)
    return {"id": vm["id"], "state": vm["state"], "desired": dict(vm["desired"])}
