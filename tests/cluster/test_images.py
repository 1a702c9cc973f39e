"""Images uploaded by users to a real 2-node cluster: checks, ownership, copies between nodes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from click.testing import CliRunner

from cli.cloudctl import cli
from cloudd.config import read_secret
from cloudd.ops.image_store import ImageStore
from cloudd.security import sign_node_request
from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("images"), first_host=70)
    try:
        yield c.init(2)
    finally:
        c.close()


@pytest.fixture(scope="module")
def users(two_nodes: LocalCluster) -> dict[str, httpx.Client]:
    with two_nodes.api("node1") as admin:
        for name in ("erin", "frank"):
            admin.post("/api/v1/users", json={"name": name, "password": f"{name}-pass-1"}).raise_for_status()
    clients = {}
    for name in ("erin", "frank"):
        token = httpx.post(two_nodes.nodes["node1"].url + "/api/v1/auth/login", json={"username": name, "password": f"{name}-pass-1"}).json()["token"]
        clients[name] = httpx.Client(base_url=two_nodes.nodes["node1"].url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return clients


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-files")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(root / "good.qcow2"), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(root / "good.qcow2"), "-F", "qcow2", str(root / "backed.qcow2")], check=True)
    return {"good": root / "good.qcow2", "backed": root / "backed.qcow2"}


def upload(client: httpx.Client, name: str, path: Path, fmt: str = "qcow2", base_url: str | None = None) -> tuple[dict[str, Any], httpx.Response]:
    created = client.post("/api/v1/images", json={"name": name, "format": fmt, "upload": True})
    assert created.status_code == 201, created.text
    image = created.json()
    assert image["state"] == "uploading" and image["public"] is False
    reply = client.put(
        f"{base_url or ''}/api/v1/images/{image['id']}/file",
        content=path.read_bytes(),
        headers={"Content-Type": "application/octet-stream", "X-Cloudd-Min-Index": created.headers["X-Cloudd-Index"]},
    )
    return image, reply


def node_get(cluster: LocalCluster, as_node: str, to_node: str, path: str) -> httpx.Response:
    secret = read_secret(cluster.nodes[as_node].data_dir)
    header = sign_node_request(secret, as_node, "GET", path, b"")
    return httpx.get(cluster.nodes[to_node].url + path, headers={"X-Cloudd-Node": header}, timeout=30)


def declared_too_big(cluster: LocalCluster, client: httpx.Client, path: str) -> bytes:
    """Announce 100 GiB (h11 would not let httpx lie) and read the status line."""
    host, port = cluster.nodes["node1"].api_addr.rsplit(":", 1)
    head = f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {client.headers['Authorization']}\r\nContent-Length: {100 << 30}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + b"x" * 1000)
        return sock.recv(100)


def test_a_user_uploads_a_qcow2_and_it_becomes_ready_on_the_receiving_node(two_nodes: LocalCluster, users: dict[str, httpx.Client], files: dict[str, Path]) -> None:
    erin = users["erin"]
    image, reply = upload(erin, "cloud", files["good"])
    assert reply.status_code == 200, reply.text
    ready = reply.json()
    data = files["good"].read_bytes()
    assert ready["state"] == "ready" and ready["copies"] == ["node1"]
    assert ready["sha256"] == hashlib.sha256(data).hexdigest() and ready["size_bytes"] == len(data)
    assert ready["size_gb"] == 0.063  # 64 MiB, rounded up
    assert (two_nodes.nodes["node1"].data_dir / "images" / f"{image['id']}.qcow2").read_bytes() == data
    shown = erin.get(two_nodes.nodes["node2"].url + f"/api/v1/images/{image['id']}", params={"min_index": reply.headers["X-Cloudd-Index"]})
    assert shown.status_code == 200 and shown.json()["state"] == "ready"
    assert erin.get("/api/v1/images/cloud").json()["id"] == image["id"]
    again = erin.put(f"/api/v1/images/{image['id']}/file", content=data)
    assert again.status_code == 409 and again.json()["error"]["details"] == {"state": "ready"}


def test_a_qcow2_with_a_backing_file_is_refused_and_nothing_remains(two_nodes: LocalCluster, users: dict[str, httpx.Client], files: dict[str, Path]) -> None:
    erin = users["erin"]
    image, reply = upload(erin, "sneaky", files["backed"])
    assert reply.status_code == 400, reply.text
    assert "backing file" in reply.json()["error"]["message"]
    images_dir = two_nodes.nodes["node1"].data_dir / "images"
    assert not [p for p in images_dir.iterdir() if p.name.startswith(image["id"])]
    failed = erin.get(f"/api/v1/images/{image['id']}").json()
    assert failed["state"] == "error" and "backing file" in failed["error"]
    assert erin.delete(f"/api/v1/images/{image['id']}").status_code == 200


def test_bad_upload_requests(two_nodes: LocalCluster, users: dict[str, httpx.Client]) -> None:
    erin = users["erin"]
    assert erin.post("/api/v1/images", json={"name": "pub", "format": "qcow2", "upload": True, "public": True}).status_code == 403
    assert erin.post("/api/v1/images", json={"name": "p", "format": "qcow2", "path": "/x.qcow2", "size_gb": 1}).status_code == 403
    assert erin.post("/api/v1/images", json={"name": "k", "format": "kernel", "upload": True}).status_code == 400
    assert erin.post("/api/v1/images", json={"name": "n", "format": "qcow2"}).status_code == 400
    created = erin.post("/api/v1/images", json={"name": "huge", "format": "raw", "upload": True}).json()
    assert declared_too_big(two_nodes, erin, f"/api/v1/images/{created['id']}/file").startswith(b"HTTP/1.1 413")
    not_iso = erin.post("/api/v1/images", json={"name": "fake-iso", "format": "iso", "upload": True}).json()
    refused = erin.put(f"/api/v1/images/{not_iso['id']}/file", content=bytes(40_000))
    assert refused.status_code == 400 and "CD001" in refused.json()["error"]["message"]


def test_other_users_get_404(two_nodes: LocalCluster, users: dict[str, httpx.Client], files: dict[str, Path]) -> None:
    erin, frank = users["erin"], users["frank"]
    created = erin.post("/api/v1/images", json={"name": "mine", "format": "qcow2", "upload": True})
    image_id = created.json()["id"]
    index = {"X-Cloudd-Min-Index": created.headers["X-Cloudd-Index"]}
    assert frank.put(f"/api/v1/images/{image_id}/file", content=files["good"].read_bytes(), headers=index).status_code == 404
    assert frank.get(f"/api/v1/images/{image_id}").status_code == 404
    assert frank.get(f"/api/v1/images/{image_id}/file").status_code == 404
    assert frank.delete(f"/api/v1/images/{image_id}").status_code == 404
    assert image_id not in [i["id"] for i in frank.get("/api/v1/images").json()["items"]]
    assert erin.get(f"/api/v1/images/{image_id}").json()["state"] == "uploading"


def test_node2_fetches_a_verified_copy_from_node1_then_the_image_is_deleted(two_nodes: LocalCluster, users: dict[str, httpx.Client], files: dict[str, Path]) -> None:
    erin = users["erin"]
    image, reply = upload(erin, "shared", files["good"])
    assert reply.status_code == 200, reply.text
    ready = reply.json()
    path = f"/api/v1/images/{image['id']}/file"

    signed = node_get(two_nodes, "node2", "node1", path)
    assert signed.status_code == 200 and hashlib.sha256(signed.content).hexdigest() == ready["sha256"]
    assert node_get(two_nodes, "node2", "node2", path).status_code == 404  # node2 holds no copy: nodes get no relay

    addrs = {n: node.api_addr for n, node in two_nodes.nodes.items()}
    store = ImageStore.for_node(two_nodes.root / "node2-store", "node2", read_secret(two_nodes.nodes["node2"].data_dir), addrs.get)
    local = Path(asyncio.run(store.local_path(ready)))
    assert hashlib.sha256(local.read_bytes()).hexdigest() == ready["sha256"] and store.unreported == {image["id"]}

    relayed = erin.get(two_nodes.nodes["node2"].url + path, params={"min_index": reply.headers["X-Cloudd-Index"]})
    assert relayed.status_code == 200 and relayed.content == files["good"].read_bytes()

    deleted = erin.delete(f"/api/v1/images/{image['id']}")
    assert deleted.status_code == 200, deleted.text
    assert not (two_nodes.nodes["node1"].data_dir / "images" / f"{image['id']}.qcow2").exists()
    assert erin.get(f"/api/v1/images/{image['id']}").status_code == 404
    assert asyncio.run(store.prune({})) == [f"{image['id']}.qcow2"]


def test_cloudctl_image_upload_and_show(two_nodes: LocalCluster, files: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "cloudctl.json"
    runner = CliRunner()

    def ctl(*args: str) -> Any:
        return runner.invoke(cli, ["--config", str(config), "--endpoint", two_nodes.nodes["node2"].url, *args], catch_exceptions=False)

    assert ctl("login", "--username", "admin", "--password", two_nodes.password).exit_code == 0
    result = ctl("-o", "json", "image", "upload", "cli-cloud", str(files["good"]), "--format", "qcow2", "--public")
    assert result.exit_code == 0, result.output
    image = json.loads(result.stdout)
    assert image["state"] == "ready" and image["public"] is True and image["copies"] == ["node2"]
    shown = ctl("image", "show", "cli-cloud")
    assert shown.exit_code == 0 and image["sha256"] in shown.output

    refused = ctl("image", "upload", "cli-bad", str(files["backed"]), "--format", "qcow2")
    assert refused.exit_code == 1 and "backing file" in refused.output
    listed = json.loads(ctl("-o", "json", "image", "list").stdout)
    assert "cli-bad" not in [i["name"] for i in listed]
    wait_for(lambda: ctl("image", "delete", "cli-cloud").exit_code == 0, what="image deleted")
