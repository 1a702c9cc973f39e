"""Migration commands: an admin (or the leader, for drains and rebalancing) moves a VM to
another node; the two nodes' agents advance it step by step (``cloudd.model.migration``).

Everything a migration needs is checked here, inside apply, so a refused request changes
nothing: the target must be an up hypervisor out of maintenance with room, allowed by
the VM's pinning, anti-affinity group and CPU model; the VM must be running or stopped;
a live migration needs a running VM on shared storage and two nodes that can do it; an
offline migration of a running VM needs ``force`` (it shuts the guest down); and the
cluster's limits on concurrent migrations hold.
"""

from __future__ import annotations

from typing import Any

from cloudd.alloc.snapshot import AllocSettings
from cloudd.commands.alloc import shared_vm_storage
from cloudd.commands.common import NODE_NAME, OBJECT_ID, get_node
from cloudd.commands.compute import get_vm, refusal
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.migration import MODES, add_leftover, counts, live_refusal, migration_of
from cloudd.model.state import State
from cloudd.model.tasks import finish_task, follow_vm, open_task, task_id
from cloudd.model.vm import move
from cloudd.validate import Field

MIGRATION_ID = Field("str", pattern=OBJECT_ID.pattern)
REASON = Field("str", max_len=500, required=False)


def check_migration(state: State, vm: dict[str, Any], target_name: str, mode: str, force: bool) -> dict[str, Any]:
    """Everything that must hold for ``vm`` to start moving to ``target_name``; returns the
    target node, raises CloudError (4xx) naming what does not hold."""
    mig = migration_of(vm)
    if mig is not None:
        raise CloudError("conflict", f"VM {vm['name']} is already migrating to {mig['target']} (task {mig['id']})", {"state": vm["state"]})
    if vm["state"] not in ("running", "stopped"):
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: only a running or stopped VM can migrate", {"state": vm["state"]})
    if target_name == vm["node"]:
        raise CloudError("invalid", f"VM {vm['name']} is on {target_name} already: pick another node", {"field": "node"})
    source = get_node(state, vm["node"])
    if source["status"] not in ("up", "maintenance"):
        raise CloudError("conflict", f"node {source['name']} is {source['status']}: a VM of a lost node is recovered by failover, not migrated")
    target = state.nodes.get(target_name)
    if target is None:
        raise CloudError("not_found", f"node {target_name} not found", {"field": "node"})
    reason = refusal(state, target, vm)
    if reason:
        raise CloudError("conflict", f"node {target_name} cannot take VM {vm['name']}: {reason}", {"field": "node"})
    if mode == "live":
        if vm["state"] != "running" or (vm.get("observed") or {}).get("power") != "running":
            raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: a live migration needs it running (migrate it offline)", {"state": vm["state"]})
        if not shared_vm_storage(state):
            raise CloudError(
                "conflict",
                f"VM {vm['name']}'s disks are on {vm['node']}'s own storage: migrate it offline (its disks are copied), "
                "or share the VM directory (shared_vm_storage)",
            )
        why = live_refusal(source) or live_refusal(target)
        if why:
            raise CloudError("conflict", f"{why}: migrate VM {vm['name']} offline")
    elif vm["state"] == "running" and not force:
        raise CloudError(
            "conflict",
            f"VM {vm['name']} is running: an offline migration shuts it down first; give force to allow it (or migrate it live)",
            {"state": vm["state"]},
        )
    settings = AllocSettings.from_state(state.cluster)
    total, per_node = counts(state.vms.values())
    if total >= settings.migrations_per_cluster:
        raise CloudError("conflict", f"{total} migrations are running (the cluster's limit is {settings.migrations_per_cluster}): try again when one ends")
    for name in (source["name"], target_name):
        if per_node.get(name, 0) >= settings.migrations_per_node:
            raise CloudError("conflict", f"node {name} takes part in {per_node[name]} migrations (the limit per node is {settings.migrations_per_node}): try again when one ends")
    return target


