"""Migration through the API of a follower on three real nodes (libvirt's test driver on
each: an offline migration defines the VM on the target and removes it from the source).
Bad requests are 4xx and change nothing; users cannot migrate."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster]


def vm_of(admin: httpx.Client, vm_id: str) -> dict[str, Any]:
    reply = admin.get(f"/api/v1/vms/{vm_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()


def task(admin: httpx.Client, task_id: str) -> dict[str, Any]:
    return admin.get(f"/api/v1/tasks/{task_id}").json()


def test_offline_migration_and_its_refusals(shared_cluster: LocalCluster) -> None:
    follower = next(n for n in ("node1", "node2", "node3") if n != shared_cluster.leader())
    admin = shared_cluster.api(follower)
    created = admin.post("/api/v1/vms", json={"name": "mover", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    assert created.status_code == 202, created.text
    vm_id = created.json()["id"]
    vm = wait_for(lambda: (v := vm_of(admin, vm_id))["state"] == "running" and v, timeout=30, what="the VM running")
    source = vm["node"]
    target = next(n for n in ("node1", "node2", "node3") if n != source)
    other = next(n for n in ("node1", "node2", "node3") if n not in (source, target))

    def refused(body: dict[str, Any], status: int, words: str) -> None:
        before = vm_of(admin, vm_id)
        reply = admin.post(f"/api/v1/vms/{vm_id}/migrate", json=body)
        assert reply.status_code == status and words in reply.json()["error"]["message"], (body, reply.text)
        after = vm_of(admin, vm_id)
        assert (after["node"], after["state"], after.get("migration")) == (before["node"], before["state"], before.get("migration"))

    refused({"node": source, "force": True, "mode": "offline"}, 400, "already")
    refused({"node": target, "mode": "offline"}, 409, "give force")
    refused({"node": target, "mode": "live"}, 409, "offline")  # the VM directory is node-local here
    refused({"node": "nowhere", "force": True, "mode": "offline"}, 404, "nowhere")
    refused({"node": target, "mode": "teleport"}, 400, "mode")
    assert admin.post(f"/api/v1/nodes/{other}/maintenance", json={"enabled": True}).status_code == 200
    refused({"node": other, "force": True, "mode": "offline"}, 409, "maintenance")
    assert admin.post(f"/api/v1/nodes/{other}/maintenance", json={"enabled": False}).status_code == 200
    # users cannot move VMs, not even their own
    admin.post("/api/v1/users", json={"name": "mia", "password": "mia-pass-123"})
    user = httpx.Client(base_url=admin.base_url, timeout=10)
    login = wait_for(lambda: (r := user.post("/api/v1/auth/login", json={"username": "mia", "password": "mia-pass-123"})).status_code == 200 and r, what="mia's login")
    user.headers["Authorization"] = f"Bearer {login.json()['token']}"
    assert user.post(f"/api/v1/vms/{vm_id}/migrate", json={"node": target, "force": True}).status_code in (403, 404)

    moved = admin.post(f"/api/v1/vms/{vm_id}/migrate", json={"node": target, "force": True})
    assert moved.status_code == 202, moved.text
    assert moved.json()["state"] == "migrating" and moved.json()["migration"]["mode"] == "offline"
    task_id = moved.json()["task"]["id"]
    assert moved.headers["Location"] == f"/api/v1/tasks/{task_id}"
    assert admin.delete(f"/api/v1/vms/{vm_id}").status_code == 409  # not while it moves
    done = wait_for(lambda: (t := task(admin, task_id))["state"] != "running" and t, timeout=60, what="the migration's end")
    assert done["state"] == "succeeded", done
    vm = wait_for(lambda: (v := vm_of(admin, vm_id))["node"] == target and v["state"] == "running" and not v.get("leftovers") and v, timeout=30, what="running on the target, the source clean")
    assert vm["migrated"]["from"] == source and vm["migrated"]["mode"] == "offline"
    # the target chooses itself when none is given: never the VM's own node
    again = admin.post(f"/api/v1/vms/{vm_id}/migrate", json={"force": True, "mode": "offline"})
    assert again.status_code == 202 and again.json()["migration"]["target"] != target
    back = wait_for(lambda: (t := task(admin, again.json()["task"]["id"]))["state"] != "running" and t, timeout=60, what="the second migration")
    assert back["state"] == "succeeded", back
    assert admin.delete(f"/api/v1/vms/{vm_id}").status_code == 202
    wait_for(lambda: admin.get(f"/api/v1/vms/{vm_id}").status_code == 404, timeout=30, what="the VM deleted")
