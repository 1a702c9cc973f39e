"""The leader's moves: drains, rebalance plans executed as migrations within the limits,
and migrations a lost node stops; through the manager on a virtual clock."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudd.alloc.snapshot import AllocSettings
from cloudd.config import Timings
from cloudd.manager import Manager
from cloudd.moves import migrations_to_cancel, next_rebalance_moves, plan_drain, rebalance_status
from tests.fake_env import FakeEnv
from tests.unit.test_compute_commands import unchanged
from tests.unit.test_migration_commands import cluster, running_vm, step

T = Timings(heartbeat_interval=1, suspect_after=3, down_after=5, fence_after=4, failover_margin=2, storm_share=0.5)


def leader(replica: Any) -> tuple[FakeEnv, Manager]:
    env, manager = FakeEnv(replica), Manager(T)
    for _ in range(2):  # the leader sees every node renew
        for n in replica.state.nodes:
            replica.ok("node.heartbeat", {"name": n})
        env.clock += 1
        asyncio.run(manager.step(env))
    return env, manager


def test_a_live_drain_moves_what_can_move_without_downtime_within_the_limits() -> None:
    replica = cluster(shared=True)
    for i in range(3):
        running_vm(replica, f"r{i}", "n1")
    replica.ok("vm.create", {"id": "s0", "name": "s0", "owner": "bob", "flavor": "small", "power": "stopped"})
    replica.ok("vm.place", {"id": "s0", "node": "n1"})
    replica.ok("vm.report", {"id": "s0", "node": "n1", "power": "shut_off"})
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": True})
    assert replica.state.nodes["n1"]["drain"] == "live"
    state = replica.state
    orders = plan_drain(state.nodes, state.vms, AllocSettings.from_state(state.cluster), shared=True)
    # two per node at once: n1 is the source of every move
    assert len(orders) == 2 and all(o.reason == "drain of n1" and o.target != "n1" for o in orders)
    assert {o.mode for o in orders if o.vm == "s0"} <= {"offline"}
    env, manager = leader(replica)
    moving = [v for v in state.vms.values() if v.get("migration")]
    assert len(moving) == 2 and all(v["migration"]["source"] == "n1" for v in moving)
    # nothing new goes to the node in maintenance
    replica.ok("vm.create", {"id": "new", "name": "new", "owner": "bob", "flavor": "small"})
    asyncio.run(manager.step(env))
    assert state.vms["new"]["node"] in ("n2", "n3")


def test_a_local_storage_drain_moves_running_vms_only_when_asked_for_all() -> None:
    replica = cluster(shared=False)
    running_vm(replica, "r0", "n1")
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": True})
    state = replica.state
    assert plan_drain(state.nodes, state.vms, AllocSettings(), shared=False) == []
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": True, "drain": "all"})
    (order,) = plan_drain(state.nodes, state.vms, AllocSettings(), shared=False)
    assert (order.mode, order.force) == ("offline", True)
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": False})
    assert state.nodes["n1"]["drain"] == "none"


def test_a_rebalance_plan_runs_as_migrations_and_reports_each_move() -> None:
    replica = cluster(shared=True)
    for i in range(3):
        running_vm(replica, f"r{i}", "n1")
    state = replica.state
    moves = [{"vm": "r0", "from": "n1", "to": "n2"}, {"vm": "r1", "from": "n1", "to": "n3"}, {"vm": "r2", "from": "n1", "to": "n2"}]
    unchanged(replica, "cluster.rebalance_set", {"id": "p1", "moves": [{"vm": "r0", "from": "n2", "to": "n3"}]}, "conflict")
    replica.ok("cluster.rebalance_set", {"id": "p1", "moves": moves}, actor={"user": "admin"})
    orders = next_rebalance_moves(state.cluster["rebalance"], state.nodes, state.vms, state.tasks, AllocSettings(), shared=True)
    assert [(o.vm, o.mode, o.plan) for o in orders] == [("r0", "live", "p1"), ("r1", "live", "p1")]  # n1: two at once
    env, manager = leader(replica)
    status = {m["vm"]: m["status"] for m in rebalance_status(state.cluster["rebalance"], state.vms, state.tasks)}
    assert status == {"r0": "running", "r1": "running", "r2": "pending"}
    # a second plan waits for this one
    unchanged(replica, "cluster.rebalance_set", {"id": "p2", "moves": []}, "conflict")
    vm = state.vms["r0"]
    step(replica, vm, "n2", "migrating")
    step(replica, vm, "n1", "landed", downtime_ms=5.0)
    asyncio.run(manager.step(env))
    status = {m["vm"]: m["status"] for m in rebalance_status(state.cluster["rebalance"], state.vms, state.tasks)}
    assert status == {"r0": "done", "r1": "running", "r2": "running"}
    # a move cannot be started twice, nor outside its plan
    unchanged(replica, "vm.migrate", {"id": "r1", "node": "n3", "mode": "live", "plan": "p9"}, "conflict")


def test_a_lost_target_cancels_its_migrations_and_a_lost_source_only_before_the_memory_moves() -> None:
    replica = cluster(shared=True)
    running_vm(replica, "a", "n1")
    running_vm(replica, "b", "n2")
    replica.ok("vm.migrate", {"id": "a", "node": "n3", "mode": "live"})
    replica.ok("vm.migrate", {"id": "b", "node": "n3", "mode": "live"})
    step(replica, replica.state.vms["b"], "n3", "migrating")
    replica.ok("node.status_set", {"name": "n2", "status": "down", "observed_seq": 1})
    assert migrations_to_cancel(replica.state.nodes, replica.state.vms) == []  # b's memory moves: failover finishes it
    replica.ok("node.status_set", {"name": "n3", "status": "down", "observed_seq": 1})
    cancel = migrations_to_cancel(replica.state.nodes, replica.state.vms)
    assert [(vm, reason) for vm, _, reason in cancel] == [("a", "node n3 (the target) is down"), ("b", "node n3 (the target) is down")]
    for vm_id, migration, reason in cancel:
        replica.ok("vm.migration_cancel", {"id": vm_id, "migration": migration, "reason": reason})
    assert "migration" not in replica.state.vms["a"] and replica.state.vms["a"]["node"] == "n1"
    assert replica.state.vms["b"]["migration"]["cancel"]  # the source aborts libvirt's job
