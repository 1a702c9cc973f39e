"""Nova over a fake node: microversions, the server lifecycle requests, filters,
authorization between users, quotas, and bad input (a 4xx that changes nothing)."""

from __future__ import annotations

import time
import re
import base64
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cloudd.web.openstack import compute
from cloudd.web.openstack.compute_extra import generated_pair
from tests.openstack.fake import HOST, NET, Cloud

SERVERS = "/compute/v2.1/servers"


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


def placed(cloud: Cloud, vm_id: str, state: str = "running") -> None:
    """Play the leader and the agent: the VM is on n1 and in ``state``."""
    cloud.replica.ok("vm.place", {"id": vm_id, "node": "n1"})
    power = "running" if state == "running" else "shut_off"
    cloud.replica.ok("vm.report", {"id": vm_id, "node": "n1", "power": power})


def test_the_version_document_claims_2_1_only(cloud: Cloud) -> None:
    doc = cloud.request("GET", "/compute/v2.1").json()["version"]
    assert (doc["version"], doc["min_version"], doc["status"]) == ("2.1", "2.1", "CURRENT")
    assert doc["links"][0]["href"] == f"{HOST}/compute/v2.1/"
    assert cloud.request("GET", "/compute").json()["versions"][0]["id"] == "v2.1"


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 200),
        ({"X-OpenStack-Nova-API-Version": "2.1"}, 200),
        ({"OpenStack-API-Version": "compute 2.1"}, 200),
        ({"OpenStack-API-Version": "compute latest"}, 200),
        ({"OpenStack-API-Version": "volume 3.5, compute 2.1"}, 200),
        ({"X-OpenStack-Nova-API-Version": "2.2"}, 406),
        ({"OpenStack-API-Version": "compute 2.95"}, 406),
        ({"OpenStack-API-Version": "compute 3.0"}, 406),
        ({"X-OpenStack-Nova-API-Version": "two"}, 400),
    ],
)
def test_microversions(cloud: Cloud, headers: dict, status: int) -> None:
    reply = cloud.request("GET", f"{SERVERS}/detail", cloud.token("alice"), headers=headers)
    assert reply.status_code == status, reply.text
    assert reply.headers["OpenStack-API-Version"] == "compute 2.1"
    if status == 406:
        assert "maximum is 2.1" in reply.json()["computeFault"]["message"]


def test_create_show_list_and_the_status_of_each_lifecycle_state(cloud: Cloud) -> None:
    token = cloud.token("alice")
    reply = cloud.create_server(token, "web1", metadata={"role": "web"}, user_data=base64.b64encode(b"#cloud-config\n").decode())
    assert reply.status_code == 202, reply.text
    server_id = reply.json()["server"]["id"]
    assert reply.headers["Location"] == f"{HOST}{SERVERS}/{server_id}"
    vm = cloud.state.vms[server_id]
    assert (vm["owner"], vm["flavor"], vm["image"], vm["user_data"]) == ("alice", "tiny", "img1", "#cloud-config\n")
    show = cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]
    assert show["status"] == "BUILD" and show["OS-EXT-STS:task_state"] == "scheduling"
    assert show["image"]["id"] == "img1" and show["flavor"]["id"] == "tiny" and show["tenant_id"] == "user-alice" and show["user_id"] == "alice"
    assert show["addresses"]["public"][0]["addr"].startswith("192.0.2.")
    placed(cloud, server_id)
    show = cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]
    assert (show["status"], show["OS-EXT-STS:power_state"], show["OS-EXT-STS:vm_state"]) == ("ACTIVE", 1, "active")
    assert "OS-EXT-SRV-ATTR:host" not in show and "n1" not in show["hostId"]
    cloud.replica.ok("vm.report", {"id": server_id, "node": "n1", "power": "running", "error": "qemu died"})
    show = cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]
    assert show["status"] == "ERROR" and show["fault"]["message"] == "qemu died"
    brief = cloud.request("GET", SERVERS, token).json()["servers"]
    assert [s["id"] for s in brief] == [server_id] and set(brief[0]) == {"id", "name", "links"}


