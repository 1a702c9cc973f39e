"""The authorization matrix, driven by the served OpenAPI document.

For every documented operation: anonymous → 401; a user on someone else's object → 404;
a user on an admin operation → 403. Each operation's ``x-cloudd-access`` says which
rule applies, so a new endpoint is covered the moment it is documented. Requests go to a
node that is not the leader. Nothing a refused request touches may change.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import httpx
import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in sorted(doc["paths"].items()):
        for method, op in sorted(item.items()):
            yield method.upper(), path, op


@pytest.fixture(scope="module")
def world(shared_cluster: LocalCluster) -> dict[str, Any]:
    """alice owns one of everything; bob is another user; both in no admin role."""
    admin = shared_cluster.api("node1")
    for name in ("alice", "bob"):
        assert admin.post("/api/v1/users", json={"name": name, "password": f"{name}-pass-1"}).status_code == 201
    assert admin.post("/api/v1/flavors", json={"name": "authz", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).status_code == 201
    assert admin.post("/api/v1/pools", json={"name": "alice-pool"}).status_code == 201
    assert admin.patch("/api/v1/users/alice", json={"pool": "alice-pool"}).status_code == 200
    tokens = {}
    for name in ("alice", "bob"):
        reply = httpx.post(shared_cluster.nodes["node2"].url + "/api/v1/auth/login", json={"username": name, "password": f"{name}-pass-1"})
        assert reply.status_code == 200
        tokens[name] = reply.json()["token"]
    alice = shared_cluster.api("node2", tokens["alice"])
    network = alice.post("/api/v1/networks", json={"name": "secret-net", "subnet": "10.99.0.0/24"})
    assert network.status_code == 201, network.text
    vm = alice.post(
        "/api/v1/vms", json={"name": "secret-vm", "flavor": "authz", "power": "stopped", "networks": [{"network": "secret-net"}]},
        headers={"X-Cloudd-Min-Index": network.headers["X-Cloudd-Index"]},
    )
    assert vm.status_code == 202, vm.text
    (nic,) = vm.json()["nics"]
    index = vm.headers["X-Cloudd-Index"]
    disk = alice.post(f"/api/v1/vms/{vm.json()['id']}/disks", json={"size_gb": 1}, headers={"X-Cloudd-Min-Index": index})
    assert disk.status_code == 202, disk.text
    image = alice.post("/api/v1/images", json={"name": "secret-img", "format": "raw", "upload": True})
    assert image.status_code == 201, image.text
    token = alice.post("/api/v1/tokens", json={"name": "alice-ci"})
    assert token.status_code == 201
    pool = admin.post("/api/v1/storage-pools", json={"name": "authz-pool", "node": "node1", "backend": "file", "config": {"path": str(shared_cluster.root / "volumes")}})
    assert pool.status_code == 201, pool.text
    wait_for(lambda: admin.get("/api/v1/storage-pools").json()["items"][0]["capacity"], what="the pool's capacity")
    volume = alice.post("/api/v1/volumes", json={"name": "secret-vol", "size_gb": 1})
    assert volume.status_code == 202, volume.text
    doc = httpx.get(shared_cluster.nodes["node2"].url + "/api/v1/openapi.json").json()
    return {
        "doc": doc,
        "tokens": tokens,
        "params": {
            "ref": {"/vms/": vm.json()["id"], "/images/": image.json()["id"], "/volumes/": volume.json()["id"], "/networks/": network.json()["id"]},
            "id": nic["port"],
            "port": nic["port"],
            "ip": nic["ips"][0],
            "name": {"/users/": "alice", "/storage-pools/": "authz-pool", "/pools/": "alice-pool", "/nodes/": "node3", "/flavors/": "authz"},
            "token_id": token.json()["token_id"],
            "task_id": vm.json()["task"]["id"],
            "disk_id": disk.json()["disk"]["id"],
            "action": "start",
        },
    }


def fill(path: str, params: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        chosen = params[match.group(1)]
        if isinstance(chosen, dict):
            return next(v for k, v in chosen.items() if k in path)
        return str(chosen)

    return re.sub(r"{(\w+)}", value, path)


def call(cluster: LocalCluster, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("POST", "PUT", "PATCH"):
        return httpx.request(method, cluster.nodes["node2"].url + path, headers=headers, json={}, timeout=20)
    return httpx.request(method, cluster.nodes["node2"].url + path, headers=headers, timeout=20)


def test_the_document_names_who_may_call_every_operation(world: dict[str, Any]) -> None:
    ops = list(operations(world["doc"]))
    assert len(ops) >= 40
    assert {op["x-cloudd-access"] for _, _, op in ops} <= {"public", "user", "owner", "admin", "join"}


def test_anonymous_callers_get_401_everywhere_but_public_operations(shared_cluster: LocalCluster, world: dict[str, Any]) -> None:
    checked = 0
    for method, path, op in operations(world["doc"]):
        if op["x-cloudd-access"] in ("public", "join"):
            continue
        reply = call(shared_cluster, method, fill(path, world["params"]), None)
        assert reply.status_code == 401, (method, path, reply.text)
        assert reply.json()["error"]["code"] == "unauthenticated"
        checked += 1
    assert checked >= 35


def test_users_get_403_on_admin_operations(shared_cluster: LocalCluster, world: dict[str, Any]) -> None:
    admin_ops = [(m, p) for m, p, op in operations(world["doc"]) if op["x-cloudd-access"] == "admin"]
    assert len(admin_ops) >= 10
    for method, path in admin_ops:
        reply = call(shared_cluster, method, fill(path, world["params"]), world["tokens"]["bob"])
        assert reply.status_code == 403, (method, path, reply.text)
        assert reply.json()["error"]["code"] == "forbidden"


def test_users_get_404_on_someone_elses_objects_and_change_nothing(shared_cluster: LocalCluster, world: dict[str, Any]) -> None:
    owner_ops = [(m, p) for m, p, op in operations(world["doc"]) if op["x-cloudd-access"] == "owner"]
    assert len(owner_ops) >= 15
    with shared_cluster.api("node1") as admin:
        before = admin.get("/api/v1/vms", params={"all": "true"}).json()["items"]
        images_before = admin.get("/api/v1/images").json()["items"]
        tokens_before = admin.get("/api/v1/tokens", params={"all": "true"}).json()["items"]
    for method, path in owner_ops:
        reply = call(shared_cluster, method, fill(path, world["params"]), world["tokens"]["bob"])
        assert reply.status_code == 404, (method, path, reply.text)
        assert reply.json()["error"]["code"] == "not_found"
        # the owner does reach it (whatever the answer to an empty body is, it is not 404/403)
        mine = call(shared_cluster, method, fill(path, world["params"]), world["tokens"]["alice"]) if method == "GET" else None
        if mine is not None:
            assert mine.status_code not in (401, 403, 404), (method, path, mine.text)
    with shared_cluster.api("node1") as admin:
        after = admin.get("/api/v1/vms", params={"all": "true"}).json()["items"]
        assert [(v["id"], v["state"], v["disks"], v["iso"]) for v in after] == [(v["id"], v["state"], v["disks"], v["iso"]) for v in before]
        assert admin.get("/api/v1/images").json()["items"] == images_before
        assert [t["id"] for t in admin.get("/api/v1/tokens", params={"all": "true"}).json()["items"]] == [t["id"] for t in tokens_before]


def test_lists_show_users_only_their_own(shared_cluster: LocalCluster, world: dict[str, Any]) -> None:
    bob = shared_cluster.api("node3", world["tokens"]["bob"])
    for path in ("/api/v1/vms", "/api/v1/tasks", "/api/v1/pools", "/api/v1/tokens", "/api/v1/events", "/api/v1/volumes", "/api/v1/networks", "/api/v1/ports", "/api/v1/ips"):
        items = bob.get(path).json()["items"]
        text = str(items)
        assert "secret-vm" not in text and "secret-vol" not in text and "secret-net" not in text and "alice" not in text, (path, items)
    assert bob.get("/api/v1/ports", params={"vm": world["params"]["ref"]["/vms/"]}).status_code == 404
    assert all(i["name"] != "secret-img" for i in bob.get("/api/v1/images").json()["items"])
    reply = bob.get("/api/v1/vms", params={"owner": "alice"})
    assert reply.status_code == 403


def test_a_refusal_inside_the_log_says_its_index_and_leaves_an_event(shared_cluster: LocalCluster, world: dict[str, Any]) -> None:
    """bob revoking alice's token is refused by the command itself: the answer carries the
    log index, and the replicated audit log holds the attempt."""
    token_id = world["params"]["token_id"]
    reply = call(shared_cluster, "DELETE", f"/api/v1/tokens/{token_id}", world["tokens"]["bob"])
    assert reply.status_code == 404 and reply.headers["X-Cloudd-Index"].isdigit()
    with shared_cluster.api("node1") as admin:
        events = admin.get("/api/v1/events", params={"op": "token.revoke", "target": token_id, "min_index": reply.headers["X-Cloudd-Index"]}).json()["items"]
    assert events[0]["actor"]["user"] == "bob" and events[0]["outcome"] == "not_found" and events[0]["actor"]["addr"] == "127.0.0.1"
