"""Failover: the leader's decision on a virtual clock, the commands' guards, the node's
self-fencing and its removal of stale copies."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudd.config import Timings
from cloudd.failover import STORM_ALERT
from cloudd.manager import Manager
from cloudd.ops.fake_compute import FakeCompute
from cloudd.reconcile import LeaseClock, ReconcileSettings, VmReconciler
from tests.factories import PW_HASH, admit, initialized
from tests.fake_env import FakeEnv
from tests.unit.test_compute_commands import unchanged

T = Timings(heartbeat_interval=1, suspect_after=3, down_after=5, fence_after=4, failover_margin=2, storm_share=0.5)
INVENTORY = {"cpus": 4, "ram_mb": 5120, "disk_gb": 100.0}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def cluster(nodes: int = 3, shared: bool = True) -> Any:
    replica = initialized()
    for n in range(2, nodes + 1):
        admit(replica, f"n{n}", n)
    for n in range(1, nodes + 1):
        replica.ok("node.register", {"name": f"n{n}", "roles": ["hypervisor"], "inventory": INVENTORY})
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    replica.ok("flavor.create", {"name": "small", "vcpus": 1, "ram_mb": 1024, "disk_gb": 5})
    if shared:
        replica.ok("cluster.settings_set", {"shared_vm_storage": True})
    return replica


def beat(replica: Any, *names: str) -> None:
    for name in names:
        replica.ok("node.heartbeat", {"name": name})


def vm(replica: Any, vm_id: str, node: str, **extra: Any) -> None:
    replica.ok("vm.create", {"id": vm_id, "name": vm_id, "owner": "bob", "flavor": "small", **extra})
    replica.ok("vm.place", {"id": vm_id, "node": node})
    replica.ok("vm.report", {"id": vm_id, "node": node, "power": "running"})


def advance(env: FakeEnv, manager: Manager, until: float, alive: tuple[str, ...]) -> None:
    """Let the virtual clock run in 1 s steps; the ``alive`` nodes renew their leases."""
    while env.clock < until:
        env.clock += 1.0
        beat(env.replica, *alive)
        run(manager.step(env))


def setup_running() -> tuple[Any, FakeEnv, Manager]:
    replica = cluster()
    env, manager = FakeEnv(replica), Manager(T)
    beat(replica, "n1", "n2", "n3")
    run(manager.step(env))
    vm(replica, "low", "n2", ha=True, ha_priority=1)
    vm(replica, "high", "n2", ha=True, ha_priority=9)
    vm(replica, "plain", "n2")
    return replica, env, manager


def test_ha_vms_of_a_lost_node_are_rehomed_after_the_grace_and_in_priority_order() -> None:
    replica, env, manager = setup_running()
    advance(env, manager, 5.0, ("n1", "n3"))  # n2 is down now, but the grace (4 + 2 s) is not over
    vms = replica.state.vms
    assert replica.state.nodes["n2"]["status"] == "down" and vms["high"]["node"] == "n2"
    advance(env, manager, 8.0, ("n1", "n3"))
    assert vms["high"]["node"] in ("n1", "n3") and vms["low"]["node"] in ("n1", "n3")
    assert vms["high"]["state"] == "creating" and vms["high"]["recovered"]["from"] == "n2"
    assert vms["plain"]["node"] == "n2"  # not HA: it waits for its node
    failovers = [e for e in replica.state.events if e["op"] == "vm.failover" and e["outcome"] == "ok"]
    assert [e["target"] for e in failovers] == ["high", "low"]
    task = next(t for t in replica.state.tasks.values() if t["op"] == "vm.failover" and t["vm"] == "high")
    assert task["state"] == "running"
    replica.ok("vm.report", {"id": "high", "node": vms["high"]["node"], "power": "running"})
    assert replica.state.tasks[task["id"]]["state"] == "succeeded"


def test_a_new_leader_starts_the_wait_from_zero() -> None:
    replica, env, manager = setup_running()
    advance(env, manager, 5.0, ("n1", "n3"))
    env.current_term = 2  # leadership changed hands (or was lost and regained)
    advance(env, manager, 8.0, ("n1", "n3"))
    assert replica.state.vms["high"]["node"] == "n2"  # 3 s into the new term: not yet
    advance(env, manager, 14.0, ("n1", "n3"))
    assert replica.state.vms["high"]["node"] != "n2"


def test_the_storm_guard_holds_when_most_nodes_are_lost_and_clears_when_they_return() -> None:
    replica, env, manager = setup_running()
    advance(env, manager, 10.0, ("n1",))  # n2 and n3 lost: 2 of 3 > 50 %
    assert replica.state.vms["high"]["node"] == "n2"
    assert "2 of 3 hypervisors" in replica.state.cluster["alerts"][STORM_ALERT]["message"]
    advance(env, manager, 12.0, ("n1", "n3"))  # n3 is back
    assert STORM_ALERT not in replica.state.cluster["alerts"]


def test_an_ha_vm_without_room_waits_in_error_and_is_rehomed_once_there_is_room() -> None:
    replica = cluster(nodes=2)
    env, manager = FakeEnv(replica), Manager(Timings(**{**T.__dict__, "storm_share": 0.6}))
    beat(replica, "n1", "n2")
    run(manager.step(env))
    replica.ok("flavor.create", {"name": "big", "vcpus": 1, "ram_mb": 3072, "disk_gb": 5})
    replica.ok("vm.create", {"id": "fat", "name": "fat", "owner": "bob", "flavor": "big", "ha": True})
    replica.ok("vm.place", {"id": "fat", "node": "n2"})
    replica.ok("vm.create", {"id": "hog", "name": "hog", "owner": "bob", "flavor": "big"})
    replica.ok("vm.place", {"id": "hog", "node": "n1"})
    advance(env, manager, 8.0, ("n1",))
    fat = replica.state.vms["fat"]
    assert fat["state"] == "error" and "no node can take the VM" in fat["error"] and "RAM" in fat["error"]
    proposed = len(env.proposed)
    advance(env, manager, 9.0, ("n1",))
    assert len(env.proposed) == proposed  # the same reason is not committed again
    replica.ok("vm.delete", {"id": "hog"})
    replica.ok("vm.report", {"id": "hog", "node": "n1", "power": "absent"})
    advance(env, manager, 10.0, ("n1",))
    assert fat["node"] == "n1" and fat["state"] == "creating" and fat["error"] is None


def test_failover_commands_refuse_a_node_that_renewed_its_lease_or_is_not_down() -> None:
    replica, env, manager = setup_running()
    seq = replica.state.nodes["n2"]["lease_seq"]
    error = unchanged(replica, "vm.failover", {"id": "high", "from_node": "n2", "node": "n1", "observed_seq": seq}, "conflict")
    assert "not down" in error["message"]
    replica.state.nodes["n2"]["status"] = "down"
    unchanged(replica, "vm.failover", {"id": "high", "from_node": "n2", "node": "n1", "observed_seq": seq - 1}, "conflict")
    unchanged(replica, "vm.failover", {"id": "plain", "from_node": "n2", "node": "n1", "observed_seq": seq}, "conflict")  # not HA
    unchanged(replica, "vm.failover", {"id": "high", "from_node": "n1", "node": "n3", "observed_seq": seq}, "conflict")  # not there


def test_ha_needs_shared_vm_storage() -> None:
    replica = cluster(shared=False)
    error = unchanged(replica, "vm.create", {"id": "v", "name": "v", "owner": "bob", "flavor": "small", "ha": True}, "invalid")
    assert "shared storage" in error["message"]


def node_agent(replica: Any, node: str) -> tuple[FakeEnv, FakeCompute, VmReconciler, LeaseClock]:
    env = FakeEnv(replica, node_name=node)
    compute, lease = FakeCompute(), LeaseClock(renewed_at=0.0)
    agent = VmReconciler(compute, ReconcileSettings(domain_type="test"), lease=lease, fence_after=4.0)
    return env, compute, agent, lease


def test_a_node_that_cannot_renew_its_lease_destroys_its_vms_and_starts_nothing() -> None:
    replica = cluster()
    beat(replica, "n2")
    replica.ok("node.status_set", {"name": "n2", "status": "up", "observed_seq": 1})
    vm(replica, "a", "n2")
    env, compute, agent, lease = node_agent(replica, "n2")
    run(agent.step(env))
    assert compute.power["a"] == "running"
    env.clock = 3.9
    run(agent.step(env))
    assert compute.power["a"] == "running"
    env.clock = 4.0
    run(agent.step(env))
    assert compute.power["a"] == "shut_off" and agent.fenced
    env.clock = 5.0
    run(agent.step(env))
    assert compute.power["a"] == "shut_off"  # fenced: nothing starts
    lease.renewed(5.0)
    run(agent.step(env))
    assert compute.power["a"] == "running" and not agent.fenced


def test_a_returning_node_removes_its_stale_copies_instead_of_starting_them() -> None:
    replica, env, manager = setup_running()
    n2_env, compute, agent, lease = node_agent(replica, "n2")
    n2_env.clock = 0.0
    run(agent.step(n2_env))
    assert set(compute.defined) == {"low", "high", "plain"}
    advance(env, manager, 8.0, ("n1", "n3"))  # n2 lost, its HA VMs re-homed
    lease.renewed(9.0)
    n2_env.clock = 9.0
    run(agent.step(n2_env))
    assert set(compute.defined) == {"plain"}  # the re-homed ones are gone from n2, not restarted


def test_only_losses_within_the_storm_window_count_together() -> None:
    from cloudd.failover import lost_together

    nodes = {"a": {"status_since": 100.0}, "b": {"status_since": 110.0}, "c": {"status_since": 300.0}, "d": {}}
    lost = {"a": 1, "b": 1, "c": 1}
    assert lost_together(nodes, lost, 15.0) == ["c"]  # a and b were lost long before c
    assert lost_together(nodes, {"a": 1, "b": 1}, 15.0) == ["a", "b"]
    assert lost_together(nodes, {"a": 1, "b": 1}, 5.0) == ["b"]
    assert lost_together(nodes, lost, 200.0) == ["a", "b", "c"]
    assert lost_together(nodes, {"a": 1, "d": 1}, 15.0) == ["a", "d"]  # no timestamp: counted, the safe side
