"""Flavors, images, VMs: sizes, ownership, the lifecycle and its 409s, agent reports."""

from __future__ import annotations

import copy

import pytest

from cloudd.model.vm import STATES, TRANSITIONS
from tests.factories import PW_HASH, Replica, initialized


def cluster_with_hypervisor() -> Replica:
    replica = initialized()
    replica.ok("node.register", {"name": "n1", "roles": ["hypervisor"], "inventory": {"cpus": 4, "ram_mb": 9216, "disk_gb": 100.0}})
    replica.ok("node.heartbeat", {"name": "n1"})
    replica.ok("node.status_set", {"name": "n1", "status": "up", "observed_seq": 1})
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    replica.ok("flavor.create", {"name": "small", "vcpus": 1, "ram_mb": 512, "disk_gb": 5})
    replica.ok("image.register", {"id": "img1", "name": "tiny", "owner": "admin", "public": True, "format": "qcow2", "path": "/var/lib/cloudd/images/tiny.qcow2", "size_gb": 1})
    return replica


def new_vm(replica: Replica, vm_id: str = "vm1", **extra: object) -> dict:
    args = {"id": vm_id, "name": f"web-{vm_id}", "owner": "bob", "flavor": "small", "image": "img1", "vnc_password": "Abcd1234", **extra}
    return replica.ok("vm.create", args)


def unchanged(replica: Replica, op: str, args: dict, code: str) -> dict:
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = replica.do(op, args)
    assert outcome.get("error", {}).get("code") == code, outcome
    assert replica.state.domain_dict() == before
    return outcome["error"]


def test_every_state_has_its_transitions_and_deleting_is_final() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for targets in TRANSITIONS.values():
        assert targets <= set(STATES)
    assert TRANSITIONS["deleting"] == frozenset()


def test_create_from_flavor_and_image() -> None:
    replica = cluster_with_hypervisor()
    assert new_vm(replica)["state"] == "pending"
    vm = replica.state.vms["vm1"]
    assert (vm["vcpus"], vm["ram_mb"], vm["disk_gb"]) == (1, 512, 5)
    assert vm["desired"]["power"] == "running" and vm["node"] is None


@pytest.mark.parametrize(
    "extra, code, words",
    [
        ({"flavor": "huge"}, "not_found", "flavor huge"),
        ({"image": "nope"}, "not_found", "image nope"),
        ({"name": "Not_A_Host"}, "invalid", "name"),
        ({"flavor": None, "vcpus": 0, "ram_mb": 512, "disk_gb": 5}, "invalid", "vcpus"),
        ({"flavor": None, "vcpus": 1, "ram_mb": -5, "disk_gb": 5}, "invalid", "ram_mb"),
        ({"flavor": None, "vcpus": 99, "ram_mb": 512, "disk_gb": 5}, "invalid", "more than any hypervisor"),
        ({"flavor": None, "vcpus": 1, "ram_mb": 512 << 10, "disk_gb": 5}, "invalid", "more than any hypervisor"),
        ({"owner": "ghost"}, "not_found", "user ghost"),
        ({"ssh_keys": ["not a key"]}, "invalid", "SSH"),
    ],
)
def test_create_refuses_bad_input_and_changes_nothing(extra: dict, code: str, words: str) -> None:
    replica = cluster_with_hypervisor()
    args = {"id": "vm1", "name": "web", "owner": "bob", "flavor": "small", "image": "img1", **extra}
    if args.get("flavor") is None:
        args.pop("flavor")
    error = unchanged(replica, "vm.create", args, code)
    assert words in error["message"]


def test_names_are_unique_per_owner_and_private_images_are_hidden() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica, "vm1", name="web")
    unchanged(replica, "vm.create", {"id": "vm2", "name": "web", "owner": "bob", "flavor": "small"}, "conflict")
    replica.ok("image.register", {"id": "img2", "name": "mine", "owner": "admin", "public": False, "format": "raw", "path": "/x.raw", "size_gb": 1})
    unchanged(replica, "vm.create", {"id": "vm3", "name": "db", "owner": "bob", "flavor": "small", "image": "img2"}, "not_found")