def test_actions_propose_the_same_commands_as_the_api(cloud: Cloud) -> None:
    token = cloud.token("alice")
    server_id = cloud.create_server(token, "web1").json()["server"]["id"]
    action = f"{SERVERS}/{server_id}/action"
    refused = cloud.request("POST", action, token, json={"reboot": {"type": "HARD"}})
    assert refused.status_code == 409 and "conflictingRequest" in refused.json()
    assert cloud.request("POST", action, token, json={"os-getVNCConsole": {"type": "novnc"}}).status_code == 409
    placed(cloud, server_id)
    assert cloud.request("POST", action, token, json={"reboot": {"type": "SOFT"}}).status_code == 202
    assert cloud.state.vms[server_id]["desired"]["action"] == "reboot"
    assert cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]["status"] == "REBOOT"
    assert cloud.request("POST", action, token, json={"reboot": {"type": "HARD"}}).status_code == 202
    assert cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]["status"] == "HARD_REBOOT"
    console = cloud.request("POST", action, token, json={"os-getVNCConsole": {"type": "novnc"}}).json()["console"]
    assert console == {"type": "novnc", "url": f"{HOST}/ui/vms/{server_id}/console"}
    assert cloud.request("POST", action, token, json={"os-stop": None}).status_code == 202
    assert cloud.state.vms[server_id]["desired"] == {**cloud.state.vms[server_id]["desired"], "power": "stopped", "stop_mode": "clean"}
    assert cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]["OS-EXT-STS:task_state"] == "powering-off"
    cloud.replica.ok("vm.report", {"id": server_id, "node": "n1", "power": "shut_off"})
    assert cloud.request("GET", f"{SERVERS}/{server_id}", token).json()["server"]["status"] == "SHUTOFF"
    assert cloud.request("POST", action, token, json={"os-start": None}).status_code == 202
    assert cloud.state.vms[server_id]["state"] == "starting"
    bad: dict[str, Any]
    for bad in ({}, {"os-start": None, "os-stop": None}, {"explode": {}}, {"reboot": {"type": "GENTLE"}}, {"os-stop": {"force": True}}):
        assert cloud.request("POST", action, token, json=bad).status_code == 400, bad
    assert cloud.request("DELETE", f"{SERVERS}/{server_id}", token).status_code == 204
    assert cloud.state.vms[server_id]["state"] == "deleting"


def test_users_never_see_or_touch_each_others_servers(cloud: Cloud) -> None:
    alice, bob = cloud.token("alice"), cloud.token("bob")
    server_id = cloud.create_server(alice, "secret").json()["server"]["id"]
    assert cloud.request("GET", f"{SERVERS}/detail", bob).json()["servers"] == []
    assert cloud.request("GET", f"{SERVERS}/detail", bob, params={"all_tenants": "1"}).json()["servers"] == []
    for method, path, body in (
        ("GET", f"{SERVERS}/{server_id}", None),
        ("DELETE", f"{SERVERS}/{server_id}", None),
        ("POST", f"{SERVERS}/{server_id}/action", {"os-stop": None}),
        ("GET", f"{SERVERS}/{server_id}/os-volume_attachments", None),
    ):
        reply = cloud.request(method, path, bob, json=body)
        assert reply.status_code == 404 and reply.json()["itemNotFound"]["code"] == 404
    assert cloud.state.vms[server_id]["state"] == "pending"


def test_a_name_in_place_of_an_id_is_a_json_404(cloud: Cloud) -> None:
    token = cloud.token("alice")
    cloud.create_server(token, "web1")
    reply = cloud.request("GET", f"{SERVERS}/web1", token)
    assert reply.status_code == 404 and reply.headers["content-type"] == "application/json" and "itemNotFound" in reply.json()


def test_filters(cloud: Cloud) -> None:
    token = cloud.token("alice")
    ids = {name: cloud.create_server(token, name).json()["server"]["id"] for name in ("web1", "web2", "db1")}
    placed(cloud, ids["db1"])

    def names(**params: str) -> list[str]:
        reply = cloud.request("GET", f"{SERVERS}/detail", token, params=params)
        assert reply.status_code == 200, reply.text
        return sorted(s["name"] for s in reply.json()["servers"])

    assert names(name="web") == ["web1", "web2"]
    assert names(name="^web1$") == ["web1"]
    assert names(name="b1", deleted="False") == ["db1", "web1"]
    assert names(status="ACTIVE") == ["db1"] and names(status="build") == ["web1", "web2"]
    assert names(deleted="True") == []
    assert len(cloud.request("GET", SERVERS, token, params={"limit": "2"}).json()["servers"]) == 2
    for bad in ({"name": "[unclosed"}, {"status": "SLEEPY"}, {"limit": "0"}, {"marker": "nope"}):
        reply = cloud.request("GET", f"{SERVERS}/detail", token, params=bad)
        assert reply.status_code == 400 and "badRequest" in reply.json(), bad


