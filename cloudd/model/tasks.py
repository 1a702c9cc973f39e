"""Tasks: the progress and outcome of a long operation on a VM.

Every command that asks a node to do something (create, power actions, delete, device
changes, resize) opens a task in the replicated state. The task follows its VM: each
change of the VM (placement, an agent's report, a newer request) re-evaluates the VM's
open tasks here, deterministically, inside ``apply``. A task ends ``succeeded``,
``failed`` (with the reason) or ``superseded`` (a newer request replaced what it asked,
e.g. a stop while a start was still under way).

A VM keeps the ids of its open tasks in ``vm["tasks"]``, so a report only looks at those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudd.model.state import State

if TYPE_CHECKING:
    from cloudd.commands.registry import Context

TASK_RETENTION = 10_000
TRIM_BATCH = 1_000
FINAL = ("succeeded", "failed", "superseded")
POWER_OPS = ("vm.create", "vm.start", "vm.stop", "vm.shutdown", "vm.failover")
# power requests that replace each other: the older one is superseded
POWER_TARGET = {"vm.start": "running", "vm.stop": "stopped", "vm.shutdown": "stopped"}


def task_id(ctx: "Context") -> str:
    """One task per log entry: its index names it, on every replica alike."""
    return f"t{ctx.index}"


def open_task(state: State, ctx: "Context", op: str, vm: dict[str, Any], **detail: Any) -> dict[str, Any]:
    """Open a task for ``op`` on ``vm`` (or, for ``volume.*`` ops, on a volume) and
    evaluate it once (it may be done already)."""
    volume_op = op.startswith("volume.")
    task: dict[str, Any] = {
        "id": task_id(ctx),
        "op": op,
        "vm": None if volume_op else vm["id"],
        "vm_name": None if volume_op else vm["name"],
        "volume": vm["id"] if volume_op else None,
        "volume_name": vm["name"] if volume_op else None,
        "owner": vm["owner"],
        "requested_by": {k: v for k, v in ctx.actor.items() if k in ("user", "node")},
        "state": "running",
        "progress": 0,
        "message": "accepted",
        "detail": detail,
        "created_at": ctx.ts,
        "updated_at": ctx.ts,
        "finished_at": None,
    }
    for other in _open(state, vm):
        # a stop while a start (or a create that would start it) runs, and vice versa
        other_target = POWER_TARGET.get(other["op"], other["detail"].get("power"))
        if op in POWER_TARGET and other_target is not None and other_target != POWER_TARGET[op]:
            _finish(other, "superseded", f"replaced by {op} ({task['id']})", ctx.ts)
    state.tasks[task["id"]] = task
    vm["tasks"] = [t["id"] for t in _open(state, vm)] + [task["id"]]
    _trim(state)
    if volume_op:
        follow_volume(state, vm, ctx.ts)
    else:
        follow_vm(state, vm, ctx.ts)
    return task


def _open(state: State, vm: dict[str, Any]) -> list[dict[str, Any]]:
    return [state.tasks[t] for t in vm.get("tasks", ()) if t in state.tasks and state.tasks[t]["state"] == "running"]


def _finish(task: dict[str, Any], outcome: str, message: str, ts: float) -> None:
    task["state"] = outcome
    task["message"] = message
    task["updated_at"] = task["finished_at"] = ts
    if outcome == "succeeded":
        task["progress"] = 100


def finish_task(state: State, task_id: str, outcome: str, message: str, ts: float) -> None:
    """End one task explicitly (a migration rolled back, say); no-op when it ended already."""
    task = state.tasks.get(task_id)
    if task is not None and task["state"] == "running":
        _finish(task, outcome, message, ts)


def _progress(task: dict[str, Any], progress: int, message: str, ts: float) -> None:
    if (task["progress"], task["message"]) != (progress, message):
        task["progress"], task["message"], task["updated_at"] = progress, message, ts


def follow_vm(state: State, vm: dict[str, Any], ts: float) -> None:
    """Re-evaluate the VM's open tasks after any change of the VM."""
    if not vm.get("tasks"):
        return
    for task in _open(state, vm):
        _evaluate(task, vm, ts)
    vm["tasks"] = [t["id"] for t in _open(state, vm)]


def follow_volume(state: State, volume: dict[str, Any], ts: float) -> None:
    """Re-evaluate a volume's open tasks after any change of the volume."""
    if not volume.get("tasks"):
        return
    for task in _open(state, volume):
        _evaluate_volume(task, volume, ts)
    volume["tasks"] = [t["id"] for t in _open(state, volume)]


def _evaluate_volume(task: dict[str, Any], volume: dict[str, Any], ts: float) -> None:
    op, now = task["op"], volume["state"]
    node = volume.get("node") or "its storage node"
    if op == "volume.delete":
        _progress(task, 50, f"deleting on {node}", ts)
    elif now == "error":
        _finish(task, "failed", volume.get("error") or "the volume is in error", ts)
    elif op == "volume.create":
        if now in ("available", "attached", "detaching"):
            _finish(task, "succeeded", now, ts)
        else:
            _progress(task, 30, f"creating on {node}", ts)
    elif op == "volume.resize":
        if now != "resizing":
            _finish(task, "succeeded", f"{volume['size_gb']:g} GB", ts)
        else:
            _progress(task, 50, f"resizing on {node}", ts)
    elif op == "volume.detach":
        if volume.get("attached_to") is None and now != "detaching":
            _finish(task, "succeeded", "detached", ts)
        else:
            _progress(task, 50, "waiting for the guest to let go", ts)
    else:  # volume.attach: the VM's own device handling shows it
        _finish(task, "succeeded", "recorded; plugged in by the VM's node", ts)


