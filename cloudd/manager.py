"""The leader's manager: node liveness from lease age, and placing pending VMs.

Lease age is measured on the leader's OWN monotonic clock: the manager notes when it
last saw each node's ``lease_seq`` change. A new leader has seen nothing yet, so every
node's age starts from zero when it takes over (the failover safety rule in DESIGN.md).
Verdicts carry the lease sequence they judged, so one that a renewal overtook is refused
by the state machine instead of marking a live node down.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from cloudd.alloc.placement import place
from cloudd.alloc.rebalance import plan_rebalance
from cloudd.commands.alloc import shared_vm_storage
from cloudd.moves import MoveOrder, migrations_to_cancel, movable_without_downtime, next_rebalance_moves, plan_drain, plan_finished
from cloudd.alloc.snapshot import AllocSettings, Snapshot, demand_of
from cloudd.config import Timings
from cloudd.failover import STORM_ALERT, FailoverPlan, lost_any_role, plan_failover, plan_promotions
from cloudd.env import Env, try_propose

log = logging.getLogger(__name__)
# a new leader has seen no node renew yet: an "up" status and a young age inherited from the
# previous term prove nothing, so VMs go only to nodes seen renewing in this term
NOT_SEEN_RENEWING = "not seen renewing its lease since this leader took over"


@dataclass
class LeaseTracker:
    """Per node: the last lease sequence seen and when (leader's monotonic clock)."""

    seen: dict[str, tuple[int, float]] = field(default_factory=dict)
    renewing: set[str] = field(default_factory=set)  # seen renewing since the tracker started

    def observe(self, nodes: Mapping[str, dict[str, Any]], now: float) -> dict[str, float]:
        """Record sequences; return each node's lease age in seconds."""
        ages: dict[str, float] = {}
        for name, node in nodes.items():
            seq = node["lease_seq"]
            previous = self.seen.get(name)
            if previous is None or previous[0] != seq:
                if previous is not None:
                    self.renewing.add(name)
                self.seen[name] = (seq, now)
            ages[name] = now - self.seen[name][1]
        for name in [n for n in self.seen if n not in nodes]:
            del self.seen[name]
            self.renewing.discard(name)
        return ages

    def reset(self) -> None:
        self.seen.clear()
        self.renewing.clear()


def liveness(age: float, ever_renewed: bool, timings: Timings) -> str:
    if not ever_renewed or age >= timings.down_after:
        return "down"
    if age >= timings.suspect_after:
        return "suspect"
    return "up"


SEVERITY = {"up": 0, "suspect": 1, "down": 2}


def node_verdicts(
    nodes: Mapping[str, dict[str, Any]], ages: dict[str, float], timings: Timings, renewing: set[str] | None = None
) -> list[dict[str, Any]]:
    """Pure: the ``node.status_set`` arguments needed to bring statuses up to date.

    ``renewing``: the nodes this leader has seen renew their lease. A young lease age only
    means "not seen long enough" for the others (a new leader starts every age from zero):
    a node judged down or suspect at its current lease sequence is not declared up until
    it renews."""
    verdicts = []
    for name, node in nodes.items():
        if name not in ages:
            continue
        status = liveness(ages[name], node["lease_seq"] > 0, timings)
        if (
            SEVERITY.get(status, 0) < SEVERITY.get(node["status"], 0) and renewing is not None and name not in renewing
            and node["lease_seq"] <= node.get("status_seq", -1)
        ):
            continue  # judged at this very lease: no renewal since, whatever a fresh clock says
        if status == "up" and node["maintenance"]:
            status = "maintenance"
        if status != node["status"]:
            verdicts.append(
                {
                    "name": name,
                    "status": status,
                    "observed_seq": node["lease_seq"],
                    "reason": f"lease age {ages[name]:.1f}s",
                }
            )
    return verdicts


class Manager:
    """Runs on every node; acts only while this node believes it leads."""

    def __init__(self, timings: Timings) -> None:
        self.timings = timings
        self.tracker = LeaseTracker()
        self.leading = False
        self.term: int | None = None
        self.last_auto_plan: float | None = None  # when this leader last planned a rebalance itself
        self.promotion_waits: dict[str, str] = {}  # volume -> why its secondary cannot take over (logged once)

    async def step(self, env: Env) -> list[dict[str, Any]]:
        """One iteration; returns the verdicts it proposed (for tests and logs)."""
        term = env.term()
        if not env.is_leader():
            if self.leading:
                log.info("no longer the leader: manager paused")
            self.leading = False
            self.tracker.reset()
            return []
        if not self.leading or term != self.term:
            # a new term means we may have lost and regained leadership in between:
            # what we saw before is no evidence about now
            log.info("leading in term %d: lease ages start from zero", term)
            self.leading = True
            self.term = term
            self.tracker.reset()
        nodes = env.nodes()
        ages = self.tracker.observe(nodes, env.monotonic())
        verdicts = node_verdicts(nodes, ages, self.timings, self.tracker.renewing)
        await self._commit_verdicts(env, verdicts)
        await self.fail_over(env, ages)
        await self.watch_migrations(env)
        await self.place_pending(env)
        await self.order_moves(env)
        return verdicts

    async def watch_migrations(self, env: Env) -> None:
        """Cancel the migrations a lost node stops (see ``cloudd.moves``)."""
        for vm_id, migration, reason in migrations_to_cancel(env.nodes(), env.vms()):
            if await try_propose(env, "vm.migration_cancel", {"id": vm_id, "migration": migration, "reason": reason}, f"VM {vm_id}: migration"):
                log.warning("VM %s: migration cancelled: %s", vm_id, reason)

    async def order_moves(self, env: Env) -> list[MoveOrder]:
        """Drains, then the rebalance plan (planning one when rebalancing is automatic)."""
        state = env.state()
        settings = AllocSettings.from_state(state.cluster)
        shared = shared_vm_storage(state)
        nodes, vms = env.nodes(), env.vms()
        unseen = {n for n in nodes if n not in self.tracker.renewing}
        orders = plan_drain(nodes, vms, settings, shared, unseen)
        plan = state.cluster.get("rebalance")
        if settings.rebalance_auto and (plan is None or plan_finished(plan, vms, state.tasks)) and not orders:
            now = env.monotonic()
            if self.last_auto_plan is None or now - self.last_auto_plan >= settings.rebalance_interval_s:
                self.last_auto_plan = now
                await self.plan_rebalance(env, nodes, vms, settings, shared)
                plan = env.state().cluster.get("rebalance")
        orders += [o for o in next_rebalance_moves(plan, nodes, vms, env.state().tasks, settings, shared) if o.target not in unseen]
        for order in orders:
            args: dict[str, Any] = {"id": order.vm, "node": order.target, "mode": order.mode, "reason": order.reason}
            if order.force:
                args["force"] = True
            if order.plan:
                args["plan"] = order.plan
            if await try_propose(env, "vm.migrate", args, f"VM {order.vm}: {order.reason}"):
                log.info("VM %s: %s migration to %s (%s)", order.vm, order.mode, order.target, order.reason)
        return orders

    async def plan_rebalance(self, env: Env, nodes: dict[str, Any], vms: dict[str, Any], settings: AllocSettings, shared: bool) -> None:
        snap = Snapshot.build(nodes, vms.values(), settings)
        movable = {v["id"] for v in vms.values() if movable_without_downtime(v, nodes, shared)}
        # pure work on its own snapshot, seconds on a thousand nodes: off the event loop
        plan = await asyncio.to_thread(plan_rebalance, snap, settings.rebalance_max_moves, lambda d: d.vm_id in movable)
        if not plan.moves:
            return
        moves = [{"vm": m.vm_id, "from": m.source, "to": m.target} for m in plan.moves]
        plan_id = f"auto-{env.term()}-{int(env.wall())}"
        if await try_propose(env, "cluster.rebalance_set", {"id": plan_id, "moves": moves, "auto": True}, "an automatic rebalance"):
            log.info("automatic rebalance %s: %d moves (score %.4f -> %.4f)", plan_id, len(moves), plan.score_before, plan.score_after)

    async def fail_over(self, env: Env, ages: dict[str, float]) -> FailoverPlan:
        """Re-home the HA VMs of lost nodes (see ``cloudd.failover``)."""
        cluster = env.state().cluster
        plan = plan_failover(env.nodes(), env.vms(), ages, self.timings, AllocSettings.from_state(cluster), self.tracker.renewing)
        alert = ((cluster.get("alerts") or {}).get(STORM_ALERT) or {}).get("message")
        if plan.storm != alert and (plan.storm is not None or alert is not None):
            if plan.storm:
                log.error("fencing-storm guard: %s", plan.storm)
            await try_propose(env, "cluster.alert_set", {"key": STORM_ALERT, "message": plan.storm}, "the storm alert")
        if plan.storm is None:
            await self.promote_replicas(env, ages)
        vms = env.vms() if plan.waiting else {}
        for vm_id, source, target in plan.moves:
            args = {"id": vm_id, "from_node": source, "node": target, "observed_seq": plan.lost[source]}
            if await try_propose(env, "vm.failover", args, f"recovering VM {vm_id}"):
                log.warning("VM %s recovered from lost node %s onto %s", vm_id, source, target)
        for vm_id, source, reason in plan.waiting:
            if (vms.get(vm_id) or {}).get("error") != reason:
                await try_propose(env, "vm.failover_waiting", {"id": vm_id, "from_node": source, "reason": reason}, f"VM {vm_id}")
        return plan

    async def promote_replicas(self, env: Env, ages: dict[str, float]) -> None:
        """Promote the secondary of every DRBD volume whose primary's node is lost, before
        the VMs using it are restarted (they then reach it on the new primary's portal)."""
        volumes = {vid: v for vid, v in list(env.state().volumes.items()) if v.get("replica")}
        lost = lost_any_role(env.nodes(), ages, self.timings)
        if not lost or not volumes:
            return
        promote, waiting = plan_promotions(env.nodes(), volumes, lost, self.tracker.renewing)
        for vid, node, seq in promote:
            if await try_propose(env, "volume.promote", {"id": vid, "node": node, "observed_seq": seq}, f"promoting volume {vid}"):
                log.warning("volume %s: %s promoted to primary (its primary's node was lost)", vid, node)
        for vid, reason in waiting:
            if self.promotion_waits.get(vid) != reason:
                self.promotion_waits[vid] = reason
                log.error("volume %s cannot fail over: %s", vid, reason)

    async def place_pending(self, env: Env) -> list[tuple[str, str | None]]:
        """Place pending VMs, oldest first; note why when none fits. Returns (vm, node)."""
        vms = env.vms()
        pending = sorted((v for v in vms.values() if v["state"] == "pending"), key=lambda v: (v["created_at"], v["id"]))
        decisions: list[tuple[str, str | None]] = []
        if not pending:
            return decisions
        snap = Snapshot.build(env.nodes(), vms.values(), AllocSettings.from_state(env.state().cluster))
        unseen = set(snap.nodes) - self.tracker.renewing
        for vm in pending:
            demand = demand_of(vm)
            decision = place(snap, demand, unseen, NOT_SEEN_RENEWING)
            node = decision.node
            decisions.append((vm["id"], node))
            if node is not None:
                if await try_propose(env, "vm.place", {"id": vm["id"], "node": node}, f"placing VM {vm['id']}"):
                    snap.add(demand, node)
                    log.info("placed VM %s (%s) on %s", vm["name"], vm["id"], node)
                continue
            reason = decision.reason()
            if vm.get("state_reason") != reason[:500]:
                await try_propose(env, "vm.unplaceable", {"id": vm["id"], "reason": reason[:500]}, f"VM {vm['id']}")
        return decisions

    async def _commit_verdicts(self, env: Env, verdicts: list[dict[str, Any]]) -> None:
        for verdict in verdicts:
            if await try_propose(env, "node.status_set", verdict, f"status of node {verdict['name']}"):
                log.info("node %s is %s (%s)", verdict["name"], verdict["status"], verdict["reason"])