@pytest.mark.parametrize(
    "server, words",
    [
        ({"name": "Bad Name", "flavorRef": "tiny", "imageRef": "img1"}, "host names"),
        ({"name": "x1", "flavorRef": "huge", "imageRef": "img1"}, "Flavor huge"),
        ({"name": "x2", "flavorRef": "tiny", "imageRef": "nope"}, "Image nope"),
        ({"name": "x3", "flavorRef": "tiny", "imageRef": "img1", "networks": [{"uuid": "ffffffff"}]}, "Network"),
        ({"name": "x4", "flavorRef": "tiny", "imageRef": "img1", "networks": [{"port": "p1"}]}, "uuid"),
        ({"name": "x5", "flavorRef": "tiny", "imageRef": "img1", "networks": "everything"}, "networks"),
        ({"name": "x6", "flavorRef": "tiny", "imageRef": "img1", "key_name": "nokey"}, "key_name"),
        ({"name": "x7", "flavorRef": "tiny", "imageRef": "img1", "user_data": "%%%"}, "base64"),
        ({"name": "x8", "flavorRef": "tiny", "imageRef": "img1", "colour": "red"}, "unknown field"),
        ({"name": "x9", "flavorRef": "tiny", "imageRef": "img1", "max_count": 50}, "max_count"),
        ({"name": "x10", "flavorRef": "tiny", "block_device_mapping_v2": [{"boot_index": 0, "source_type": "volume", "uuid": "v1"}]}, "boot image"),
        ({"flavorRef": "tiny"}, "name"),
    ],
)
def test_bad_creations_are_400_and_create_nothing(cloud: Cloud, server: dict, words: str) -> None:
    token = cloud.token("alice")
    before = cloud.vm_ids()
    reply = cloud.request("POST", SERVERS, token, json={"server": server})
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["badRequest"]["message"]
    assert cloud.vm_ids() == before


@pytest.mark.parametrize("raw, ctype", [(b"{", "application/json"), (b"[]", "application/json"), (b'{"server": 1}', "application/json"), (b'{"server": {}}', "text/plain")])
def test_unreadable_bodies_are_4xx(cloud: Cloud, raw: bytes, ctype: str) -> None:
    reply = cloud.request("POST", SERVERS, cloud.token("alice"), content=raw, headers={"Content-Type": ctype})
    assert reply.status_code in (400, 415) and set(reply.json()) <= {"badRequest", "badMediaType"}
    assert cloud.vm_ids() == set()


def test_boot_from_an_image_volume_mapping_and_several_servers_at_once(cloud: Cloud) -> None:
    token = cloud.token("alice")
    bdm = [{"boot_index": 0, "uuid": "img2", "source_type": "image", "destination_type": "volume", "volume_size": 3, "delete_on_termination": True}]
    reply = cloud.request("POST", SERVERS, token, json={"server": {"name": "farm", "flavorRef": f"{HOST}/compute/v2.1/flavors/tiny", "block_device_mapping_v2": bdm, "networks": "auto", "min_count": 2, "max_count": 3}})
    assert reply.status_code == 202, reply.text
    vms = sorted(cloud.state.vms.values(), key=lambda v: v["name"])
    assert [v["name"] for v in vms] == ["farm-1", "farm-2", "farm-3"]
    assert all(v["image"] == "img2" and v["disk_gb"] == 3 and v["flavor"] == "tiny" and len(v["ports"]) == 1 for v in vms)
    default = cloud.request("POST", SERVERS, token, json={"server": {"name": "plain", "flavorRef": "tiny", "imageRef": "img1", "networks": []}})
    assert default.status_code == 202 and len(cloud.state.vms[default.json()["server"]["id"]]["ports"]) == 1
    none = cloud.request("POST", SERVERS, token, json={"server": {"name": "lonely", "flavorRef": "tiny", "imageRef": "img1", "networks": "none"}})
    assert none.status_code == 202 and cloud.state.vms[none.json()["server"]["id"]]["ports"] == []


