"""Glance, Neutron and Cinder over a fake node: what a user sees, filters, the error
shapes of each service, and version documents without a token."""

from __future__ import annotations

import pytest

from tests.openstack.fake import HOST, NET, Cloud


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


def test_version_documents_are_public_and_absolute(cloud: Cloud) -> None:
    image = cloud.request("GET", "/image")
    assert image.status_code == 300 and image.json()["versions"][0]["links"][0]["href"] == f"{HOST}/image/v2/"
    network = cloud.request("GET", "/network")
    assert network.status_code == 200 and network.json()["versions"][0]["id"] == "v2.0"
    volume = cloud.request("GET", "/volume/v3/")
    assert volume.json()["versions"][0]["links"][0]["href"] == f"{HOST}/volume/v3/"


def test_images_public_and_own_with_filters(cloud: Cloud) -> None:
    cloud.replica.ok("image.create", {"id": "mine1", "name": "mine", "owner": "bob", "public": False, "format": "qcow2"})
    alice, bob = cloud.token("alice"), cloud.token("bob")

    def names(token: str, **params: str) -> list[str]:
        reply = cloud.request("GET", "/image/v2/images", token, params=params)
        assert reply.status_code == 200, reply.text
        return sorted(i["name"] for i in reply.json()["images"])

    assert names(alice) == ["cirros", "debian"] and names(bob) == ["cirros", "debian", "mine"]
    assert names(alice, id="in:img1,mine1") == ["cirros"] and names(bob, id="in:img1,mine1") == ["cirros", "mine"]
    assert names(bob, name="mine") == ["mine"] and names(bob, status="queued") == ["mine"] and names(bob, visibility="private") == ["mine"]
    shown = cloud.request("GET", "/image/v2/images/img1", alice).json()
    assert (shown["status"], shown["visibility"], shown["disk_format"], shown["size"]) == ("active", "public", "qcow2", 1 << 30)
    hidden = cloud.request("GET", "/image/v2/images/mine1", alice)
    assert hidden.status_code == 404 and hidden.json()["itemNotFound"]["code"] == 404
    assert cloud.request("GET", "/image/v2/images", alice, params={"status": "weird"}).status_code == 400


def test_networks_subnets_and_only_ones_own_ports(cloud: Cloud) -> None:
    alice, bob = cloud.token("alice"), cloud.token("bob")
    server_id = cloud.create_server(alice, "web1").json()["server"]["id"]
    cloud.replica.ok("network.create", {"id": "0000bbbb", "name": "lan", "owner": "bob", "subnet": "10.1.0.0/24"})
    networks = cloud.request("GET", "/network/v2.0/networks", alice).json()["networks"]
    assert [(n["id"], n["shared"], n["subnets"]) for n in networks] == [(NET, True, [f"{NET}-v4"])]
    assert sorted(n["name"] for n in cloud.request("GET", "/network/v2.0/networks", bob).json()["networks"]) == ["lan", "public"]
    assert cloud.request("GET", "/network/v2.0/networks", bob, params={"name": "lan"}).json()["networks"][0]["id"] == "0000bbbb"
    subnet = cloud.request("GET", f"/network/v2.0/subnets/{NET}-v4", alice).json()["subnet"]
    assert (subnet["cidr"], subnet["gateway_ip"], subnet["ip_version"]) == ("192.0.2.0/24", "192.0.2.1", 4)
    ports = cloud.request("GET", "/network/v2.0/ports", alice, params={"device_id": server_id}).json()["ports"]
    assert len(ports) == 1 and ports[0]["device_id"] == server_id and ports[0]["fixed_ips"][0]["subnet_id"] == f"{NET}-v4"
    assert cloud.request("GET", "/network/v2.0/ports", bob, params={"device_id": server_id}).json()["ports"] == []
    assert cloud.request("GET", "/network/v2.0/routers", alice).json() == {"routers": []}
    assert cloud.request("GET", "/network/v2.0/floatingips", alice).json() == {"floatingips": []}
    missing = cloud.request("GET", "/network/v2.0/networks/0000bbbb", alice)
    assert missing.status_code == 404 and missing.json()["NeutronError"]["type"] == "HTTPNotFound"
    assert cloud.request("GET", "/network/v2.0/agents", alice).json()["NeutronError"]["type"] == "HTTPNotFound"


def test_volumes_create_list_delete_and_quota(cloud: Cloud) -> None:
    alice, bob = cloud.token("alice"), cloud.token("bob")
    reply = cloud.request("POST", "/volume/v3/volumes", alice, json={"volume": {"size": 2, "name": "data1", "metadata": None, "imageRef": None, "volume_type": None}})
    assert reply.status_code == 202, reply.text
    volume = reply.json()["volume"]
    assert (volume["status"], volume["size"], volume["name"]) == ("creating", 2, "data1")
    unnamed = cloud.request("POST", "/volume/v3/volumes", alice, json={"volume": {"size": 1}}).json()["volume"]
    assert unnamed["name"] == f"volume-{unnamed['id']}"
    listed = cloud.request("GET", "/volume/v3/volumes/detail", alice).json()["volumes"]
    assert sorted(v["id"] for v in listed) == sorted([volume["id"], unnamed["id"]])
    assert [v["name"] for v in cloud.request("GET", "/volume/v3/volumes", alice, params={"name": "data1"}).json()["volumes"]] == ["data1"]
    assert cloud.request("GET", "/volume/v3/volumes/detail", bob).json()["volumes"] == []
    assert cloud.request("GET", f"/volume/v3/volumes/{volume['id']}", bob).status_code == 404
    assert cloud.request("DELETE", f"/volume/v3/volumes/{volume['id']}", bob).status_code == 404
    over = cloud.request("POST", "/volume/v3/volumes", bob, json={"volume": {"size": 5, "name": "big"}})
    assert over.status_code == 413 and "pool small allows disk_gb=3" in over.json()["overLimit"]["message"]
    for bad in ({"size": 0}, {"size": 1, "name": "no spaces allowed"}, {"size": 1, "snapshot_id": "s1"}, {"size": 1, "colour": "red"}):
        assert cloud.request("POST", "/volume/v3/volumes", alice, json={"volume": bad}).status_code == 400, bad
    assert len(cloud.state.volumes) == 2
    assert cloud.request("DELETE", f"/volume/v3/volumes/{volume['id']}", alice).status_code == 202
    assert cloud.state.volumes[volume["id"]]["state"] == "deleting"
    limits = cloud.request("GET", "/volume/v3/limits", bob).json()["limits"]["absolute"]
    assert (limits["maxTotalVolumeGigabytes"], limits["totalGigabytesUsed"]) == (3, 0)


def test_glance_links_are_paths_of_this_service(cloud: Cloud) -> None:
    alice = cloud.token("alice")
    shown = cloud.request("GET", "/image/v2/images/img1", alice).json()
    assert (shown["self"], shown["file"]) == ("/image/v2/images/img1", "/image/v2/images/img1/file")
    assert cloud.request("GET", shown["self"], alice).json()["id"] == "img1"
    listed = cloud.request("GET", "/image/v2/images", alice).json()
    assert listed["first"] == "/image/v2/images" and all(i["self"].startswith("/image/v2/images/") for i in listed["images"])
