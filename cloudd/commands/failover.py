"""Failover commands, proposed by the leader only after the safety rule held (DESIGN.md):
the node's lease has been stale for longer than ``fence_after`` plus a margin on the
leader's own clock, so the node (or its fence guard) has destroyed its VMs by then.

Each carries the lease sequence the leader judged: a node that renewed its lease since is
alive, and the command is refused rather than starting a second copy of its VMs.
"""

from __future__ import annotations

import re
from typing import Any

from cloudd.commands.common import NODE_NAME, OBJECT_ID, get_node, require_initialized
from cloudd.commands.compute import refusal
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.model.migration import add_leftover
from cloudd.model.tasks import finish_task, follow_vm, open_task
from cloudd.model.vm import move
from cloudd.validate import Field

ALERT_KEY = Field("str", pattern=re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}$"))


def _vm(state: State, vm_id: str) -> dict[str, Any]:
    vm = state.vms.get(vm_id)
    if vm is None:
        raise CloudError("not_found", f"VM {vm_id} not found")
    return vm


def never_ran(vm: dict[str, Any]) -> bool:
    """A VM placed on a node that never reported it: nothing of it can be running there,
    so it may be placed elsewhere like an HA VM."""
    return vm["state"] == "creating" and not (vm.get("observed") or {}).get("power")


def _lost(state: State, name: str, observed_seq: int) -> dict[str, Any]:
    node = get_node(state, name)
    if node["lease_seq"] != observed_seq:
        raise CloudError("conflict", f"node {name} renewed its lease since the leader judged it", {"lease_seq": node["lease_seq"]})
    if node["status"] != "down":
        raise CloudError("conflict", f"node {name} is {node['status']}, not down", {"status": node["status"]})
    return node


@command("vm.failover", {"id": OBJECT_ID, "from_node": NODE_NAME, "node": NODE_NAME, "observed_seq": Field("int", min=0)}, target="id")
def vm_failover(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Re-home an HA VM of a lost node: its node's agent defines it again (its disks are on
    shared storage) and brings it to its desired power state."""
    vm = _vm(state, args["id"])
    if vm["node"] != args["from_node"]:
        raise CloudError("conflict", f"VM {vm['name']} is on {vm['node']}, not {args['from_node']}")
    mig = vm.get("migration")
    live_target = mig["target"] if mig and mig["mode"] == "live" and mig["phase"] == "migrating" else None
    if not (vm.get("ha") or never_ran(vm) or live_target):
        raise CloudError("conflict", f"VM {vm['name']} is not HA")
    if live_target and args["node"] != live_target:
        raise CloudError("conflict", f"VM {vm['name']} was live-migrating to {live_target} and may run there: it can be recovered only there")
    if vm["state"] in ("deleting", "pending"):
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}", {"state": vm["state"]})
    _lost(state, args["from_node"], args["observed_seq"])
    target = get_node(state, args["node"])
    reason = refusal(state, target, vm)
    if reason:
        raise CloudError("conflict", f"node {target['name']} cannot take VM {vm['name']}: {reason}")
    if mig:
        vm.pop("migration")
        finish_task(state, mig["id"], "failed", f"node {args['from_node']} was lost during the migration; the VM is recovered on {target['name']}", ctx.ts)
        if mig["target"] != target["name"]:
            add_leftover(vm, mig["target"], local_files=mig["copy"])
    vm["node"] = target["name"]
    vm["error"] = None
    vm["failover_waiting"] = False
    vm["observed"] = {"power": None, "ts": None, "error": None, "vnc_port": None, "disks": [], "nics": [], "device_error": None}
    vm["recovered"] = {"from": args["from_node"], "to": target["name"], "at": ctx.ts}
    move(vm, "creating", ctx.ts, f"recovered from {args['from_node']} (its lease went stale)")
    task = open_task(state, ctx, "vm.failover", vm, from_node=args["from_node"], node=target["name"], power=vm["desired"]["power"])
    follow_vm(state, vm, ctx.ts)
    return {"id": vm["id"], "node": vm["node"], "state": vm["state"], "task": dict(task)}


@command("vm.failover_waiting", {"id": OBJECT_ID, "from_node": NODE_NAME, "reason": Field("str", max_len=500)}, target="id")
def vm_failover_waiting(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """An HA VM of a lost node found no room elsewhere: it is in error with the reason
    (the leader tries again on every pass, and re-homes it once a node has room)."""
    vm = _vm(state, args["id"])
    if vm["node"] != args["from_node"]:
        raise CloudError("conflict", f"VM {vm['name']} is on {vm['node']}, not {args['from_node']}")
    vm["error"] = args["reason"]
    vm["failover_waiting"] = True  # cleared when its own node reports it again, or it moves
    if vm["state"] != "error":
        move(vm, "error", ctx.ts, args["reason"][:200])
    else:
        vm["state_reason"] = args["reason"][:200]
    follow_vm(state, vm, ctx.ts)
    return {"id": vm["id"], "state": vm["state"], "reason": args["reason"]}


@command("cluster.alert_set", {"key": ALERT_KEY, "message": Field("str", max_len=500, nullable=True)}, target="key")
def cluster_alert_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Raise (message) or clear (null) a cluster alert, e.g. the fencing-storm guard's."""
    require_initialized(state)
    alerts = state.cluster.setdefault("alerts", {})
    if args["message"] is None:
        alerts.pop(args["key"], None)
    elif (alerts.get(args["key"]) or {}).get("message") != args["message"]:
        alerts[args["key"]] = {"message": args["message"], "since": (alerts.get(args["key"]) or {}).get("since", ctx.ts)}
    return {"key": args["key"], "alerts": dict(alerts)}