def test_over_quota_is_403_with_the_pools_limit(cloud: Cloud) -> None:
    bob = cloud.token("bob")
    reply = cloud.create_server(bob, "huge", flavor="big")
    assert reply.status_code == 403
    message = reply.json()["forbidden"]["message"]
    assert "Quota exceeded" in message and "pool small allows vcpus=2" in message
    assert cloud.vm_ids() == set()
    limits = cloud.request("GET", "/compute/v2.1/limits", bob).json()["limits"]["absolute"]
    assert (limits["maxTotalCores"], limits["maxTotalInstances"], limits["totalCoresUsed"]) == (2, 2, 0)
    assert cloud.create_server(bob, "ok1").status_code == 202
    assert cloud.request("GET", "/compute/v2.1/limits", bob).json()["limits"]["absolute"]["totalCoresUsed"] == 1
    alice = cloud.request("GET", "/compute/v2.1/limits", cloud.token("alice")).json()["limits"]["absolute"]
    assert alice["maxTotalCores"] == -1


def test_flavors_zones_and_unknown_paths(cloud: Cloud) -> None:
    token = cloud.token("alice")
    detail = cloud.request("GET", "/compute/v2.1/flavors/detail", token, params={"is_public": "None"}).json()["flavors"]
    assert [(f["id"], f["vcpus"], f["ram"], f["disk"]) for f in detail] == [("tiny", 1, 128, 1), ("big", 4, 2048, 2)]
    assert [f["id"] for f in cloud.request("GET", "/compute/v2.1/flavors", token, params={"minRam": "1024"}).json()["flavors"]] == ["big"]
    assert cloud.request("GET", "/compute/v2.1/flavors/tiny", token).json()["flavor"]["name"] == "tiny"
    assert cloud.request("GET", "/compute/v2.1/flavors/nope", token).json()["itemNotFound"]["code"] == 404
    zones = cloud.request("GET", "/compute/v2.1/os-availability-zone", token).json()["availabilityZoneInfo"]
    assert zones[0]["zoneName"] == "nova" and zones[0]["zoneState"]["available"]
    assert cloud.request("GET", "/compute/v2.1/os-hypervisors", token).json()["itemNotFound"]["code"] == 404


def test_keypairs_are_kept_per_user_and_given_to_servers(cloud: Cloud) -> None:
    alice, bob = cloud.token("alice"), cloud.token("bob")
    public = generated_pair()[0].replace("Generated-by-cloudd", "alice@laptop")
    imported = cloud.request("POST", "/compute/v2.1/os-keypairs", alice, json={"keypair": {"name": "laptop", "public_key": public}})
    assert imported.status_code == 200 and "private_key" not in imported.json()["keypair"]
    assert len(imported.json()["keypair"]["fingerprint"].split(":")) == 16
    generated = cloud.request("POST", "/compute/v2.1/os-keypairs", alice, json={"keypair": {"name": "fresh"}}).json()["keypair"]
    assert generated["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----") and generated["public_key"].startswith("ssh-ed25519 ")
    assert "private_key" not in str(cloud.state.users["alice"]) and "PRIVATE" not in str(cloud.state.users["alice"])
    assert cloud.request("POST", "/compute/v2.1/os-keypairs", alice, json={"keypair": {"name": "laptop", "public_key": public}}).status_code == 409
    assert cloud.request("POST", "/compute/v2.1/os-keypairs", alice, json={"keypair": {"name": "bad", "public_key": "hello"}}).status_code == 400
    assert [k["keypair"]["name"] for k in cloud.request("GET", "/compute/v2.1/os-keypairs", alice).json()["keypairs"]] == ["fresh", "laptop"]
    assert cloud.request("GET", "/compute/v2.1/os-keypairs", bob).json()["keypairs"] == []
    assert cloud.request("GET", "/compute/v2.1/os-keypairs/laptop", bob).status_code == 404
    server_id = cloud.create_server(alice, "keyed", key_name="laptop").json()["server"]["id"]
    assert cloud.state.vms[server_id]["ssh_keys"] == [public]
    assert cloud.request("GET", f"{SERVERS}/{server_id}", alice).json()["server"]["key_name"] == "laptop"
    assert cloud.request("DELETE", "/compute/v2.1/os-keypairs/laptop", bob).status_code == 404
    assert cloud.request("DELETE", "/compute/v2.1/os-keypairs/laptop", alice).status_code == 202
    assert "laptop" not in cloud.state.users["alice"]["keypairs"]