def vm_gone(state: State, vm: dict[str, Any], ts: float) -> None:
    """The VM (or volume) was removed from the state: its delete succeeded, anything else cannot."""
    for task in _open(state, vm):
        if task["op"] in ("vm.delete", "volume.delete"):
            _finish(task, "succeeded", "deleted", ts)
        else:
            _finish(task, "superseded", "the VM was deleted", ts)
    vm["tasks"] = []


def _evaluate(task: dict[str, Any], vm: dict[str, Any], ts: float) -> None:
    op, state = task["op"], vm["state"]
    if op == "vm.delete":
        _progress(task, 50, "removing from its node", ts)
        return
    if state == "deleting":
        _finish(task, "superseded", "the VM is being deleted", ts)
        return
    if op == "vm.migrate":
        _evaluate_migration(task, vm, ts)
        return
    if state == "error" and op in (*POWER_OPS, "vm.reset", "vm.reboot"):
        _finish(task, "failed", vm.get("error") or vm.get("state_reason") or "the VM is in error", ts)
        return
    if op in POWER_OPS:
        want = "running" if op == "vm.start" else "stopped" if op in ("vm.stop", "vm.shutdown") else vm["desired"]["power"]
        if state == want:
            _finish(task, "succeeded", f"{state}", ts)
        elif state == "pending":
            _progress(task, 10, vm.get("state_reason") or "waiting for a node", ts)
        elif state == "creating":
            _progress(task, 40, f"creating on {vm['node']}", ts)
        else:
            _progress(task, 70, f"{state} on {vm['node']}", ts)
        return
    if op in ("vm.reset", "vm.reboot"):
        seq = task["detail"].get("action_seq", 0)
        if vm["desired"]["action_seq"] > seq:
            _finish(task, "superseded", "a newer reset or reboot was asked", ts)
        elif vm["desired"]["action"] is None:
            _finish(task, "succeeded", "done", ts)
        elif state != "running":
            _finish(task, "failed", f"the VM is {state}", ts)
        else:
            _progress(task, 50, f"asked on {vm['node']}", ts)
        return
    if op in ("vm.disk.add", "vm.disk.remove", "vm.iso.attach", "vm.iso.detach", "vm.volume.attach", "vm.volume.detach", "vm.nic.attach", "vm.nic.detach"):
        _evaluate_device(task, vm, ts)
        return
    _finish(task, "succeeded", "recorded; applied at the next start", ts)


MIGRATION_STEPS = {
    "stopping": (5, "shutting the guest down on {source}"),
    "copying": (20, "copying its disks from {source} to {target}"),
    "preparing": (5, "preparing {target}"),
    "migrating": (10, "moving its memory to {target}"),
}


def _evaluate_migration(task: dict[str, Any], vm: dict[str, Any], ts: float) -> None:
    """Before the commit point the migration record tells; after it, the VM on the target
    does: done once it reaches its desired power there."""
    detail = task["detail"]
    mig = vm.get("migration")
    if mig is not None and mig["id"] == task["id"]:
        base, text = MIGRATION_STEPS[mig["phase"]]
        message = text.format(**mig)
        percent = base
        if mig.get("message"):
            message = f"{message}: {mig['message']}"
            span = 70 if mig["phase"] in ("copying", "migrating") else 0
            percent = base + span * int(mig.get("percent", 0)) // 100
        if mig.get("cancel"):
            message = f"cancelling ({mig.get('cancel_reason')}): {message}"
        _progress(task, percent, message, ts)
        return
    if vm["node"] != detail.get("target"):
        _finish(task, "failed", f"VM {vm['name']} is on {vm['node']}: the migration did not complete", ts)
        return
    want = "running" if vm["desired"]["power"] == "running" else "stopped"
    if vm["state"] == want:
        downtime = detail.get("downtime_ms")
        _finish(task, "succeeded", f"{want} on {vm['node']}" + (f" (downtime {downtime:.0f} ms)" if downtime is not None else ""), ts)
    elif vm["state"] == "error":
        _finish(task, "failed", f"on {vm['node']}: " + (vm.get("error") or vm.get("state_reason") or "the VM is in error"), ts)
    else:
        _progress(task, 95, f"{vm['state']} on {vm['node']}", ts)


def _evaluate_device(task: dict[str, Any], vm: dict[str, Any], ts: float) -> None:
    """A device change is done when a running guest shows it (``observed.disks``, or
    ``observed.nics`` by MAC); a VM that does not run gets it in its definition at the
    next start."""
    target = task["detail"].get("target")
    if vm["state"] != "running" or vm["observed"].get("power") != "running":
        _finish(task, "succeeded", "recorded; applied at the next start", ts)
        return
    live = vm["observed"].get("nics" if task["op"].startswith("vm.nic.") else "disks") or []
    wanted = task["op"] in ("vm.disk.add", "vm.iso.attach", "vm.volume.attach", "vm.nic.attach")
    if (target in live) == wanted:
        _finish(task, "succeeded", f"{target} {'plugged in' if wanted else 'unplugged'}", ts)
    elif vm["observed"].get("device_error"):
        _finish(task, "failed", vm["observed"]["device_error"], ts)
    else:
        _progress(task, 50, f"{'plugging in' if wanted else 'unplugging'} {target} on {vm['node']}", ts)


def _trim(state: State) -> None:
    """Keep about ``TASK_RETENTION`` tasks: past it by a batch, the oldest finished go."""
    if len(state.tasks) <= TASK_RETENTION + TRIM_BATCH:
        return
    excess = len(state.tasks) - TASK_RETENTION
    for tid in [t for t, task in state.tasks.items() if task["state"] in FINAL][:excess]:
        del state.tasks[tid]