def test_lifecycle_from_placement_to_deletion() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "creating"
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "vnc_port": 5901})
    assert vm["state"] == "running" and vm["observed"]["vnc_port"] == 5901
    replica.ok("vm.shutdown", {"id": "vm1"})
    assert vm["state"] == "stopping" and vm["desired"] == {"power": "stopped", "action": None, "action_seq": 0, "stop_mode": "clean"}
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running"})
    assert vm["state"] == "stopping"
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "shut_off"})
    assert vm["state"] == "stopped"
    replica.ok("vm.start", {"id": "vm1"})
    assert vm["state"] == "starting"
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running"})
    assert replica.ok("vm.reset", {"id": "vm1"})["action_seq"] == 1
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "action_seq": 1})
    assert vm["desired"]["action"] is None
    replica.ok("vm.stop", {"id": "vm1"})
    assert vm["desired"]["stop_mode"] == "force"
    replica.ok("vm.delete", {"id": "vm1"})
    assert vm["state"] == "deleting"
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "shut_off"})
    assert "vm1" in replica.state.vms
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "absent"})
    assert "vm1" not in replica.state.vms


def test_forbidden_actions_are_409_with_the_current_state() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica)
    error = unchanged(replica, "vm.reset", {"id": "vm1"}, "conflict")
    assert error["details"]["state"] == "pending"
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    unchanged(replica, "vm.place", {"id": "vm1", "node": "n1"}, "conflict")
    replica.ok("vm.delete", {"id": "vm1"})
    for op in ("vm.start", "vm.shutdown", "vm.stop", "vm.reboot"):
        error = unchanged(replica, op, {"id": "vm1"}, "conflict")
        assert error["details"]["state"] == "deleting"
    assert replica.ok("vm.delete", {"id": "vm1"})["state"] == "deleting"  # deleting twice is fine


def test_a_pending_vm_is_deleted_at_once() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica)
    assert replica.ok("vm.delete", {"id": "vm1"})["state"] == "deleted"
    assert replica.state.vms == {}


def test_placement_is_checked_against_capacity_and_node_state() -> None:
    replica = cluster_with_hypervisor()
    replica.ok("flavor.create", {"name": "big", "vcpus": 4, "ram_mb": 6144, "disk_gb": 50})
    new_vm(replica, "a", flavor="big")
    new_vm(replica, "b", flavor="big")
    replica.ok("vm.place", {"id": "a", "node": "n1"})
    error = unchanged(replica, "vm.place", {"id": "b", "node": "n1"}, "conflict")
    assert "RAM" in error["message"]
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": True})
    new_vm(replica, "c")
    assert "maintenance" in unchanged(replica, "vm.place", {"id": "c", "node": "n1"}, "conflict")["message"]


def test_reports_from_the_wrong_node_and_errors() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    unchanged(replica, "vm.report", {"id": "vm1", "node": "n2", "power": "running"}, "conflict")
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "absent", "error": "disk image missing"})
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "error" and vm["error"] == "disk image missing"
    replica.ok("vm.start", {"id": "vm1"})
    assert vm["state"] == "starting" and vm["error"] is None


def test_images_and_users_in_use_cannot_go() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica)
    unchanged(replica, "image.delete", {"id": "img1"}, "conflict")
    unchanged(replica, "user.delete", {"name": "bob"}, "conflict")
    replica.ok("vm.delete", {"id": "vm1"})
    replica.ok("image.delete", {"id": "img1"})
    replica.ok("user.delete", {"name": "bob"})


def test_a_vm_reported_running_while_stopped_is_running() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "shut_off"})  # killed behind our back
    assert replica.state.vms["vm1"]["state"] == "stopped"
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running"})  # the agent started it again
    assert replica.state.vms["vm1"]["state"] == "running"