def test_volume_attachments(cloud: Cloud) -> None:
    alice, bob = cloud.token("alice"), cloud.token("bob")
    server_id = cloud.create_server(alice, "web1").json()["server"]["id"]
    placed(cloud, server_id)
    volume = cloud.request("POST", "/volume/v3/volumes", alice, json={"volume": {"size": 1, "name": "data1"}}).json()["volume"]
    cloud.replica.ok("volume.report", {"id": volume["id"], "node": "n1", "present": True, "size_bytes": 1 << 30, "allocated_bytes": 0, "exported_to": []})
    attach = f"{SERVERS}/{server_id}/os-volume_attachments"
    assert cloud.request("POST", attach, bob, json={"volumeAttachment": {"volumeId": volume["id"]}}).status_code == 404
    reply = cloud.request("POST", attach, alice, json={"volumeAttachment": {"volumeId": volume["id"], "device": None}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["volumeAttachment"]["device"].startswith("/dev/vd")
    assert [a["volumeId"] for a in cloud.request("GET", attach, alice).json()["volumeAttachments"]] == [volume["id"]]
    shown = cloud.request("GET", f"/volume/v3/volumes/{volume['id']}", alice).json()["volume"]
    assert shown["attachments"][0]["server_id"] == server_id
    assert cloud.request("DELETE", f"{attach}/{volume['id']}", alice).status_code == 202
    assert cloud.state.volumes[volume["id"]]["attached_to"] is None
    assert cloud.request("DELETE", f"{attach}/{volume['id']}", alice).status_code == 404


def test_no_input_crashes_a_route(cloud: Cloud) -> None:
    token = cloud.token("alice")
    weird: list[Any] = [None, 1, "x", [], {"a": {"b": [1]}}, {"server": None}, {"server": {"name": ["x"]}}, {"keypair": {"name": 5}}, {"volume": {"size": "big"}}]
    for path in (SERVERS, "/compute/v2.1/os-keypairs", "/volume/v3/volumes", "/identity/v3/auth/tokens", f"{SERVERS}/nope/action"):
        for body in weird:
            reply = cloud.request("POST", path, token, json=body)
            assert 400 <= reply.status_code < 500, (path, body, reply.text)
    assert cloud.vm_ids() == set() and cloud.state.volumes == {}
    assert NET in cloud.state.networks


def test_without_networks_named_a_server_gets_the_one_usable_network_or_a_409(cloud: Cloud) -> None:
    bob = cloud.token("bob")
    cloud.replica.ok("network.create", {"id": "0000bbbb", "name": "lan", "owner": "bob", "subnet": "10.1.0.0/24"})
    reply = cloud.request("POST", SERVERS, bob, json={"server": {"name": "where", "flavorRef": "tiny", "imageRef": "img1"}})
    assert reply.status_code == 409 and "Multiple possible networks" in reply.json()["conflictingRequest"]["message"]
    assert cloud.vm_ids() == set()
    chosen = cloud.request("POST", SERVERS, bob, json={"server": {"name": "here", "flavorRef": "tiny", "imageRef": "img1", "networks": [{"uuid": "0000bbbb", "fixed_ip": "10.1.0.7"}]}})
    assert chosen.status_code == 202
    port = cloud.state.ports[cloud.state.vms[chosen.json()["server"]["id"]]["ports"][0]]
    assert (port["network"], port["ips"]) == ("0000bbbb", ["10.1.0.7"])


def test_a_client_request_id_names_each_server_of_a_multi_create(cloud: Cloud) -> None:
    token = cloud.token("alice")
    body = {"server": {"name": "pair", "flavorRef": "tiny", "imageRef": "img1", "max_count": 2}}
    reply = cloud.request("POST", SERVERS, token, json=body, headers={"X-Request-Id": "client-req-1"})
    assert reply.status_code == 202, reply.text
    assert sorted(v["name"] for v in cloud.state.vms.values()) == ["pair-1", "pair-2"]
    assert {"client-req-1", "client-req-1-2"} <= set(cloud.state.requests)



@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("web", ["web-1", "web-2", "web.3"]),
        ("^web", ["web-1", "web-2", "web.3"]),
        ("1$", ["db1", "web-1"]),
        ("^db1$", ["db1"]),
        (r"^web\-1$", ["web-1"]),  # re.escape's form
        (r"web\.3", ["web.3"]),
        ("^b1", []),
        ("", ["db1", "web-1", "web-2", "web.3"]),
    ],
)
def test_a_name_filter_is_a_literal_part_of_the_name_with_anchors(cloud: Cloud, pattern: str, expected: list[str]) -> None:
    token = cloud.token("alice")
    ids = {name: cloud.create_server(token, name).json()["server"]["id"] for name in ("web-1", "web-2", "db1", "old")}
    cloud.state.vms[ids["old"]]["name"] = "web.3"  # a name from elsewhere (no dots in new ones): the dot is literal
    reply = cloud.request("GET", f"{SERVERS}/detail", token, params={"name": pattern})
    assert reply.status_code == 200, reply.text
    assert sorted(s["name"] for s in reply.json()["servers"]) == expected


