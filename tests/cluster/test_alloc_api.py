"""Allocation through the API of a follower: settings, capacity, explained placement,
rebalance planning, anti-affinity and pinning on real nodes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster]


def test_allocation_settings_capacity_placement_and_rebalance(shared_cluster: LocalCluster) -> None:
    follower = next(n for n in ("node1", "node2", "node3") if n != shared_cluster.leader())
    admin = shared_cluster.api(follower)
    assert admin.patch("/api/v1/cluster/settings", json={"policy": "magic"}).status_code == 400
    settings = admin.patch("/api/v1/cluster/settings", json={"policy": "usage", "cpu_ratio": 2.0})
    assert settings.status_code == 200 and settings.json()["policy"] == "usage" and settings.json()["cpu_ratio"] == 2.0
    index = {"X-Cloudd-Min-Index": settings.headers["X-Cloudd-Index"]}
    assert admin.get("/api/v1/cluster/settings", headers=index).json()["shared_vm_storage"] is False
    reply = admin.post("/api/v1/vms", json={"name": "needs-shared", "vcpus": 1, "ram_mb": 64, "disk_gb": 1, "ha": True})
    assert reply.status_code == 400 and "shared storage" in reply.json()["error"]["message"]
    flavor = admin.post("/api/v1/flavors", json={"name": "aa", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    assert flavor.status_code == 201
    created = [admin.post("/api/v1/vms", json={"name": f"aa{i}", "flavor": "aa", "group": "aa"}, headers={"X-Cloudd-Min-Index": flavor.headers["X-Cloudd-Index"]}) for i in range(4)]
    assert all(r.status_code == 202 for r in created), [r.text for r in created]

    def placed() -> dict[str, Any] | None:
        vms = {v["name"]: v for v in admin.get("/api/v1/vms", params={"all": "true"}).json()["items"] if v["name"].startswith("aa")}
        return vms if vms["aa3"]["state_reason"] and vms["aa3"]["state"] == "pending" and all(vms[f"aa{i}"]["node"] for i in range(3)) else None

    vms = wait_for(placed, timeout=30, what="three placed, the fourth waiting")
    assert len({vms[f"aa{i}"]["node"] for i in range(3)} ) == 3  # one per node: anti-affinity
    assert "anti-affinity group aa" in vms["aa3"]["state_reason"]
    explained = admin.get(f"/api/v1/vms/{vms['aa3']['id']}/placement").json()
    assert explained["node"] is None and len(explained["refused"]) == 3 and explained["policy"] == "usage"
    free = admin.get(f"/api/v1/vms/{vms['aa0']['id']}/placement").json()
    assert free["node"] == vms["aa0"]["node"] and free["candidates"][0]["total"] > 0  # as if placed anew: its own node is fine
    capacity = admin.get("/api/v1/cluster/capacity", params={"flavor": "aa"}).json()
    assert capacity["flavor"]["fits"] > 3 and set(capacity["flavor"]["per_node"]) == {"node1", "node2", "node3"}
    # losing any node strands its aa VM: the group already holds a VM on every other node
    assert capacity["n_plus_one"]["ok"] is False
    assert capacity["n_plus_one"]["at_risk"] == {vms[f"aa{i}"]["node"]: [f"aa{i}"] for i in range(3)}
    assert admin.get("/api/v1/cluster/capacity", params={"flavor": "nope"}).status_code == 404
    plan = admin.post("/api/v1/cluster/rebalance", json={"max_moves": 3})
    assert plan.status_code == 200 and plan.json()["moves"] == []  # one per node: already even
    assert admin.post("/api/v1/cluster/rebalance", json={"max_moves": 0}).status_code == 400
    for vm in vms.values():
        assert admin.delete(f"/api/v1/vms/{vm['id']}").status_code == 202
    assert admin.patch("/api/v1/cluster/settings", json={"policy": "resource", "cpu_ratio": 4.0}).status_code == 200
