"""Volumes on a real cluster whose storage nodes each run a private tgtd: the storage
agent creates the file, exports it to the node of the VM it is attached to only (checked
with qemu's own initiator, CHAP derived from the cluster secret), removes the export on
detach, resizes offline and deletes it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from cloudd.ops.storage import node_initiator, volume_target
from cloudd.storage_agent import chap_credentials
from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
GIB = 1 << 30


@pytest.fixture(scope="module")
def storage_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for tool in ("tgtd", "tgtadm", "qemu-io"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install.sh installs tgt and qemu-utils)")
    c = LocalCluster(tmp_path_factory.mktemp("storage"), first_host=101, iscsi=True)
    try:
        yield c.init(3)
    finally:
        c.close()


def login_io(cluster: LocalCluster, volume_id: str, initiator: str, *commands: str) -> subprocess.CompletedProcess[str]:
    with cluster.api("node1") as admin:
        node = admin.get(f"/api/v1/volumes/{volume_id}").json()["node"]
        portal = admin.get(f"/api/v1/nodes/{node}").json()["storage"]["portal"]
    secret = (cluster.nodes["node1"].data_dir / "cluster.secret").read_text().strip()
    user, password = chap_credentials(secret, volume_id)
    opts = (
        f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={portal},file.target={volume_target(volume_id)},file.lun=1,"
        f"file.initiator-name={initiator},file.user={user},file.password-secret=chap"
    )
    args = ["qemu-io", "--object", f"secret,id=chap,data={password}", "--image-opts", opts]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def volume(client: httpx.Client, ref: str) -> dict[str, Any]:
    return client.get(f"/api/v1/volumes/{ref}").json()


def test_a_volume_is_exported_to_its_vm_node_only_and_follows_attach_detach_resize_delete(storage_cluster: LocalCluster) -> None:
    cluster = storage_cluster
    admin = cluster.api("node1")
    pool_dir = cluster.root / "node2-volumes"
    reply = admin.post("/api/v1/storage-pools", json={"name": "vols", "node": "node2", "backend": "file", "config": {"path": str(pool_dir)}})
    assert reply.status_code == 201, reply.text
    wait_for(lambda: admin.get("/api/v1/storage-pools").json()["items"][0]["capacity"], what="pool capacity")
    assert admin.post("/api/v1/users", json={"name": "vera", "password": "vera-pass-1"}).status_code == 201
    token = httpx.post(cluster.nodes["node3"].url + "/api/v1/auth/login", json={"username": "vera", "password": "vera-pass-1"}).json()["token"]
    vera = cluster.api("node3", token)
    assert admin.post("/api/v1/flavors", json={"name": "vol-small", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).status_code == 201

    # bad input: nothing created
    for body, code in (({"name": "x", "size_gb": 0}, 400), ({"name": "x", "size_gb": 60000}, 507), ({"name": "x", "size_gb": 10**6}, 400), ({"name": "x", "size_gb": 1, "pool": "nope"}, 404)):
        reply = vera.post("/api/v1/volumes", json=body)
        assert reply.status_code == code, (body, reply.text)
    assert vera.get("/api/v1/volumes").json()["total"] == 0

    created = vera.post("/api/v1/volumes", json={"name": "data", "size_gb": 0.0625})
    assert created.status_code == 202 and created.headers["Location"].startswith("/api/v1/tasks/")
    vid = created.json()["id"]
    wait_for(lambda: volume(vera, vid)["state"] == "available", what="volume available")
    assert (pool_dir / f"{vid}.raw").stat().st_size == GIB // 16
    stranger = node_initiator("nobody")
    refused = login_io(cluster, vid, stranger, "read 0 4k")
    assert refused.returncode != 0  # not exported to anyone while detached

    vm = vera.post("/api/v1/vms", json={"name": "vol-vm", "flavor": "vol-small", "power": "stopped"}).json()
    wait_for(lambda: vera.get(f"/api/v1/vms/{vm['id']}").json()["node"], what="VM placed")
    vm_node = vera.get(f"/api/v1/vms/{vm['id']}").json()["node"]
    reply = vera.post(f"/api/v1/volumes/{vid}/attach", json={"vm": "vol-vm"})
    assert reply.status_code == 202, reply.text
    wait_for(lambda: volume(vera, vid)["observed"]["exported_to"] == [node_initiator(vm_node)], what="export to the VM's node")
    written = login_io(cluster, vid, node_initiator(vm_node), "write -P 0x42 0 1M", "read -P 0x42 0 1M")
    assert written.returncode == 0 and "read 1048576/1048576" in written.stdout, written.stderr
    other = next(n for n in cluster.nodes if n != vm_node)
    fenced = login_io(cluster, vid, node_initiator(other), "read 0 4k")
    assert fenced.returncode != 0 and "Target not found(515)" in fenced.stderr
    assert vera.delete(f"/api/v1/volumes/{vid}").status_code == 409  # attached

    # offline resize (its VM is stopped): grows, data kept
    reply = vera.post(f"/api/v1/volumes/{vid}/resize", json={"size_gb": 0.125})
    assert reply.status_code == 202, reply.text
    wait_for(lambda: volume(vera, vid)["state"] == "attached" and volume(vera, vid)["observed"]["size_bytes"] == GIB // 8, what="resized")
    wait_for(lambda: volume(vera, vid)["observed"]["exported_to"] == [node_initiator(vm_node)], what="exported again")
    grown = login_io(cluster, vid, node_initiator(vm_node), "length", "read -P 0x42 0 1M")
    assert "128 MiB" in grown.stdout and grown.returncode == 0, grown.stdout + grown.stderr
    assert vera.post(f"/api/v1/volumes/{vid}/resize", json={"size_gb": 0.0625}).status_code == 400  # shrink needs force

    assert vera.post(f"/api/v1/volumes/{vid}/detach", json={}).status_code == 202
    wait_for(lambda: volume(vera, vid)["state"] == "available" and volume(vera, vid)["observed"]["exported_to"] == [], what="export removed")
    gone = login_io(cluster, vid, node_initiator(vm_node), "read 0 4k")
    assert gone.returncode != 0

    task = vera.delete(f"/api/v1/volumes/{vid}").json()["task"]["id"]
    wait_for(lambda: vera.get(f"/api/v1/tasks/{task}").json()["state"] == "succeeded", what="volume deleted")
    assert vera.get(f"/api/v1/volumes/{vid}").status_code == 404
    assert not (pool_dir / f"{vid}.raw").exists()
