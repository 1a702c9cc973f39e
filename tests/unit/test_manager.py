"""The leader's node-liveness decisions on a virtual clock."""

from __future__ import annotations

import asyncio

from cloudd.config import Timings
from cloudd.manager import Manager, liveness
from tests.factories import admit, initialized
from tests.fake_env import FakeEnv

T = Timings(heartbeat_interval=2, suspect_after=6, down_after=15)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def statuses(env: FakeEnv) -> dict[str, str]:
    return {n: v["status"] for n, v in env.replica.state.nodes.items()}


def test_liveness_thresholds() -> None:
    assert liveness(0, True, T) == "up"
    assert liveness(6, True, T) == "suspect"
    assert liveness(15, True, T) == "down"
    assert liveness(0, False, T) == "down"


def test_node_goes_up_suspect_down_as_its_lease_ages() -> None:
    replica = initialized()
    admit(replica, "n2", 2)
    env = FakeEnv(replica)
    manager = Manager(T)
    for name in ("n1", "n2"):
        replica.ok("node.heartbeat", {"name": name})
    run(manager.step(env))
    assert statuses(env) == {"n1": "up", "n2": "up"}
    for t in range(1, 20):
        env.clock = float(t)
        replica.ok("node.heartbeat", {"name": "n1"})  # n1 keeps renewing, n2 went silent at 0
        run(manager.step(env))
        if t == 5:
            assert statuses(env)["n2"] == "up"
        if t == 6:
            assert statuses(env)["n2"] == "suspect"
    assert statuses(env) == {"n1": "up", "n2": "down"}


def test_a_new_leader_starts_lease_ages_from_zero() -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    env = FakeEnv(replica)
    manager = Manager(T)
    env.leader = False
    env.clock = 100.0
    assert run(manager.step(env)) == []
    env.leader = True
    run(manager.step(env))  # first look at t=100: age 0
    env.clock = 110.0
    run(manager.step(env))
    assert statuses(env)["n1"] == "suspect"  # 10 s, not 110 s
    env.clock = 115.0
    run(manager.step(env))
    assert statuses(env)["n1"] == "down"


def test_losing_leadership_forgets_observations() -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    env = FakeEnv(replica)
    manager = Manager(T)
    run(manager.step(env))
    env.leader = False
    env.clock = 50.0
    run(manager.step(env))
    env.leader = True
    env.clock = 51.0
    run(manager.step(env))
    assert statuses(env)["n1"] == "up"


def test_maintenance_shows_when_the_node_is_alive() -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": True})
    env = FakeEnv(replica)
    run(Manager(T).step(env))
    assert statuses(env)["n1"] == "maintenance"


def test_nothing_is_proposed_when_statuses_are_current() -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    env = FakeEnv(replica)
    manager = Manager(T)
    run(manager.step(env))
    env.proposed.clear()
    env.clock = 1.0
    run(manager.step(env))
    assert env.proposed == []


def test_a_new_term_resets_lease_ages_even_without_a_visible_gap() -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    env = FakeEnv(replica)
    manager = Manager(T)
    run(manager.step(env))
    env.clock = 10.0
    env.current_term = 2  # lost and regained leadership between two steps
    run(manager.step(env))
    assert statuses(env)["n1"] == "up"
    env.clock = 16.0
    run(manager.step(env))
    assert statuses(env)["n1"] == "suspect"


def test_pending_vms_are_placed_where_they_fit_and_the_rest_wait_with_a_reason() -> None:
    from tests.unit.test_compute_commands import cluster_with_hypervisor

    replica = cluster_with_hypervisor()
    admit(replica, "n2", 2)
    replica.ok("node.register", {"name": "n2", "roles": ["hypervisor"], "inventory": {"cpus": 4, "ram_mb": 5120, "disk_gb": 100.0}})
    replica.ok("flavor.create", {"name": "big", "vcpus": 2, "ram_mb": 4096, "disk_gb": 10})
    for vm_id in ("a", "b", "c", "d"):
        replica.ok("vm.create", {"id": vm_id, "name": f"vm-{vm_id}", "owner": "bob", "flavor": "big"})
    env = FakeEnv(replica)
    manager = Manager(T)
    replica.ok("node.heartbeat", {"name": "n2"})
    run(manager.step(env))  # n2 becomes up in this step; placement sees it next time
    run(manager.step(env))
    assert all(v["node"] is None for v in replica.state.vms.values())  # no renewal seen by this leader yet
    assert "not seen renewing" in replica.state.vms["a"]["state_reason"]
    for name in ("n1", "n2"):
        replica.ok("node.heartbeat", {"name": name})
    run(manager.step(env))
    vms = replica.state.vms
    # the biggest free share (RAM, vCPUs, disk) after taking the VM: n1 (8 GiB usable) first,
    # then n2 (both would be full of RAM; n2 has more vCPUs left), then n1 again
    assert [vms[v]["node"] for v in "abc"] == ["n1", "n2", "n1"]
    assert vms["d"]["state"] == "pending" and "RAM" in vms["d"]["state_reason"]
    proposed = len(env.proposed)
    run(manager.step(env))
    assert len(env.proposed) == proposed  # the same reason is not committed again
