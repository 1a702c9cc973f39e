"""What the admin overview derives from the API's answers: alerts and capacity bars."""

from __future__ import annotations

from cloudd.web.ui_admin import alerts_of, node_rows


def test_alerts_name_the_storm_guard_n_plus_one_quorum_and_lost_nodes() -> None:
    cluster = {"cluster": {"alerts": {"failover-storm": {"message": "2 of 3 hypervisors lost at once", "since": 1.0}}}, "has_quorum": False, "leader": None}
    capacity = {"n_plus_one": {"ok": False, "at_risk": {"node2": ["web1", "web2"]}}}
    nodes = [{"name": "node1", "status": "up"}, {"name": "node2", "status": "down"}, {"name": "node3", "status": "suspect"}]
    texts = [(a["level"], a["text"]) for a in alerts_of(cluster, capacity, nodes)]
    assert ("bad", "failover-storm: 2 of 3 hypervisors lost at once") in texts
    assert ("bad", "Raft has no quorum: no change can be committed") in texts and ("bad", "no leader") in texts
    assert ("warn", "N+1 not met: losing a node would leave VMs without room (node2: web1, web2)") in texts
    assert ("bad", "node node2 is down") in texts and ("warn", "node node3 is suspect") in texts
    healthy = alerts_of({"cluster": {}, "has_quorum": True, "leader": {"name": "node1"}}, {"n_plus_one": {"ok": True, "at_risk": {}}}, nodes[:1])
    assert healthy == []


def test_node_rows_chart_allocation_and_use_against_capacity() -> None:
    node = {
        "name": "node1", "status": "up", "last_heartbeat": 98.0, "inventory": {"cpus": 4, "ram_mb": 8192, "disk_gb": 100},
        "usage": {"cpu_pct": 25.0, "ram_used_mb": 2048, "disk_used_gb": 50},
    }
    capacity = {"nodes": [{"node": "node1", "vcpus": {"allocated": 2, "capacity": 4}, "ram_mb": {"allocated": 4096, "capacity": 8192},
                           "disk_gb": {"allocated": 10, "capacity": 100}, "vms": 3}]}
    (row,) = node_rows([node], capacity, now=100.0)
    assert row["lease_age"] == 2.0 and row["vms"] == 3
    cpu, ram, disk = row["bars"]
    assert (cpu["alloc_pct"], cpu["used_pct"]) == (50, 25)
    assert (ram["alloc_pct"], ram["used_pct"]) == (50, 25) and "4.0 of 8.0 GiB allocated, 2.0 GiB used" == ram["text"]
    assert (disk["alloc_pct"], disk["used_pct"]) == (10, 50)
    (storage_only,) = node_rows([{**node, "name": "st1", "usage": {}, "last_heartbeat": None}], capacity, now=100.0)
    assert storage_only["lease_age"] is None and storage_only["vms"] == 0 and storage_only["bars"][0]["alloc_pct"] == 0
