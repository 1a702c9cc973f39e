"""The real OpenStack clients against a real 3-node cluster (libvirt's test driver):
the ``openstack`` CLI (python-openstackclient 10.5) as a subprocess and openstacksdk
4.22 in-process, each against a different node than the one that made the objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.cluster.harness import LocalCluster, wait_for
from tests.openstack.cloud import Cloud, set_up

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = tmp_path_factory.mktemp("openstack")
    cluster = LocalCluster(root, first_host=220)
    try:
        cluster.init(3)
        yield set_up(cluster, root)
    finally:
        cluster.close()


def nova(cloud: Cloud, token: str, path: str, node: str = "node1") -> httpx.Response:
    return httpx.get(f"{cloud.cluster.nodes[node].url}/compute/v2.1{path}", headers={"X-Auth-Token": token}, timeout=20)


def server_status(cloud: Cloud, token: str, server_id: str) -> str:
    return str(nova(cloud, token, f"/servers/{server_id}", node="node2").json()["server"]["status"])


def test_the_catalog_names_the_node_that_answered(cloud: Cloud) -> None:
    for node in ("node1", "node3"):
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": "alice", "password": "alice-pass-1"}}}, "scope": {"project": {"id": "user-alice"}}}}
        reply = httpx.post(f"{cloud.auth_url(node)}/v3/auth/tokens", json=body, timeout=20)
        assert reply.status_code == 201, reply.text
        urls = [e["url"] for s in reply.json()["token"]["catalog"] for e in s["endpoints"]]
        assert urls and all(url.startswith(cloud.cluster.nodes[node].url + "/") for url in urls)
        assert httpx.get(urls[1], timeout=10).status_code == 200  # compute's version document, reachable


def test_openstack_cli_server_lifecycle(cloud: Cloud) -> None:
    assert [i["Name"] for i in cloud.cli_json("alice", "image", "list")] == ["cirros"]
    assert {f["Name"] for f in cloud.cli_json("alice", "flavor", "list")} == {"tiny", "big"}
    assert [n["Name"] for n in cloud.cli_json("alice", "network", "list")] == ["public"]

    created = cloud.cli_json("alice", "server", "create", "--flavor", "tiny", "--image", "cirros", "--network", "public", "--wait", "web1")
    assert created["status"] == "ACTIVE" and created["addresses"]["public"][0].startswith("192.0.2.")
    server_id = created["id"]
    token = cloud.token("alice", node="node2")
    assert [(s["Name"], s["Status"]) for s in cloud.cli_json("alice", "server", "list")] == [("web1", "ACTIVE")]
    shown = cloud.cli_json("alice", "server", "show", "web1")
    assert (shown["id"], shown["flavor"], shown["project_id"]) == (server_id, "tiny (tiny)", "user-alice")

    cloud.cli("alice", "server", "stop", "web1")
    wait_for(lambda: server_status(cloud, token, server_id) == "SHUTOFF", 30, what="server SHUTOFF")
    cloud.cli("alice", "server", "start", "web1")
    wait_for(lambda: server_status(cloud, token, server_id) == "ACTIVE", 30, what="server ACTIVE again")
    cloud.cli("alice", "server", "reboot", "--wait", "web1")
    cloud.cli("alice", "server", "reboot", "--hard", "--wait", "web1")
    assert server_status(cloud, token, server_id) == "ACTIVE"

    console = cloud.cli_json("alice", "console", "url", "show", "--novnc", "web1")
    assert console["type"] == "novnc" and console["url"] == f"{cloud.cluster.nodes['node2'].url}/ui/vms/{server_id}/console"

    volume = cloud.cli_json("alice", "volume", "create", "--size", "1", "data1")
    wait_for(lambda: [v["Status"] for v in cloud.cli_json("alice", "volume", "list")] == ["available"], 30, interval=0.5, what="volume available")
    cloud.cli("alice", "server", "add", "volume", "web1", "data1")
    [listed] = cloud.cli_json("alice", "volume", "list")
    assert (listed["ID"], listed["Status"]) == (volume["id"], "in-use")
    assert [a["server_id"] for a in listed["Attached to"]] == [server_id]

    cloud.cli("alice", "server", "delete", "--wait", "web1")
    assert cloud.cli_json("alice", "server", "list") == []
    assert nova(cloud, token, f"/servers/{server_id}").status_code == 404
    assert [v["Status"] for v in cloud.cli_json("alice", "volume", "list")] == ["available"]  # released with its server


# the SDK's own deprecation notices (e.g. about its InfluxDB support) are not ours to fix
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*", "ignore::DeprecationWarning:openstack.*", "ignore:::keystoneauth1.*")
def test_openstacksdk(cloud: Cloud) -> None:
    conn = cloud.sdk("carol", node="node3")
    try:
        server = conn.create_server("sdk1", image="cirros", flavor="tiny", network="public", wait=True, timeout=60)
        assert server.status == "ACTIVE" and server.addresses["public"][0]["addr"].startswith("192.0.2.")
        assert [s.name for s in conn.compute.servers()] == ["sdk1"]
        console: Any = conn.compute.get_server_console_url(server, "novnc")
        assert console["url"].startswith(cloud.cluster.nodes["node3"].url + "/ui/vms/")
        assert conn.delete_server("sdk1", wait=True, timeout=60) is True
        assert list(conn.compute.servers()) == []
    finally:
        conn.close()


def test_authorization_between_users_revocation_and_quota(cloud: Cloud) -> None:
    alice_id = cloud.cli_json("alice", "server", "create", "--flavor", "tiny", "--image", "cirros", "--network", "public", "mine")["id"]
    bob = cloud.token("bob", node="node1")
    assert nova(cloud, bob, "/servers/detail", node="node3").json()["servers"] == []
    assert nova(cloud, bob, f"/servers/{alice_id}", node="node2").status_code == 404
    assert cloud.cli("bob", "server", "show", alice_id, check=False).returncode != 0

    over = cloud.cli("bob", "server", "create", "--flavor", "big", "--image", "cirros", "--network", "public", "huge", check=False)
    assert over.returncode != 0 and "403" in over.stderr and "pool small allows vcpus=2" in over.stderr
    assert cloud.cli_json("bob", "server", "list") == []

    alice = cloud.token("alice", node="node1")
    assert nova(cloud, alice, "/servers", node="node3").status_code == 200
    revoked = httpx.delete(f"{cloud.auth_url('node1')}/v3/auth/tokens", headers={"X-Auth-Token": alice, "X-Subject-Token": alice}, timeout=20)
    assert revoked.status_code == 204
    wait_for(lambda: nova(cloud, alice, "/servers", node="node3").status_code == 401, 10, what="the revocation on node3")
    assert nova(cloud, alice, "/servers", node="node1").json()["unauthorized"]["code"] == 401
