"""Failover with real processes: three ``cloudd serve`` nodes on loopback (libvirt's test
driver). ``kill -9`` one node's daemon and keep it dead: its HA VMs run elsewhere, its
other VMs wait for it; bring it back: it does not run the re-homed VMs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def vms_by_name(api: Any) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in api.get("/api/v1/vms", params={"all": "true", "limit": 1000}).json()["items"]}


def test_a_dead_nodes_ha_vms_run_elsewhere_and_its_return_does_not_restart_them(cluster: LocalCluster) -> None:
    admin = cluster.api("node1")
    assert admin.patch("/api/v1/cluster/settings", json={"shared_vm_storage": True}).status_code == 200
    assert admin.post("/api/v1/flavors", json={"name": "ha", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}).status_code == 201
    for i in range(3):
        reply = admin.post("/api/v1/vms", json={"name": f"ha{i}", "flavor": "ha", "ha": True, "ha_priority": i})
        assert reply.status_code == 202, reply.text
    wait_for(lambda: len(vms_by_name(admin)) == 3 and all(v["state"] == "running" for v in vms_by_name(admin).values()), timeout=60, what="3 VMs running")
    victim = vms_by_name(admin)["ha0"]["node"]
    reply = admin.post("/api/v1/vms", json={"name": "plain", "flavor": "ha", "nodes": [victim]})  # not HA, pinned there
    assert reply.status_code == 202, reply.text
    wait_for(lambda: vms_by_name(admin)["plain"]["state"] == "running", timeout=60, what="the plain VM running")
    survivor = cluster.api(next(n for n in ("node1", "node2", "node3") if n != victim))
    before = vms_by_name(survivor)
    moving = sorted(name for name, v in before.items() if v["node"] == victim and name != "plain")
    cluster.kill9(victim)  # and keep it dead
    killed_at = time.monotonic()

    def rehomed() -> dict[str, Any] | None:
        vms = vms_by_name(survivor)
        return vms if all(vms[n]["node"] != victim and vms[n]["state"] == "running" for n in moving) else None

    after = wait_for(rehomed, timeout=60, what=f"{moving} running elsewhere")
    took = time.monotonic() - killed_at
    assert took >= 6.0, f"re-homed after {took:.1f}s: before fence_after (6 s) had passed"
    for name in moving:
        assert after[name]["recovered"]["from"] == victim
    assert after["plain"]["node"] == victim  # not HA: it waits for its node
    # the dead node comes back: it must not run the re-homed VMs again
    cluster.start(victim)
    cluster.wait_healthy(victim)
    wait_for(lambda: vms_by_name(survivor)["plain"]["state"] == "running" and vms_by_name(survivor)["plain"]["observed"]["ts"], timeout=60, what="the plain VM reported")
    time.sleep(2.0)
    final = vms_by_name(survivor)
    for name in moving:
        assert final[name]["node"] == after[name]["node"] and final[name]["state"] == "running"
        assert f"VM {name}: starting" not in Path(cluster.nodes[victim].log_path).read_text(errors="replace")
