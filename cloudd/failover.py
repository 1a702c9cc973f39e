"""The leader's failover decision: pure, over node records, VM records and lease ages.

A hypervisor is *lost* when its status is ``down`` and its lease has been stale for at
least ``fence_after + failover_margin`` on the leader's own clock (ages restart from zero
with every new leader). By then the node destroyed its VMs itself, or its fence guard did
(DESIGN.md, failover safety). The lost nodes' HA VMs (and VMs placed there that never
started: nothing of them runs) are re-homed in priority order
(highest ``ha_priority`` first, then the oldest), each where the allocator puts it; a VM
with no room waits in ``error`` with the reason and is tried again on the next pass.

The fencing-storm guard: when more than ``storm_share`` of the hypervisors are lost at
once, the cause is more likely the leader's own side of a partition or a site-wide fault
than many dead hosts: nothing is re-homed and an alert says why. "At once" means the down
verdicts (their replicated ``status_since``) lie within ``storm_window`` of the newest
one: a node lost long before, whose VMs were re-homed then, is not part of a new event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from cloudd.alloc.placement import place
from cloudd.alloc.snapshot import AllocSettings, Snapshot, demand_of
from cloudd.commands.failover import never_ran
from cloudd.config import Timings

STORM_ALERT = "failover-storm"


@dataclass
class FailoverPlan:
    lost: dict[str, int] = field(default_factory=dict)  # node -> the lease sequence judged
    storm: str | None = None  # the alert's message when the storm guard holds
    moves: list[tuple[str, str, str]] = field(default_factory=list)  # (vm, from, to)
    waiting: list[tuple[str, str, str]] = field(default_factory=list)  # (vm, from, reason)


def lost_nodes(nodes: Mapping[str, Mapping[str, Any]], ages: Mapping[str, float], timings: Timings) -> dict[str, int]:
    grace = timings.fence_after + timings.failover_margin
    return {
        name: node["lease_seq"]
        for name, node in sorted(nodes.items())
        if "hypervisor" in node.get("roles", []) and node.get("status") == "down" and ages.get(name, 0.0) >= grace
    }


def lost_any_role(nodes: Mapping[str, Mapping[str, Any]], ages: Mapping[str, float], timings: Timings) -> dict[str, int]:
    """Like ``lost_nodes`` but storage nodes too (DRBD primaries)."""
    grace = timings.fence_after + timings.failover_margin
    return {name: node["lease_seq"] for name, node in sorted(nodes.items()) if node.get("status") == "down" and ages.get(name, 0.0) >= grace}


def plan_promotions(
    nodes: Mapping[str, Mapping[str, Any]],
    volumes: Mapping[str, Mapping[str, Any]],
    lost: Mapping[str, int],
    renewing: set[str] | None = None,
) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """The replicated volumes whose primary is on a lost node: ``(volume, new primary,
    the lost node's judged lease)`` for those whose secondary may take over, and
    ``(volume, why not)`` for the others (see ``cloudd.commands.replication``)."""
    from cloudd.commands.replication import secondary_of

    promote: list[tuple[str, str, int]] = []
    waiting: list[tuple[str, str]] = []
    for vid, volume in sorted(volumes.items()):
        replica = volume.get("replica")
        if not replica or replica["primary"] not in lost or volume.get("state") == "deleting":
            continue
        second = secondary_of(dict(replica))
        side = replica["sides"].get(second) or {}
        status = (nodes.get(second) or {}).get("status")
        if status not in ("up", "maintenance") or (renewing is not None and second not in renewing):
            waiting.append((vid, f"its primary {replica['primary']} is lost and its secondary {second} is {status or 'gone'}"))
        elif side.get("disk_state") != "UpToDate":
            waiting.append((vid, f"its primary {replica['primary']} is lost and the copy on {second} is {side.get('disk_state') or 'unreported'}, not UpToDate"))
        else:
            promote.append((vid, second, lost[replica["primary"]]))
    return promote, waiting


def lost_together(nodes: Mapping[str, Mapping[str, Any]], lost: Mapping[str, int], window: float) -> list[str]:
    """The lost nodes whose down verdicts lie within ``window`` seconds of the newest one
    (a record without ``status_since`` counts as new: the guard errs on the safe side)."""
    since = {name: nodes[name].get("status_since") for name in lost}
    newest = max((float(ts) for ts in since.values() if ts is not None), default=0.0)
    return sorted(name for name, ts in since.items() if ts is None or newest - float(ts) <= window)


def plan_failover(
    nodes: Mapping[str, Mapping[str, Any]],
    vms: Mapping[str, Mapping[str, Any]],
    ages: Mapping[str, float],
    timings: Timings,
    settings: AllocSettings,
    renewing: set[str] | None = None,
) -> FailoverPlan:
    """``renewing``: the nodes the leader has seen renew their lease (None: all); VMs are
    re-homed onto those only."""
    plan = FailoverPlan(lost=lost_nodes(nodes, ages, timings))
    if not plan.lost:
        return plan
    hypervisors = sum(1 for n in nodes.values() if "hypervisor" in n.get("roles", []))
    together = lost_together(nodes, plan.lost, timings.storm_window)
    if hypervisors > 1 and len(together) > timings.storm_share * hypervisors:
        plan.storm = (
            f"{len(together)} of {hypervisors} hypervisors lost at once ({', '.join(together)}): more than "
            f"{timings.storm_share:.0%}, so no VM is restarted elsewhere; check the network and power, then bring "
            "the nodes back or remove them"
        )
        return plan
    stranded = [
        vm for vm in vms.values()
        if vm.get("node") in plan.lost and vm["state"] not in ("deleting", "pending") and (vm.get("ha") or never_ran(vm) or memory_moving(vm))
    ]
    if not stranded:
        return plan
    snap = Snapshot.build(nodes, vms.values(), settings)
    for vm in sorted(stranded, key=lambda v: (-int(v.get("ha_priority", 0)), v.get("created_at", 0), v["id"])):
        demand = demand_of(vm)
        unseen = set() if renewing is None else set(snap.nodes) - renewing
        if memory_moving(vm):
            # its memory was moving: it may run on the target already, and nowhere else
            target = vm["migration"]["target"]
            if target in plan.lost or target in unseen:
                plan.waiting.append((vm["id"], vm["node"], f"node {vm['node']} is lost during a live migration to {target}, which is not up: the VM waits for one of them"))
            else:
                plan.moves.append((vm["id"], vm["node"], target))  # its room is held there already
            continue
        decision = place(snap, demand, set(plan.lost) | unseen)
        if decision.node is None:
            refused = {n: r for n, r in decision.refused.items() if n not in plan.lost}
            why = "; ".join(f"{n}: {r}" for n, r in sorted(refused.items())) or "no other hypervisor"
            plan.waiting.append((vm["id"], vm["node"], f"node {vm['node']} is lost and no node can take the VM: {why}"[:500]))
        else:
            snap.add(demand, decision.node)
            plan.moves.append((vm["id"], vm["node"], decision.node))
    return plan


def memory_moving(vm: Mapping[str, Any]) -> bool:
    """A live migration whose memory is moving: the guest runs on its source or its target."""
    mig = vm.get("migration") or {}
    return mig.get("mode") == "live" and mig.get("phase") == "migrating"