@command(
    "vm.migrate",
    {
        "id": OBJECT_ID,
        "node": NODE_NAME,
        "mode": Field("str", choices=MODES),
        "force": Field("bool", required=False),
        "bandwidth_mib_s": Field("int", min=1, max=1 << 20, required=False),
        "max_downtime_ms": Field("int", min=10, max=60_000, required=False),
        "reason": Field("str", max_len=200, required=False),  # why the leader moves it: a drain, a rebalance
        "plan": Field("str", pattern=OBJECT_ID.pattern, required=False),  # the rebalance plan this move belongs to
    },
    target="id",
)
def vm_migrate(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Start moving a VM to another node (see ``cloudd.model.migration`` for the steps)."""
    vm = get_vm(state, args["id"])
    mode = args["mode"]
    check_migration(state, vm, args["node"], mode, bool(args.get("force")))
    plan_move = None
    if "plan" in args:
        plan = state.cluster.get("rebalance") or {}
        plan_move = next((m for m in plan.get("moves", ()) if plan.get("id") == args["plan"] and m["vm"] == vm["id"] and m["to"] == args["node"]), None)
        if plan_move is None or plan_move.get("task"):
            raise CloudError("conflict", f"rebalance plan {args['plan']} has no pending move of VM {vm['name']} to {args['node']}")
    settings = AllocSettings.from_state(state.cluster)
    source = vm["node"]
    vm["migration"] = {
        "id": task_id(ctx),
        "mode": mode,
        "source": vm["node"],
        "target": args["node"],
        "phase": "stopping" if mode == "offline" else "preparing",
        "phase_since": ctx.ts,
        "started_at": ctx.ts,
        "copy": not shared_vm_storage(state),  # the VM directory is node-local: its files move
        "was": vm["state"],
        "cancel": False,
        "bandwidth_mib_s": args.get("bandwidth_mib_s") or settings.migration_bandwidth_mib_s or None,
        "max_downtime_ms": args.get("max_downtime_ms") or settings.migration_max_downtime_ms,
        "reason": args.get("reason"),
    }
    move(vm, "migrating", ctx.ts, f"{mode} migration to {args['node']}" + (f" ({args['reason']})" if args.get("reason") else ""))
    task = open_task(state, ctx, "vm.migrate", vm, mode=mode, source=source, target=args["node"], reason=args.get("reason"))
    if plan_move is not None:
        plan_move["task"] = task["id"]
    return {"id": vm["id"], "state": vm["state"], "migration": dict(vm["migration"]), "task": dict(state.tasks[task["id"]])}


def _running(state: State, vm_id: str, migration_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    vm = get_vm(state, vm_id)
    mig = migration_of(vm)
    if mig is None or mig["id"] != migration_id:
        raise CloudError("conflict", f"VM {vm['name']} has no migration {migration_id} running")
    return vm, mig


def node_role(mig: dict[str, Any], node: str) -> str | None:
    return "source" if node == mig["source"] else "target" if node == mig["target"] else None


def roll_back(state: State, vm: dict[str, Any], ts: float, reason: str) -> None:
    """End a migration before its commit point: the VM stays (or is again) its source's."""
    mig = vm.pop("migration")
    if mig["mode"] == "offline":
        # the source undefined its domain once the guest was down: it defines it again from
        # its files and brings it to its desired power, like a new VM
        move(vm, "creating", ts, f"migration to {mig['target']} ended: {reason}"[:200])
    else:
        move(vm, "running" if (vm.get("observed") or {}).get("power") == "running" else "stopped", ts, f"live migration to {mig['target']} ended: {reason}"[:200])
    add_leftover(vm, mig["target"], local_files=mig["copy"])
    finish_task(state, mig["id"], "failed", f"{reason}; VM {vm['name']} stays on {mig['source']}", ts)
    follow_vm(state, vm, ts)


def _commit(state: State, vm: dict[str, Any], mig: dict[str, Any], ts: float, detail: str) -> None:
    """The commit point: the VM is the target's from now on."""
    del vm["migration"]
    vm["node"] = mig["target"]
    vm["migrated"] = {"from": mig["source"], "to": mig["target"], "mode": mig["mode"], "at": ts}
    add_leftover(vm, mig["source"], local_files=mig["copy"])
    vm.get("leftovers", {}).pop(mig["target"], None)  # an earlier attempt's leftovers there are the VM's now
    if mig["mode"] == "offline":
        vm["observed"] = {"power": None, "ts": None, "error": None, "vnc_port": None, "disks": [], "nics": [], "device_error": None}
        move(vm, "creating", ts, f"moved from {mig['source']}: {detail}")
    else:
        vm["observed"] = {**(vm.get("observed") or {}), "vnc_port": None, "ts": ts}
        move(vm, "running", ts, f"live-migrated from {mig['source']}: {detail}")
    follow_vm(state, vm, ts)


STEPS = {
    # phase reported -> (migration mode, the phase it follows, who may report it)
    "copying": ("offline", ("stopping",), "source"),
    "switched": ("offline", ("copying",), "target"),
    "migrating": ("live", ("preparing",), "target"),
    "landed": ("live", ("migrating",), "either"),
}


@command(
    "vm.migration_step",
    {
        "id": OBJECT_ID,
        "migration": MIGRATION_ID,
        "node": NODE_NAME,
        "phase": Field("str", choices=(*STEPS, "failed")),
        "reason": REASON,
        "downtime_ms": Field("num", min=0, max=1e7, required=False),
        # migrating: the domain the target would define (its bridges, taps, paths), which the
        # source's libvirt gives the migrated guest
        "target_spec": Field("dict", max_len=32, required=False),
    },
    target="id",
)
def vm_migration_step(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """An agent reports that its part of a migration step is done (or that it failed)."""
    vm, mig = _running(state, args["id"], args["migration"])
    node, phase = args["node"], args["phase"]
    if node not in (mig["source"], mig["target"]):
        raise CloudError("forbidden", f"node {node} takes no part in this migration")
    if phase == "failed":
        if mig["mode"] == "live" and mig["phase"] == "migrating" and node != mig["source"]:
            raise CloudError("conflict", "only the source can tell that a running live migration failed")
        roll_back(state, vm, ctx.ts, args.get("reason") or f"node {node} could not go on")
        return {"id": vm["id"], "state": vm["state"], "node": vm["node"]}
    mode, after, who = STEPS[phase]
    if mig["mode"] != mode or mig["phase"] not in after:
        raise CloudError("conflict", f"the {mig['mode']} migration of VM {vm['name']} is {mig['phase']}: it cannot go to {phase}")
    if who != "either" and node != mig[who]:
        raise CloudError("conflict", f"the {who} ({mig[who]}) reports {phase}, not {node}")
    if phase == "switched":
        _commit(state, vm, mig, ctx.ts, f"its disks are on {mig['target']}; starting there")
    elif phase == "landed":
        downtime = args.get("downtime_ms")
        if mig["id"] in state.tasks:
            state.tasks[mig["id"]]["detail"]["downtime_ms"] = downtime
        _commit(state, vm, mig, ctx.ts, "running there" + (f" (downtime {downtime:.0f} ms)" if downtime is not None else ""))
    else:
        if phase == "migrating":
            if not args.get("target_spec"):
                raise CloudError("invalid", "the target's domain (target_spec) is needed to start a live migration")
            mig["target_spec"] = args["target_spec"]
        mig["phase"], mig["phase_since"] = phase, ctx.ts
        follow_vm(state, vm, ctx.ts)
    return {"id": vm["id"], "state": vm["state"], "node": vm["node"], "phase": phase}


@command(
    "vm.migration_progress",
    {
        "id": OBJECT_ID,
        "migration": MIGRATION_ID,
        "node": NODE_NAME,
        "percent": Field("int", min=0, max=100),
        "message": Field("str", max_len=300),
        "started": Field("bool", required=False),  # the source is about to start libvirt's migration
    },
    target="id",
    audit=False,
    remember=False,
)
def vm_migration_progress(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """How far a migration's long step is (copying files, moving memory): into its task."""
    vm, mig = _running(state, args["id"], args["migration"])
    if args["node"] not in (mig["source"], mig["target"]):
        raise CloudError("forbidden", f"node {args['node']} takes no part in this migration")
    if args.get("started"):
        if node_role(mig, args["node"]) != "source" or mig["phase"] != "migrating":
            raise CloudError("conflict", "only the source starts a live migration, once the target is ready")
        mig["started"] = True
    mig["percent"], mig["message"] = args["percent"], args["message"]
    follow_vm(state, vm, ctx.ts)
    return {"id": vm["id"], "percent": args["percent"]}


@command("vm.migration_cancel", {"id": OBJECT_ID, "migration": Field("str", pattern=OBJECT_ID.pattern, required=False), "reason": REASON}, target="id")
def vm_migration_cancel(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Cancel a migration before its commit point: an offline one rolls back at once (the
    source defines the VM again); a running live one is aborted by the source, whose
    guest keeps running."""
    vm = get_vm(state, args["id"])
    mig = migration_of(vm)
    if mig is None or ("migration" in args and mig["id"] != args["migration"]):
        raise CloudError("conflict", f"VM {vm['name']} is not migrating" if mig is None else f"VM {vm['name']} runs another migration ({mig['id']})")
    reason = args.get("reason") or "cancelled by " + (ctx.actor.get("user") or ctx.actor.get("node") or "request")
    if mig["mode"] == "live" and mig["phase"] == "migrating":
        mig["cancel"] = True
        mig["cancel_reason"] = reason
        follow_vm(state, vm, ctx.ts)
        return {"id": vm["id"], "state": vm["state"], "cancel": "asked of the source"}
    roll_back(state, vm, ctx.ts, reason)
    return {"id": vm["id"], "state": vm["state"], "cancel": "rolled back"}


@command("vm.leftovers_cleaned", {"id": OBJECT_ID, "node": NODE_NAME}, target="id", audit=False)
def vm_leftovers_cleaned(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A node removed what it held of a VM that moved (or did not come) to it."""
    vm = get_vm(state, args["id"])
    if args["node"] == vm["node"]:
        raise CloudError("conflict", f"VM {vm['name']} is on {args['node']}: nothing there is a leftover")
    leftovers = vm.get("leftovers") or {}
    leftovers.pop(args["node"], None)
    if not leftovers:
        vm.pop("leftovers", None)
    return {"id": vm["id"], "leftovers": sorted(leftovers)}


MOVE = Field("obj", spec={"vm": OBJECT_ID, "from": NODE_NAME, "to": NODE_NAME})


@command(
    "cluster.rebalance_set",
    {"id": OBJECT_ID, "moves": Field("list", max_len=1000, item=MOVE), "auto": Field("bool", required=False), "replace": Field("bool", required=False)},
    target="id",
)
def cluster_rebalance_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Hand the leader a rebalance plan to execute move by move (as migrations). A plan
    still running is replaced only with ``replace`` (its running migrations go on)."""
    from cloudd.moves import plan_finished, rebalance_status

    current = state.cluster.get("rebalance")
    if current and not args.get("replace") and not plan_finished(current, state.vms, state.tasks):
        raise CloudError("conflict", f"rebalance plan {current['id']} is still running: wait for it, or replace it", {"plan": current["id"]})
    for move in args["moves"]:
        vm = get_vm(state, move["vm"])
        if vm["node"] != move["from"]:
            raise CloudError("conflict", f"VM {vm['name']} is on {vm['node']}, not {move['from']}: plan again")
        get_node(state, move["to"])
    if len({m["vm"] for m in args["moves"]}) != len(args["moves"]):
        raise CloudError("invalid", "a plan moves each VM once")
    state.cluster["rebalance"] = {
        "id": args["id"], "moves": [dict(m) for m in args["moves"]], "auto": bool(args.get("auto")), "created_at": ctx.ts,
        "by": ctx.actor.get("user") or ctx.actor.get("node"),
    }
    return {"id": args["id"], "moves": rebalance_status(state.cluster["rebalance"], state.vms, state.tasks)}
