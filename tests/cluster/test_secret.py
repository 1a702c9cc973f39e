"""A node with the wrong cluster secret cannot join or disturb the cluster."""

from __future__ import annotations

import shutil
import socket
import time

import httpx
import orjson
import pytest

from cloudd.config import write_secret
from tests.cluster.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_a_node_with_the_wrong_secret_is_refused(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    term = cluster.status(leader)["term"]
    rogue = cluster.new_node("rogue")
    rogue.data_dir.mkdir(parents=True)
    config = orjson.loads((cluster.nodes["node3"].data_dir / "node.json").read_bytes())
    config.update(name="rogue", api_addr=rogue.api_addr, raft_addr=rogue.raft_addr)
    (rogue.data_dir / "node.json").write_bytes(orjson.dumps(config))
    write_secret(rogue.data_dir, "not-the-cluster-secret")
    cluster.start("rogue")
    time.sleep(6)  # many election timeouts of the rogue
    status = cluster.status(leader)
    assert cluster.leader(["node1", "node2", "node3"]) == leader
    assert status["term"] == term, "the rogue forced an election"
    assert "rogue" not in [m["name"] for m in status["members"]]
    assert status["raft"]["voters"] == sorted(cluster.nodes[n].raft_addr for n in ("node1", "node2", "node3"))
    health = httpx.get(rogue.url + "/healthz", timeout=5)
    assert health.status_code == 503 and health.json()["role"] != "leader"
    # it learned nothing: not even the admin's token works there
    assert httpx.get(rogue.url + "/api/v1/cluster", headers={"Authorization": f"Bearer {cluster.token}"}, timeout=5).status_code == 401
    cluster.kill9("rogue")
    shutil.rmtree(rogue.data_dir)


def test_garbage_on_the_raft_port_changes_nothing(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    term = cluster.status(leader)["term"]
    host, port = cluster.nodes[leader].raft_addr.rsplit(":", 1)
    for payload in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)) * 8):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            time.sleep(0.2)
    time.sleep(1)
    assert cluster.status(leader)["term"] == term
    assert all(cluster.nodes[n].proc.poll() is None for n in ("node1", "node2", "node3"))  # type: ignore[union-attr]
    with cluster.api(leader) as client:
        assert client.post("/api/v1/users", json={"name": "still-works", "password": "pass-word-1"}).status_code == 201


def test_the_raft_port_listens_on_the_cluster_address_only(cluster: LocalCluster) -> None:
    node = cluster.nodes["node2"]
    host, port = node.raft_addr.rsplit(":", 1)
    assert host != "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
