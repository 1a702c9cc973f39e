"""The leader's moves: node drains, rebalance plans, and watching running migrations.

All of them act only by proposing commands (``vm.migrate``, ``vm.migration_cancel``,
``cluster.rebalance_set``), which check everything again inside apply; the decisions here
are pure functions of the state (``plan_drain``, ``next_rebalance_moves``,
``migrations_to_cancel``), so the simulator and unit tests run them as they are.

- **Drain**: a node in maintenance with ``drain`` ``live`` moves its stopped VMs (offline,
  no downtime) and its running VMs that can move live; with ``all`` also the running VMs
  that cannot (offline: a clean shutdown, the move, a start on the target). What cannot
  move yet (no room, limits) is tried again on the next pass.
- **Rebalance**: a plan (``cluster.rebalance``) is executed move by move as migrations,
  within the cluster's limits on concurrent migrations; ``rebalance_auto`` makes the
  leader plan one every ``rebalance_interval_s`` when the last one has ended.
- **Watching**: a migration whose target (or, before its memory moves, whose source) is
  lost is cancelled: the VM stays (or is again) on its source. A live migration whose
  source is lost while its memory moves is the failover's to finish (on its target).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cloudd.alloc.placement import place
from cloudd.alloc.snapshot import AllocSettings, Snapshot, demand_of
from cloudd.model.migration import counts, live_refusal

DRAIN_MODES = ("none", "live", "all")


@dataclass(frozen=True)
class MoveOrder:
    vm: str
    target: str
    mode: str
    force: bool
    reason: str
    plan: str | None = None


def live_possible(vm: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]], shared: bool, target: str | None = None) -> bool:
    """Whether the VM could move live now (to ``target``, or to some capable node)."""
    if vm["state"] != "running" or not shared:
        return False
    involved = [n for n in ((vm.get("node"),) + ((target,) if target else ())) if n]
    return all(n in nodes and live_refusal(nodes[n]) is None for n in involved)


def movable_without_downtime(vm: Mapping[str, Any], nodes: Mapping[str, Mapping[str, Any]], shared: bool) -> bool:
    return not vm.get("migration") and (vm["state"] == "stopped" or live_possible(vm, nodes, shared))


class Budget:
    """The cluster's limits on concurrent migrations, counted down as moves are ordered."""

    def __init__(self, vms: Iterable[Mapping[str, Any]], settings: AllocSettings) -> None:
        self.total, self.per_node = counts(vms)
        self.settings = settings

    def allows(self, source: str, target: str) -> bool:
        return (
            self.total < self.settings.migrations_per_cluster
            and self.per_node.get(source, 0) < self.settings.migrations_per_node
            and self.per_node.get(target, 0) < self.settings.migrations_per_node
        )

    def take(self, source: str, target: str) -> None:
        self.total += 1
        for node in (source, target):
            self.per_node[node] = self.per_node.get(node, 0) + 1


def plan_drain(
    nodes: Mapping[str, Mapping[str, Any]], vms: Mapping[str, Mapping[str, Any]], settings: AllocSettings, shared: bool, exclude: set[str] | None = None
) -> list[MoveOrder]:
    """The migrations to order now for the nodes being drained (within the limits)."""
    draining = sorted(n for n, node in nodes.items() if node.get("maintenance") and node.get("drain", "none") != "none")
    if not draining:
        return []
    snap = Snapshot.build(nodes, vms.values(), settings)
    budget = Budget(vms.values(), settings)
    orders: list[MoveOrder] = []
    for name in draining:
        mode_wanted = nodes[name]["drain"]
        here = sorted((v for v in vms.values() if v.get("node") == name and not v.get("migration")), key=lambda v: (-int(v.get("ha_priority", 0)), v["id"]))
        for vm in here:
            if vm["state"] not in ("running", "stopped"):
                continue
            demand = demand_of(vm)
            decision = place(snap, demand, set(draining) | (exclude or set()))
            target = decision.node
            if target is None or not budget.allows(name, target):
                continue
            if vm["state"] == "stopped":
                mode, force = "offline", False
            elif live_possible(vm, nodes, shared, target):
                mode, force = "live", False
            elif mode_wanted == "all":
                mode, force = "offline", True
            else:
                continue
            snap.reserve(demand, target)
            budget.take(name, target)
            orders.append(MoveOrder(vm["id"], target, mode, force, f"drain of {name}"))
    return orders


def rebalance_status(plan: Mapping[str, Any], vms: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each move of a rebalance plan with its status: pending, running, done, failed, gone."""
    out = []
    for move in plan.get("moves", ()):
        vm = vms.get(move["vm"])
        task = tasks.get(move.get("task") or "")
        if vm is None:
            status = "gone"
        elif task is None:
            status = "done" if vm.get("node") == move["to"] else "failed" if move.get("task") else "pending"
        elif task["state"] == "running":
            status = "running"
        else:
            status = "done" if task["state"] == "succeeded" else "failed"
        out.append({**move, "status": status, "message": task["message"] if task else None})
    return out


def next_rebalance_moves(
    plan: Mapping[str, Any] | None, nodes: Mapping[str, Mapping[str, Any]], vms: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, Mapping[str, Any]], settings: AllocSettings, shared: bool,
) -> list[MoveOrder]:
    """The pending moves of the plan that can start now (within the limits)."""
    if not plan:
        return []
    budget = Budget(vms.values(), settings)
    orders = []
    for move in rebalance_status(plan, vms, tasks):
        if move["status"] != "pending":
            continue
        vm = vms[move["vm"]]
        if vm.get("node") != move["from"] or vm.get("migration") or vm["state"] not in ("running", "stopped"):
            continue
        if not budget.allows(move["from"], move["to"]):
            continue
        if vm["state"] == "stopped":
            mode = "offline"
        elif live_possible(vm, nodes, shared, move["to"]):
            mode = "live"
        else:
            continue  # it would need downtime: a plan moves only what can move without
        budget.take(move["from"], move["to"])
        orders.append(MoveOrder(vm["id"], move["to"], mode, False, f"rebalance {plan['id']}", plan["id"]))
    return orders


def plan_finished(plan: Mapping[str, Any] | None, vms: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Mapping[str, Any]]) -> bool:
    return bool(plan) and all(m["status"] in ("done", "failed", "gone") for m in rebalance_status(plan, vms, tasks))  # type: ignore[arg-type]


def migrations_to_cancel(nodes: Mapping[str, Mapping[str, Any]], vms: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(vm, migration id, reason) of the migrations a lost node stops."""
    out = []
    for vm in vms.values():
        mig = vm.get("migration")
        if not mig or mig.get("cancel"):
            continue
        target_down = (nodes.get(mig["target"]) or {}).get("status") == "down"
        source_down = (nodes.get(mig["source"]) or {}).get("status") == "down"
        if target_down:
            out.append((vm["id"], mig["id"], f"node {mig['target']} (the target) is down"))
        elif source_down and not (mig["mode"] == "live" and mig["phase"] == "migrating"):
            out.append((vm["id"], mig["id"], f"node {mig['source']} (the source) is down"))
    return sorted(out)
