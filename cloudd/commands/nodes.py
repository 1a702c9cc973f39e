"""Node commands: inventory registration, lease renewal, status and maintenance."""

from __future__ import annotations

import re
from typing import Any

from cloudd.alloc.snapshot import HISTORY_EVERY_S, HISTORY_MAX
from cloudd.commands.cluster import ROLES
from cloudd.commands.common import NODE_NAME, get_node, require_initialized
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.moves import DRAIN_MODES
from cloudd.model.state import State
from cloudd.validate import ADDRESS_RE, Field

STATUSES = ("up", "suspect", "down", "maintenance")
CPU_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def no_control_chars(value: str) -> str | None:
    return "must not contain control characters or spaces" if any(ord(c) <= 32 or ord(c) == 127 for c in value) else None


FACT = Field("any", check=lambda v: None if isinstance(v, (str, int, float, bool)) else "must be a scalar")

INVENTORY = {
    "cpus": Field("int", min=1, max=4096),
    "ram_mb": Field("int", min=1, max=1 << 30),
    "disk_gb": Field("num", min=0, max=1 << 30),
    "facts": Field("dict", required=False, max_len=64, item=FACT),
}

USAGE = {
    "cpu_pct": Field("num", min=0, max=100_000, required=False),
    "ram_used_mb": Field("int", min=0, max=1 << 30, required=False),
    "disk_used_gb": Field("num", min=0, max=1 << 30, required=False),
    "load1": Field("num", min=0, max=1 << 20, required=False),
}


@command(
    "node.register",
    {
        "name": NODE_NAME,
        "roles": Field("list", max_len=len(ROLES), item=Field("str", choices=ROLES)),
        "inventory": Field("obj", spec=INVENTORY),
        "version": Field("str", max_len=32, required=False),
        "storage": Field("obj", required=False, spec={"export": Field("str", choices=("tgt", "lio", "none")), "portal": Field("str", pattern=ADDRESS_RE)}),
        # where other hypervisors send this node's VXLAN traffic (underlay address:UDP port)
        "network": Field("obj", required=False, spec={"underlay": Field("str", pattern=ADDRESS_RE)}),
        # a hypervisor's CPU models and how other nodes' libvirt reaches its own (live migration)
        "compute": Field("obj", required=False, spec={
            "cpu_models": Field("list", max_len=256, item=Field("str", pattern=CPU_MODEL_RE)),
            "live_migration": Field("bool"),
            "migration_uri": Field("str", max_len=300, nullable=True, check=no_control_chars),
            "migrate_uri": Field("str", max_len=300, nullable=True, check=no_control_chars),
            "tunnelled": Field("bool", required=False),
            "tls": Field("bool", required=False),
        }),
    },
)
def node_register(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """An admitted node reports its roles and inventory (at every start)."""
    require_initialized(state)
    node = get_node(state, args["name"])
    if len(set(args["roles"])) != len(args["roles"]):
        raise CloudError("invalid", "roles must not repeat")
    node["roles"] = sorted(args["roles"])
    node["inventory"] = args["inventory"]
    node["version"] = args.get("version")
    node["storage"] = args.get("storage")  # where hypervisors reach this node's iSCSI exports
    node["network"] = args.get("network")
    node["compute"] = args.get("compute")
    node["registered_at"] = ctx.ts
    return {"name": node["name"], "lease_seq": node["lease_seq"]}


@command(
    "node.heartbeat",
    {"name": NODE_NAME, "usage": Field("obj", spec=USAGE, required=False)},
    audit=False,
    remember=False,
)
def node_heartbeat(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Renew the node's lease; the leader reads ``lease_seq`` changes on its own clock."""
    node = get_node(state, args["name"])
    node["lease_seq"] += 1
    node["last_heartbeat"] = ctx.ts
    if "usage" in args:
        node["usage"] = args["usage"]
        # a bounded, downsampled history for the trend allocator: [ts, load1, ram, disk]
        history = node.setdefault("usage_history", [])
        if not history or ctx.ts - history[-1][0] >= HISTORY_EVERY_S:
            usage = args["usage"]
            history.append([ctx.ts, usage.get("load1", 0), usage.get("ram_used_mb", 0), usage.get("disk_used_gb", 0)])
            del history[:-HISTORY_MAX]
    return {"lease_seq": node["lease_seq"]}


@command(
    "node.status_set",
    {
        "name": NODE_NAME,
        "status": Field("str", choices=STATUSES),
        "observed_seq": Field("int", min=0),
        "reason": Field("str", max_len=200, required=False),
    },
)
def node_status_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The leader's verdict on a node's liveness.

    ``observed_seq`` is the lease sequence the leader judged; a renewal committed since
    makes the verdict stale, and it is refused rather than marking a live node down.
    """
    node = get_node(state, args["name"])
    if args["status"] in ("suspect", "down") and node["lease_seq"] != args["observed_seq"]:
        raise CloudError("conflict", "the node renewed its lease after this verdict", {"lease_seq": node["lease_seq"]})
    if args["status"] == "maintenance" and not node["maintenance"]:
        raise CloudError("conflict", "the node is not in maintenance")
    if node["status"] != args["status"]:
        node["status"] = args["status"]
        node["status_since"] = ctx.ts
        node["status_reason"] = args.get("reason")
        node["status_seq"] = args["observed_seq"]  # the lease the verdict judged
    return {"name": node["name"], "status": node["status"]}


@command("node.maintenance_set", {"name": NODE_NAME, "enabled": Field("bool"), "drain": Field("str", choices=DRAIN_MODES, required=False)})
def node_maintenance_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """An admin puts a node into maintenance (no new VMs; ``drain``: the leader moves its
    VMs away — ``live`` (default) what can move without downtime, ``all`` everything,
    ``none`` nothing) or takes it out (a drain stops)."""
    node = get_node(state, args["name"])
    node["maintenance"] = args["enabled"]
    node["drain"] = args.get("drain", "live") if args["enabled"] else "none"
    if not args["enabled"] and node["status"] == "maintenance":
        node["status"] = "up"
        node["status_since"] = ctx.ts
    return {"name": node["name"], "maintenance": node["maintenance"], "drain": node["drain"]}
