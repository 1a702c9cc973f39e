"""DRBD replication in the state: minors and ports, each side's reports, and the
leader's promotion of the secondary when the primary's storage node is lost."""

from __future__ import annotations

from typing import Any

from cloudd.config import Timings
from cloudd.failover import plan_promotions
from cloudd.manager import Manager
from tests.factories import Replica, admit
from tests.fake_env import FakeEnv
from tests.unit.test_compute_commands import cluster_with_hypervisor
from tests.unit.test_failover import advance
from tests.unit.test_compute_commands import unchanged

GIB = 1 << 30
T = Timings(heartbeat_interval=1, suspect_after=3, down_after=5, fence_after=4, failover_margin=2, storm_share=0.5)
UPTODATE = {"role": "Secondary", "disk_state": "UpToDate", "peer_disk_state": "UpToDate", "connection_state": "Connected"}


def drbd_cluster() -> Replica:
    """n1: hypervisor; s1 and s2: storage nodes replicating the pool ``mirror``."""
    replica = cluster_with_hypervisor()
    for n, name in ((2, "s1"), (3, "s2")):
        admit(replica, name, n)
        replica.ok("node.register", {"name": name, "roles": ["storage"], "inventory": {"cpus": 2, "ram_mb": 4096, "disk_gb": 500.0}})
        seq = replica.ok("node.heartbeat", {"name": name})["lease_seq"]
        replica.ok("node.status_set", {"name": name, "status": "up", "observed_seq": seq})
    replica.ok("storage_pool.create", {"name": "mirror", "node": "s1", "backend": "drbd", "config": {"vg": "vg0", "peer": "s2"}})
    replica.ok("storage_pool.report", {"name": "mirror", "node": "s1", "total_bytes": 400 * GIB, "free_bytes": 400 * GIB})
    return replica


def volume(replica: Replica, vid: str) -> dict[str, Any]:
    replica.ok("volume.create", {"id": vid, "name": f"data-{vid}", "owner": "bob", "size_gb": 10})
    replica.ok("volume.report", {"id": vid, "node": "s1", "present": True, "size_bytes": 10 * GIB})
    return replica.state.volumes[vid]


def test_each_replicated_volume_gets_its_own_minor_and_port_and_starts_primary_on_the_pools_node() -> None:
    replica = drbd_cluster()
    first, second = volume(replica, "vo1"), volume(replica, "vo2")
    assert first["replica"]["nodes"] == ["s1", "s2"] and first["replica"]["primary"] == "s1" and first["node"] == "s1"
    assert (first["replica"]["minor"], first["replica"]["port"]) == (100, 7789)
    assert (second["replica"]["minor"], second["replica"]["port"]) == (101, 7790)
    replica.ok("volume.delete", {"id": "vo1"})
    replica.ok("volume.report", {"id": "vo1", "node": "s1", "present": False})
    assert "vo1" in replica.state.volumes  # the copy on s2 is still there
    replica.ok("volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE, "role": "Deleted"})
    assert "vo1" not in replica.state.volumes
    third = volume(replica, "vo3")
    assert (third["replica"]["minor"], third["replica"]["port"]) == (100, 7789)  # freed ones are reused


def test_sides_report_their_role_and_only_members_may() -> None:
    replica = drbd_cluster()
    volume(replica, "vo1")
    replica.ok("volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE})
    assert replica.state.volumes["vo1"]["replica"]["sides"]["s2"]["disk_state"] == "UpToDate"
    unchanged(replica, "volume.replica_report", {"id": "vo1", "node": "n1", **UPTODATE}, "conflict")
    unchanged(replica, "volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE, "role": "Primary; rm"}, "invalid")


def test_promotion_is_refused_while_the_primary_lives_or_the_copy_is_not_up_to_date() -> None:
    replica = drbd_cluster()
    volume(replica, "vo1")
    seq = replica.state.nodes["s1"]["lease_seq"]
    replica.ok("volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE})
    unchanged(replica, "volume.promote", {"id": "vo1", "node": "s2", "observed_seq": seq}, "conflict")  # s1 is up
    replica.ok("node.status_set", {"name": "s1", "status": "down", "observed_seq": seq})
    unchanged(replica, "volume.promote", {"id": "vo1", "node": "s2", "observed_seq": seq - 1}, "conflict")  # another lease
    replica.ok("volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE, "disk_state": "Inconsistent"})
    unchanged(replica, "volume.promote", {"id": "vo1", "node": "s2", "observed_seq": seq}, "conflict")  # half-synced
    replica.ok("volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE})
    unchanged(replica, "volume.promote", {"id": "vo1", "node": "s1", "observed_seq": seq}, "conflict")  # already primary
    replica.ok("volume.promote", {"id": "vo1", "node": "s2", "observed_seq": seq})
    promoted = replica.state.volumes["vo1"]
    assert promoted["node"] == "s2" and promoted["replica"]["primary"] == "s2"
    assert promoted["replica"]["promoted"]["from"] == "s1" and promoted["observed"]["exported_to"] == []
    # the new primary's agent reports it from now on, the old one may not
    replica.ok("volume.report", {"id": "vo1", "node": "s2", "present": True, "size_bytes": 10 * GIB})
    unchanged(replica, "volume.report", {"id": "vo1", "node": "s1", "present": True, "size_bytes": 10 * GIB}, "conflict")


def test_the_leader_promotes_the_secondary_once_the_primary_is_lost_and_waits_otherwise() -> None:
    replica = drbd_cluster()
    volume(replica, "vo1")
    volume(replica, "vo2")
    replica.ok("volume.replica_report", {"id": "vo1", "node": "s2", **UPTODATE})
    replica.ok("volume.replica_report", {"id": "vo2", "node": "s2", **UPTODATE, "disk_state": "Outdated"})
    env, manager = FakeEnv(replica), Manager(T)
    advance(env, manager, 3, ("n1", "s1", "s2"))
    assert replica.state.volumes["vo1"]["replica"]["primary"] == "s1"
    advance(env, manager, 8, ("n1", "s2"))  # s1 stops renewing: suspect, down, but not lost yet
    assert replica.state.nodes["s1"]["status"] == "down" and replica.state.volumes["vo1"]["replica"]["primary"] == "s1"
    advance(env, manager, 20, ("n1", "s2"))  # stale for fence_after + failover_margin: lost
    assert replica.state.volumes["vo1"]["replica"]["primary"] == "s2" and replica.state.volumes["vo1"]["node"] == "s2"
    assert replica.state.volumes["vo2"]["replica"]["primary"] == "s1"  # its copy is Outdated: never handed out
    assert "Outdated" in manager.promotion_waits["vo2"]


def test_plan_promotions_needs_a_renewing_secondary() -> None:
    nodes = {"s1": {"status": "down"}, "s2": {"status": "up"}}
    vol = {"state": "attached", "replica": {"nodes": ["s1", "s2"], "primary": "s1", "sides": {"s2": UPTODATE}}}
    assert plan_promotions(nodes, {"v": vol}, {"s1": 7}) == ([("v", "s2", 7)], [])
    promote, waiting = plan_promotions(nodes, {"v": vol}, {"s1": 7}, renewing={"n1"})
    assert promote == [] and "s2" in waiting[0][1]
    assert plan_promotions(nodes, {"v": vol}, {}) == ([], [])
