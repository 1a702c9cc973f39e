"""Flavors, images and VMs through the API of a real cluster (no host driver acts yet)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def users(shared_cluster: LocalCluster) -> dict[str, httpx.Client]:
    with shared_cluster.api("node1") as admin:
        admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
        admin.post("/api/v1/images", json={"name": "busybox", "path": "/var/lib/cloudd/images/busybox.qcow2", "format": "qcow2", "size_gb": 1}).raise_for_status()
        for name in ("erin", "frank"):
            admin.post("/api/v1/users", json={"name": name, "password": f"{name}-pass-1"}).raise_for_status()
    clients = {}
    for name in ("erin", "frank"):
        token = httpx.post(shared_cluster.nodes["node1"].url + "/api/v1/auth/login", json={"username": name, "password": f"{name}-pass-1"}).json()["token"]
        clients[name] = httpx.Client(base_url=shared_cluster.nodes["node2"].url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
    wait_for(lambda: all(c.get("/api/v1/auth/whoami").status_code == 200 for c in clients.values()), what="tokens replicated")
    return clients


def vm_of(client: httpx.Client, ref: str, index: str | None = None) -> dict[str, Any]:
    reply = client.get(f"/api/v1/vms/{ref}", params={"min_index": index} if index else {})
    reply.raise_for_status()
    return reply.json()


def test_a_user_creates_a_vm_and_the_leader_places_it(shared_cluster: LocalCluster, users: dict[str, httpx.Client]) -> None:
    erin = users["erin"]
    reply = erin.post("/api/v1/vms", json={"name": "web1", "flavor": "tiny", "image": "busybox"})
    assert reply.status_code == 202, reply.text
    vm = reply.json()
    assert vm["state"] == "pending" and vm["owner"] == "erin" and vm["ram_mb"] == 128
    placed = wait_for(lambda: (v := vm_of(erin, "web1"))["node"] is not None and v, what="VM placed")
    assert placed["node"] in shared_cluster.nodes
    listed = erin.get("/api/v1/vms").json()["items"]
    assert [v["name"] for v in listed] == ["web1"]


def test_other_users_cannot_see_or_touch_it(shared_cluster: LocalCluster, users: dict[str, httpx.Client]) -> None:
    erin, frank = users["erin"], users["frank"]
    created = erin.post("/api/v1/vms", json={"name": "private1", "flavor": "tiny"})
    vm_id = created.json()["id"]
    index = created.headers["X-Cloudd-Index"]
    assert frank.get(f"/api/v1/vms/{vm_id}", params={"min_index": index}).status_code == 404
    assert frank.get("/api/v1/vms/private1").status_code == 404
    for action in ("start", "stop", "reset"):
        assert frank.post(f"/api/v1/vms/{vm_id}/{action}").status_code == 404
    assert frank.delete(f"/api/v1/vms/{vm_id}").status_code == 404
    assert all(v["owner"] == "frank" for v in frank.get("/api/v1/vms", params={"all": "true"}).json()["items"])
    assert frank.get("/api/v1/vms", params={"owner": "erin"}).status_code == 403
    assert vm_of(erin, vm_id)["owner"] == "erin"


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"name": "x1", "flavor": "nope"}, 404, "flavor nope"),
        ({"name": "x2", "flavor": "tiny", "image": "nope"}, 404, "image nope"),
        ({"name": "Bad_Name", "flavor": "tiny"}, 400, "name"),
        ({"name": "x3", "vcpus": 0, "ram_mb": 128, "disk_gb": 1}, 400, "vcpus"),
        ({"name": "x4", "vcpus": 1, "ram_mb": -1, "disk_gb": 1}, 400, "ram_mb"),
        ({"name": "x5", "vcpus": 4096, "ram_mb": 128, "disk_gb": 1}, 400, "more than any hypervisor"),
        ({"name": "x6", "vcpus": 1, "ram_mb": 1 << 30, "disk_gb": 1}, 400, "more than any hypervisor"),
        ({"name": "x7"}, 400, "give a flavor"),
        ({"name": "x8", "flavor": "tiny", "owner": "frank"}, 403, "admins"),
        ({"name": "x9", "flavor": "tiny", "colour": "red"}, 400, "unknown field"),
        ({"name": "x10", "flavor": "tiny", "ssh_keys": ["hello"]}, 400, "SSH"),
    ],
)
def test_bad_vm_requests_are_4xx_and_create_nothing(users: dict[str, httpx.Client], body: dict, status: int, words: str) -> None:
    erin = users["erin"]
    before = sorted(v["id"] for v in erin.get("/api/v1/vms").json()["items"])
    reply = erin.post("/api/v1/vms", json=body)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]["message"]
    assert sorted(v["id"] for v in erin.get("/api/v1/vms").json()["items"]) == before


def test_forbidden_transitions_are_409_with_the_state(users: dict[str, httpx.Client]) -> None:
    erin = users["erin"]
    vm_id = erin.post("/api/v1/vms", json={"name": "edgy", "flavor": "tiny", "power": "stopped"}).json()["id"]
    reply = erin.post(f"/api/v1/vms/{vm_id}/reset")
    assert reply.status_code == 409
    assert reply.json()["error"]["details"]["state"] in ("pending", "creating", "stopped")
    assert erin.post(f"/api/v1/vms/{vm_id}/explode").status_code == 404
    deleted = erin.delete(f"/api/v1/vms/{vm_id}")
    assert deleted.status_code == 202
    state = deleted.json()["state"]
    if state == "deleting":
        assert erin.post(f"/api/v1/vms/{vm_id}/start").status_code == 409


def test_flavors_and_images_are_managed_by_admins(shared_cluster: LocalCluster, users: dict[str, httpx.Client]) -> None:
    erin = users["erin"]
    assert erin.post("/api/v1/flavors", json={"name": "mine", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).status_code == 403
    assert erin.post("/api/v1/images", json={"name": "etc", "path": "/etc/shadow", "format": "raw", "size_gb": 1}).status_code == 403
    assert "tiny" in [f["name"] for f in erin.get("/api/v1/flavors").json()["items"]]
    image = next(i for i in erin.get("/api/v1/images").json()["items"] if i["name"] == "busybox")
    with shared_cluster.api("node3") as admin:
        assert admin.delete(f"/api/v1/images/{image['id']}").status_code == 409  # web1 uses it
        bad = admin.post("/api/v1/images", json={"name": "rel", "path": "relative/path", "format": "raw", "size_gb": 1})
        assert bad.status_code == 400 and "absolute" in bad.json()["error"]["message"]


def test_the_agent_runs_the_vm_through_its_lifecycle_on_libvirt(users: dict[str, httpx.Client]) -> None:
    erin = users["erin"]
    vm_id = erin.post("/api/v1/vms", json={"name": "cycle", "flavor": "tiny"}).json()["id"]
    running = wait_for(lambda: (v := vm_of(erin, vm_id))["state"] == "running" and v, what="VM running")
    assert running["observed"]["power"] == "running"
    assert erin.post(f"/api/v1/vms/{vm_id}/shutdown").status_code == 202
    wait_for(lambda: vm_of(erin, vm_id)["state"] == "stopped", what="VM stopped")
    assert erin.post(f"/api/v1/vms/{vm_id}/start").status_code == 202
    wait_for(lambda: vm_of(erin, vm_id)["state"] == "running", what="VM running again")
    reset = erin.post(f"/api/v1/vms/{vm_id}/reset")
    assert reset.status_code == 202 and reset.json()["action_seq"] == 1
    wait_for(lambda: vm_of(erin, vm_id)["desired"]["action"] is None, what="reset done")
    assert erin.post(f"/api/v1/vms/{vm_id}/stop").status_code == 202
    wait_for(lambda: vm_of(erin, vm_id)["state"] == "stopped", what="VM forced off")
    assert erin.delete(f"/api/v1/vms/{vm_id}").status_code == 202
    wait_for(lambda: erin.get(f"/api/v1/vms/{vm_id}").status_code == 404, what="VM gone")


def test_extra_disks_and_isos_through_the_api(shared_cluster: LocalCluster, users: dict[str, httpx.Client]) -> None:
    erin, frank = users["erin"], users["frank"]
    with shared_cluster.api("node1") as admin:
        admin.post("/api/v1/images", json={"name": "installer", "path": "/srv/isos/installer.iso", "format": "iso", "size_gb": 1}).raise_for_status()
    vm_id = erin.post("/api/v1/vms", json={"name": "devices", "flavor": "tiny", "swap_mb": 256, "power": "stopped"}).json()["id"]
    wait_for(lambda: vm_of(erin, vm_id)["state"] == "stopped", what="VM defined")
    added = erin.post(f"/api/v1/vms/{vm_id}/disks", json={"size_gb": 2})
    assert added.status_code == 202 and added.json()["disk"]["target"] == "vdc"
    disk_id = added.json()["disk"]["id"]
    assert erin.post(f"/api/v1/vms/{vm_id}/iso", json={"image": "installer"}).status_code == 202
    vm = vm_of(erin, vm_id, added.headers["X-Cloudd-Index"])
    assert vm["swap_mb"] == 256 and [d["id"] for d in vm["disks"]] == [disk_id]
    # someone else's VM is not there; bad input is 4xx and changes nothing
    assert frank.post(f"/api/v1/vms/{vm_id}/disks", json={"size_gb": 1}).status_code == 404
    assert frank.delete(f"/api/v1/vms/{vm_id}/iso").status_code == 404
    assert erin.post(f"/api/v1/vms/{vm_id}/disks", json={"size_gb": -1}).status_code == 400
    assert erin.post(f"/api/v1/vms/{vm_id}/disks", json={"size": 1}).status_code == 400
    assert erin.post(f"/api/v1/vms/{vm_id}/iso", json={"image": "busybox"}).status_code == 400  # not an ISO
    assert erin.post(f"/api/v1/vms/{vm_id}/iso", json={"image": "no-such"}).status_code == 404
    assert erin.delete(f"/api/v1/vms/{vm_id}/disks/nope").status_code == 404
    assert erin.delete(f"/api/v1/vms/{vm_id}/disks/..%2f..").status_code in (400, 404)
    assert [d["id"] for d in vm_of(erin, vm_id)["disks"]] == [disk_id] and vm_of(erin, vm_id)["iso"] is not None
    assert erin.delete(f"/api/v1/vms/{vm_id}/disks/{disk_id}").status_code == 202
    assert erin.delete(f"/api/v1/vms/{vm_id}/iso").status_code == 202
    assert erin.delete(f"/api/v1/vms/{vm_id}/iso").status_code == 409
    vm = vm_of(erin, vm_id)
    assert vm["disks"] == [] and vm["iso"] is None
    history = erin.get("/api/v1/events", params={"target": vm_id}).json()["items"]
    assert all(e["target"] == vm_id for e in history) and history[-1]["op"] == "vm.create"
    assert [e["op"] for e in history if e["outcome"] == "ok"][:4] == ["vm.iso.detach", "vm.disk.remove", "vm.iso.attach", "vm.disk.add"]
    assert history[0]["op"] == "vm.iso.detach" and history[0]["outcome"] == "conflict"  # refused calls are on record too
    assert frank.get("/api/v1/events", params={"target": vm_id}).json()["items"] == []
    assert erin.delete(f"/api/v1/vms/{vm_id}").status_code == 202


def test_the_default_image_is_set_by_admins_and_used_when_none_is_named(shared_cluster: LocalCluster, users: dict[str, httpx.Client]) -> None:
    erin = users["erin"]
    assert erin.post("/api/v1/images/busybox/default").status_code == 403
    with shared_cluster.api("node3") as admin:
        set_ = admin.post("/api/v1/images/busybox/default")
        assert set_.status_code == 200, set_.text
        assert admin.post("/api/v1/images/installer/default").status_code == 400  # an ISO
    image = erin.get("/api/v1/images/busybox", params={"min_index": set_.headers["X-Cloudd-Index"]}).json()
    assert image["default"] is True
    vm = erin.post("/api/v1/vms", json={"name": "defaulted", "flavor": "tiny", "power": "stopped"}).json()
    blank = erin.post("/api/v1/vms", json={"name": "blank", "flavor": "tiny", "image": None, "power": "stopped"}).json()
    assert vm["image"] == image["id"] and blank["image"] is None
    with shared_cluster.api("node1") as admin:
        assert admin.delete("/api/v1/images/busybox/default").status_code == 200
        assert admin.delete("/api/v1/images/busybox/default").status_code == 409
    for v in (vm, blank):
        assert erin.delete(f"/api/v1/vms/{v['id']}").status_code == 202