@pytest.mark.parametrize(
    "pattern, expected",
    [("a.b", ["a-b", "axb"]), ("^a.b$", ["a-b", "axb"]), ("x*b$", ["a-b", "axb"]), ("[x-]", ["a-b", "axb"]), (r"\d", ["db1"]),
     ("^(db|ax)", ["axb", "db1"]), ("(?i)DB", ["db1"]), ("x$y", []), ("^^a-", ["a-b"])],
)
def test_other_name_filters_are_regular_expressions_as_in_nova(cloud: Cloud, pattern: str, expected: list[str]) -> None:
    token = cloud.token("alice")
    for name in ("a-b", "axb", "db1"):
        cloud.create_server(token, name)
    reply = cloud.request("GET", SERVERS, token, params={"name": pattern})
    assert reply.status_code == 200, reply.text
    assert sorted(s["name"] for s in reply.json()["servers"]) == expected
    assert expected == sorted(n for n in ("a-b", "axb", "db1") if re.search(pattern, n))  # Python's own reading agrees


@pytest.mark.parametrize("pattern", ["(a+)+b", "(.|.){,99}!", "(?x)(a|a)#\n*b", "(a|aa)+$x", "(a|a?)+$x"])
def test_a_name_filter_that_backtracks_never_holds_the_node(cloud: Cloud, pattern: str) -> None:
    """A pattern that backtracks catastrophically in Python's re either runs fast in the
    regex module (its own safeguards) or hits the listing's time budget: a quick 400."""
    token = cloud.token("alice")
    cloud.create_server(token, "a" * 60)
    started = time.monotonic()
    reply = cloud.request("GET", SERVERS, token, params={"name": pattern})
    assert time.monotonic() - started < 3.0
    if reply.status_code == 200:
        assert reply.json()["servers"] == []
    else:
        assert reply.status_code == 400 and "takes too long" in reply.json()["badRequest"]["message"], reply.text


def test_the_time_budget_is_what_stops_a_runaway_pattern(cloud: Cloud) -> None:
    token = cloud.token("alice")
    cloud.create_server(token, "a" * 60)
    reply = cloud.request("GET", SERVERS, token, params={"name": "(a|aa)+$x"})
    assert reply.status_code == 400 and "more than 0.2 s" in reply.json()["badRequest"]["message"]


@pytest.mark.parametrize("pattern, why", [("a\\", "not a regular expression"), ("(ab", "not a regular expression"), ("x" * 256, "at most 255")])
def test_a_bad_name_filter_is_a_400_that_says_why(cloud: Cloud, pattern: str, why: str) -> None:
    token = cloud.token("alice")
    cloud.create_server(token, "web1")
    reply = cloud.request("GET", SERVERS, token, params={"name": pattern})
    assert reply.status_code == 400, reply.text
    message = reply.json()["badRequest"]["message"]
    assert message.startswith("name filter:") and why in message


