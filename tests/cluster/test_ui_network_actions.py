"""The web UI's NIC, network and migration forms over HTTP against a real cluster: a NIC
attached and detached, private networks created and deleted, an admin's migration; bad
input gives 4xx with the message next to the field and changes nothing; other users'
VMs are not found; forms without the session's CSRF token are refused; a user's
migration is refused by the API's 403."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import LocalCluster, add_ui_catalog, wait_for
from tests.cluster.test_ui import Browser, field_error, logged_in

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NODES = ("node1", "node2", "node3")


@pytest.fixture(scope="module")
def net_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node cluster on 127.0.0.240-242 with the UI catalog, a public network and the
    users alice and bob."""
    c = LocalCluster(tmp_path_factory.mktemp("ui-net"), first_host=240)
    try:
        c.init(3)
        with c.api("node1") as admin:
            add_ui_catalog(admin)
            admin.post("/api/v1/networks", json={"name": "public", "subnet": "192.0.2.0/24"}).raise_for_status()
            for name in ("alice", "bob"):
                admin.post("/api/v1/users", json={"name": name, "password": f"{name}-pass-1"}).raise_for_status()
        yield c
    finally:
        c.close()


def vm_of(cluster: LocalCluster, vm_id: str) -> dict[str, Any]:
    with cluster.api("node1") as admin:
        reply = admin.get(f"/api/v1/vms/{vm_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())


def networks_of(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    with cluster.api("node1") as admin:
        return {n["id"]: n for n in admin.get("/api/v1/networks").json()["items"]}


def task_ended(cluster: LocalCluster, task_id: str, timeout: float = 30) -> dict[str, Any]:
    with cluster.api("node1") as admin:
        return dict(wait_for(lambda: (t := admin.get(f"/api/v1/tasks/{task_id}").json())["state"] != "running" and t, timeout=timeout, what=f"task {task_id}"))


def task_of(location: str) -> str:
    assert "?task=" in location, location
    return location.split("?task=")[1]


def new_vm(browser: Browser, name: str) -> str:
    """A stopped VM made through the UI's create form, once it is placed."""
    browser.get("/ui/vms/new")
    created = browser.post("/ui/vms/new", {"name": name, "flavor": "tiny"})
    assert created.status_code == 303, created.text
    vm_id = created.headers["location"].split("/")[3].split("?")[0]
    wait_for(lambda: browser.client.get(f"/api/v1/vms/{vm_id}").json()["state"] == "stopped", timeout=30, what=f"{name} created")
    return vm_id


@pytest.fixture(scope="module")
def alice_vm(net_cluster: LocalCluster) -> str:
    with logged_in(net_cluster, "node1", "alice", "alice-pass-1") as alice:
        return new_vm(alice, "alice-vm")


@pytest.fixture(scope="module")
def bobnet(net_cluster: LocalCluster) -> str:
    """Bob's private network, made through the resources page."""
    with logged_in(net_cluster, "node1", "bob", "bob-pass-1") as bob:
        bob.get("/ui/resources")
        assert bob.post("/ui/resources/networks", {"name": "bobnet", "subnet": "10.30.0.0/24"}).status_code == 303
    return next(i for i, n in networks_of(net_cluster).items() if n["name"] == "bobnet")


def public_id(cluster: LocalCluster) -> str:
    return next(i for i, n in networks_of(cluster).items() if n["name"] == "public")


def test_a_nic_is_attached_and_detached(net_cluster: LocalCluster, alice_vm: str) -> None:
    network = public_id(net_cluster)
    with logged_in(net_cluster, "node2", "alice", "alice-pass-1") as alice:
        page = alice.get(f"/ui/vms/{alice_vm}")
        assert page.status_code == 200 and 'id="nic-attach"' in page.text and f'<option value="{network}"' in page.text
        attached = alice.post(f"/ui/vms/{alice_vm}/nics", {"network": network})
        assert attached.status_code == 303, attached.text
        assert task_ended(net_cluster, task_of(attached.headers["location"]))["state"] == "succeeded"
        (nic,) = vm_of(net_cluster, alice_vm)["nics"]
        assert nic["network"] == network and nic["ips"]
        page = alice.get(f"/ui/vms/{alice_vm}")
        assert nic["mac"] in page.text and nic["ips"][0] in page.text
        assert f'action="/ui/vms/{alice_vm}/nics/{nic["port"]}/detach"' in page.text
        detached = alice.post(f"/ui/vms/{alice_vm}/nics/{nic['port']}/detach")
        assert detached.status_code == 303, detached.text
        assert task_ended(net_cluster, task_of(detached.headers["location"]))["state"] == "succeeded"
        assert vm_of(net_cluster, alice_vm)["nics"] == []
        assert nic["mac"] not in alice.get(f"/ui/vms/{alice_vm}").text


def test_bad_nic_requests_show_the_message_next_to_the_field_and_change_nothing(net_cluster: LocalCluster, alice_vm: str, bobnet: str) -> None:
    with logged_in(net_cluster, "node3", "alice", "alice-pass-1") as alice:
        page = alice.get(f"/ui/vms/{alice_vm}")
        assert bobnet not in page.text  # another user's private network is not offered
        before = vm_of(net_cluster, alice_vm)
        missing = alice.post(f"/ui/vms/{alice_vm}/nics", {"network": "no-such-net"})
        assert missing.status_code == 404 and "no-such-net" in (field_error(missing.text, "network") or "")
        hidden = alice.post(f"/ui/vms/{alice_vm}/nics", {"network": bobnet})
        assert hidden.status_code == 404 and field_error(hidden.text, "network")
        empty = alice.post(f"/ui/vms/{alice_vm}/nics", {"network": ""})
        assert empty.status_code == 400 and field_error(empty.text, "network") == "choose a network"
        bad_ip = alice.post(f"/ui/vms/{alice_vm}/nics", {"network": public_id(net_cluster), "ip": "10.9.9.9"})
        assert 400 <= bad_ip.status_code < 500 and field_error(bad_ip.text, "ip"), bad_ip.text
        assert 'value="10.9.9.9"' in bad_ip.text  # the form keeps what was typed
        unknown_port = alice.post(f"/ui/vms/{alice_vm}/nics/ffffffff/detach")
        assert unknown_port.status_code == 404
        after = vm_of(net_cluster, alice_vm)
        assert (after["nics"], after.get("ports")) == (before["nics"], before.get("ports"))


def test_another_users_vm_is_not_found(net_cluster: LocalCluster, alice_vm: str) -> None:
    network = public_id(net_cluster)
    before = vm_of(net_cluster, alice_vm)
    with logged_in(net_cluster, "node2", "bob", "bob-pass-1") as bob:
        bob.get("/ui/vms")
        for path, data in ((f"/ui/vms/{alice_vm}/nics", {"network": network}), (f"/ui/vms/{alice_vm}/nics/ffffffff/detach", {}),
                           (f"/ui/vms/{alice_vm}/migrate", {"mode": "offline"})):
            assert bob.post(path, data).status_code == 404, path
    after = vm_of(net_cluster, alice_vm)
    assert (after["nics"], after["node"], after["state"]) == (before["nics"], before["node"], before["state"])


def test_forms_without_the_csrf_token_are_refused(net_cluster: LocalCluster, alice_vm: str) -> None:
    network = public_id(net_cluster)
    before_vm, before_nets = vm_of(net_cluster, alice_vm), networks_of(net_cluster)
    with logged_in(net_cluster, "node1", "alice", "alice-pass-1") as alice:
        for path, data in ((f"/ui/vms/{alice_vm}/nics", {"network": network}), ("/ui/resources/networks", {"name": "forged", "subnet": "10.40.0.0/24"}),
                           (f"/ui/resources/networks/{network}/delete", {}), (f"/ui/vms/{alice_vm}/migrate", {})):
            missing = alice.post(path, data, csrf=False)
            assert missing.status_code == 403 and "CSRF" in missing.text, path
            assert alice.client.post(path, data={**data, "csrf": "0" * 40}).status_code == 403, path
    with logged_in(net_cluster, "node1", "admin", net_cluster.password) as admin:
        assert admin.post(f"/ui/vms/{alice_vm}/migrate", {"mode": "offline"}, csrf=False).status_code == 403
    after = vm_of(net_cluster, alice_vm)
    assert (after["nics"], after["node"], after["state"]) == (before_vm["nics"], before_vm["node"], before_vm["state"])
    assert networks_of(net_cluster).keys() == before_nets.keys()


def test_a_private_network_is_created_shown_and_deleted(net_cluster: LocalCluster, alice_vm: str, bobnet: str) -> None:
    network = public_id(net_cluster)
    with logged_in(net_cluster, "node2", "alice", "alice-pass-1") as alice:
        page = alice.get("/ui/resources")
        assert 'id="network-create"' in page.text and "New private network" in page.text
        assert f'action="/ui/resources/networks/{network}/delete"' not in page.text  # public: not hers to delete
        bad = alice.post("/ui/resources/networks", {"name": "lan", "subnet": "10.50.0.0/33"})
        assert bad.status_code == 400 and "subnet" in (field_error(bad.text, "subnet") or "") and 'value="lan"' in bad.text
        empty = alice.post("/ui/resources/networks", {"name": "", "subnet": ""})
        assert empty.status_code == 400 and field_error(empty.text, "name") and field_error(empty.text, "subnet")
        overlap = alice.post("/ui/resources/networks", {"name": "lan", "subnet": "192.0.2.0/25"})
        assert overlap.status_code == 409 and "overlaps" in (field_error(overlap.text, "subnet") or "")
        assert "lan" not in [n["name"] for n in networks_of(net_cluster).values()]
        created = alice.post("/ui/resources/networks", {"name": "lan", "subnet": "10.50.0.0/24"})
        assert created.status_code == 303 and created.headers["location"] == "/ui/resources?done=network-created&name=lan"
        lan = next(n for n in networks_of(net_cluster).values() if n["name"] == "lan")
        assert lan["owner"] == "alice" and lan["subnet"] == "10.50.0.0/24" and not lan["public"]
        shown = alice.get(created.headers["location"])
        assert "network lan created" in shown.text and "10.50.0.0/24" in shown.text
        assert f'action="/ui/resources/networks/{lan["id"]}/delete"' in shown.text
        dup = alice.post("/ui/resources/networks", {"name": "lan", "subnet": "10.60.0.0/24"})
        assert dup.status_code == 409 and "lan" in (field_error(dup.text, "name") or "")
        # the new network is offered on the VM page; while a NIC uses it, it cannot go
        assert f'<option value="{lan["id"]}"' in alice.get(f"/ui/vms/{alice_vm}").text
        attached = alice.post(f"/ui/vms/{alice_vm}/nics", {"network": lan["id"], "ip": "10.50.0.7"})
        assert attached.status_code == 303, attached.text
        task_ended(net_cluster, task_of(attached.headers["location"]))
        assert vm_of(net_cluster, alice_vm)["nics"][0]["ips"] == ["10.50.0.7"]
        alice.get("/ui/resources")
        busy = alice.post(f"/ui/resources/networks/{lan['id']}/delete")
        assert busy.status_code == 409 and 'class="banner bad" role="alert"' in busy.text and "ports" in busy.text
        public = alice.post(f"/ui/resources/networks/{network}/delete")
        assert public.status_code == 403 and "only admins" in public.text
        port = vm_of(net_cluster, alice_vm)["nics"][0]["port"]
        alice.get(f"/ui/vms/{alice_vm}")
        task_ended(net_cluster, task_of(alice.post(f"/ui/vms/{alice_vm}/nics/{port}/detach").headers["location"]))
        alice.get("/ui/resources")
        deleted = alice.post(f"/ui/resources/networks/{lan['id']}/delete")
        assert deleted.status_code == 303 and "network lan deleted" in alice.get(deleted.headers["location"]).text
        assert lan["id"] not in networks_of(net_cluster) and network in networks_of(net_cluster)
    with logged_in(net_cluster, "node3", "alice", "alice-pass-1") as alice:
        alice.get("/ui/resources")
        assert alice.post(f"/ui/resources/networks/{bobnet}/delete").status_code == 404
    assert bobnet in networks_of(net_cluster)


def test_only_admins_migrate_and_an_admin_moves_a_stopped_vm(net_cluster: LocalCluster, alice_vm: str) -> None:
    source = vm_of(net_cluster, alice_vm)["node"]
    assert source in NODES
    with logged_in(net_cluster, "node1", "alice", "alice-pass-1") as alice:
        page = alice.get(f"/ui/vms/{alice_vm}")
        assert page.status_code == 200 and 'id="migrate"' not in page.text and "/migrate" not in page.text
        target = next(n for n in NODES if n != source)
        refused = alice.post(f"/ui/vms/{alice_vm}/migrate", {"node": target, "mode": "offline"})
        assert refused.status_code == 403 and "admin role" in refused.text and 'class="banner bad" role="alert"' in refused.text
    assert vm_of(net_cluster, alice_vm)["node"] == source
    with logged_in(net_cluster, "node2", "admin", net_cluster.password) as admin:
        page = admin.get(f"/ui/vms/{alice_vm}")
        assert 'id="migrate-form"' in page.text and f'<option value="{target}"' in page.text
        assert f'<option value="{source}"' not in page.text  # not its own node
        nowhere = admin.post(f"/ui/vms/{alice_vm}/migrate", {"node": "nowhere", "mode": "offline"})
        assert nowhere.status_code == 404 and "nowhere" in (field_error(nowhere.text, "node") or "")
        bad_mode = admin.post(f"/ui/vms/{alice_vm}/migrate", {"node": target, "mode": "teleport"})
        assert bad_mode.status_code == 400 and field_error(bad_mode.text, "mode")
        assert vm_of(net_cluster, alice_vm)["node"] == source
        # libvirt's test driver carries out an offline migration (tests/cluster/test_migration.py)
        moved = admin.post(f"/ui/vms/{alice_vm}/migrate", {"node": target, "mode": "offline"})
        assert moved.status_code == 303, moved.text
        task_id = task_of(moved.headers["location"])
        assert f'data-task="{task_id}"' in admin.get(moved.headers["location"]).text
        assert task_ended(net_cluster, task_id, timeout=60)["state"] == "succeeded"
        vm = wait_for(lambda: (v := vm_of(net_cluster, alice_vm))["node"] == target and v["state"] == "stopped" and v, timeout=30, what="the VM on its target")
        assert vm["migrated"]["from"] == source and vm["migrated"]["mode"] == "offline"
        # no node given: the allocator picks one, never the VM's own
        again = admin.post(f"/ui/vms/{alice_vm}/migrate", {"node": "", "mode": ""})
        assert again.status_code == 303, again.text
        assert task_ended(net_cluster, task_of(again.headers["location"]), timeout=60)["state"] == "succeeded"
        assert wait_for(lambda: (n := vm_of(net_cluster, alice_vm)["node"]) not in (None, target) and n, timeout=30, what="moved again")