def test_the_name_filter_runs_without_holding_the_replica(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    token = cloud.token("alice")
    for name in ("web1", "web2"):
        cloud.create_server(token, name)
    lock = cloud.raft.lock
    free: list[bool] = []

    def lock_is_free() -> bool:
        """Whether another thread could take the replica's lock right now."""
        got: list[bool] = []

        def probe() -> None:
            got.append(lock.acquire(blocking=False))
            if got[0]:
                lock.release()

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        return got[0]

    real = compute.name_filter

    def spying(pattern: str | None) -> Callable[[str], bool]:
        matches = real(pattern)

        def spied(name: str) -> bool:
            free.append(lock_is_free())
            return matches(name)

        return spied

    monkeypatch.setattr(compute, "name_filter", spying)
    reply = cloud.request("GET", f"{SERVERS}/detail", token, params={"name": "web"})
    assert sorted(s["name"] for s in reply.json()["servers"]) == ["web1", "web2"]
    assert free == [True, True]


@pytest.mark.parametrize(
    "path, param",
    [(SERVERS, "limit"), (f"{SERVERS}/detail", "limit"), ("/compute/v2.1/flavors", "limit"), ("/compute/v2.1/flavors/detail", "minRam"),
     ("/compute/v2.1/flavors", "minDisk"), ("/image/v2/images", "limit"), ("/volume/v3/volumes/detail", "limit")],
)
@pytest.mark.parametrize("raw", ["9" * 5000, "1" * 19, "-1", "1e3", "\u0661"])
def test_numbers_in_queries_are_checked_before_they_are_converted(cloud: Cloud, path: str, param: str, raw: str) -> None:
    reply = cloud.request("GET", path, cloud.token("alice"), params={param: raw})
    assert reply.status_code == 400, reply.text
    assert param in reply.json()["badRequest"]["message"]


def test_an_imported_public_key_must_be_one_openssh_key_of_at_most_4_kib(cloud: Cloud) -> None:
    alice = cloud.token("alice")
    good = generated_pair()[0]
    kind, blob, _ = good.split(" ", 2)
    rsa_blob = base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"\x01" * 300).decode()
    for name, key in (("comment", f"{kind} {blob} a comment with spaces"), ("bare", f"{kind} {blob}"), ("rsa", f"ssh-rsa {rsa_blob} me@host")):
        reply = cloud.request("POST", "/compute/v2.1/os-keypairs", alice, json={"keypair": {"name": name, "public_key": key}})
        assert reply.status_code == 200, (name, reply.text)
    for bad in (
        f"{kind} {blob} " + "x" * (4 << 10),  # over 4 KiB
        f"ssh-rsa {blob}",  # an ed25519 blob labelled RSA
        f"{kind} {rsa_blob}",
        f"{kind} {blob}\nssh-rsa {rsa_blob}",  # two keys
        f"{kind} {blob[:-1]}",  # cut short: not base64
        f"{kind} AAAA",
        f"ssh-foo {blob}",
        f"{kind}  {blob}",
    ):
        reply = cloud.request("POST", "/compute/v2.1/os-keypairs", alice, json={"keypair": {"name": "bad", "public_key": bad}})
        assert reply.status_code == 400, bad
        assert "Keypair data is invalid" in reply.json()["badRequest"]["message"] or "public_key is longer than 4096" in reply.text, reply.text
    assert sorted(cloud.state.users["alice"]["keypairs"]) == ["bare", "comment", "rsa"]


def test_auto_networks_are_the_callers_own_within_the_pool_lock(cloud: Cloud) -> None:
    def auto(token: str, name: str) -> httpx.Response:
        return cloud.request("POST", SERVERS, token, json={"server": {"name": name, "flavorRef": "tiny", "imageRef": "img1", "networks": "auto"}})

    def network_of(reply: httpx.Response) -> str:
        assert reply.status_code == 202, reply.text
        return str(cloud.state.ports[cloud.state.vms[reply.json()["server"]["id"]]["ports"][0]]["network"])

    cloud.replica.ok("network.create", {"id": "0000bbbb", "name": "lan", "owner": "alice", "subnet": "10.1.0.0/24"})
    # an admin may use alice's network, but it is hers: not one to be given without naming it
    assert network_of(auto(cloud.token("admin"), "adm")) == NET
    cloud.replica.ok("network.create", {"id": "0000cccc", "name": "dmz", "owner": None, "subnet": "10.2.0.0/24"})
    assert auto(cloud.token("alice"), "many").status_code == 409
    # bob's pool is locked to dmz: of the two public networks only that one can be his
    cloud.replica.ok("pool.update", {"name": "small", "networks": ["dmz"]})
    assert network_of(auto(cloud.token("bob"), "locked")) == "0000cccc"
