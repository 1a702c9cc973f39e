"""Storage pools and volumes: the replicated commands."""

from __future__ import annotations

from typing import Any

from cloudd.ops.storage import node_initiator
from cloudd.commands.volumes import export_initiators
from tests.factories import Replica
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm, unchanged

GIB = 1 << 30


def storage_cluster() -> Replica:
    replica = cluster_with_hypervisor()
    replica.ok("node.register", {"name": "n1", "roles": ["hypervisor", "storage"], "inventory": {"cpus": 4, "ram_mb": 9216, "disk_gb": 100.0}})
    return replica


def with_pool(free_gb: float = 100) -> Replica:
    replica = storage_cluster()
    replica.ok("storage_pool.create", {"name": "fast", "node": "n1", "backend": "file", "config": {"path": "/srv/volumes"}})
    replica.ok("storage_pool.report", {"name": "fast", "node": "n1", "total_bytes": 200 * GIB, "free_bytes": int(free_gb * GIB)})
    return replica


def report(replica: Replica, volume_id: str = "vo1", **extra: Any) -> dict[str, Any]:
    args = {"id": volume_id, "node": "n1", "present": True, "size_bytes": 10 * GIB, **extra}
    return replica.ok("volume.report", args)


def created(replica: Replica, volume_id: str = "vo1", size_gb: float = 10, **extra: Any) -> dict[str, Any]:
    result = replica.ok("volume.create", {"id": volume_id, "name": f"data-{volume_id}", "owner": "bob", "size_gb": size_gb, **extra})
    report(replica, volume_id, size_bytes=int(size_gb * GIB))
    return result


def test_pool_configs_are_checked_per_backend() -> None:
    replica = cluster_with_hypervisor()
    unchanged(replica, "storage_pool.create", {"name": "p", "node": "n1", "backend": "file", "config": {"path": "/x"}}, "invalid")  # no storage role
    replica = storage_cluster()
    unchanged(replica, "storage_pool.create", {"name": "p", "node": "n1", "backend": "file", "config": {"path": "relative"}}, "invalid")
    unchanged(replica, "storage_pool.create", {"name": "p", "node": "n1", "backend": "lvm", "config": {"vg": "vg0; rm -rf /"}}, "invalid")
    unchanged(replica, "storage_pool.create", {"name": "p", "node": "n1", "backend": "drbd", "config": {"vg": "vg0", "peer": "n1"}}, "invalid")
    unchanged(replica, "storage_pool.create", {"name": "p", "node": "nowhere", "backend": "file", "config": {"path": "/x"}}, "not_found")
    replica.ok("storage_pool.create", {"name": "p", "node": "n1", "backend": "lvm", "config": {"vg": "vg0", "thin_pool": "thin"}})


def test_a_volume_is_created_in_the_pool_with_room_and_counts_against_the_pool() -> None:
    replica = with_pool()
    result = replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 10})
    assert result["pool"] == "fast" and result["task"]["state"] == "running"
    assert replica.state.volumes["vo1"]["node"] == "n1"
    report(replica)
    assert replica.state.volumes["vo1"]["state"] == "available"
    assert replica.state.tasks[result["task"]["id"]]["state"] == "succeeded"
    # bad input: nothing changes
    unchanged(replica, "volume.create", {"id": "vo2", "name": "big", "owner": "bob", "size_gb": 500}, "insufficient_storage")
    unchanged(replica, "volume.create", {"id": "vo2", "name": "neg", "owner": "bob", "size_gb": 0}, "invalid")
    unchanged(replica, "volume.create", {"id": "vo2", "name": "x", "owner": "bob", "size_gb": 1, "pool": "nope"}, "not_found")
    unchanged(replica, "volume.create", {"id": "vo2", "name": "data", "owner": "bob", "size_gb": 1}, "conflict")
    # a pool limit counts volumes as disk
    replica.ok("pool.create", {"name": "team", "limits": {"disk_gb": 20}})
    replica.ok("user.update", {"name": "bob", "pool": "team"})
    error = unchanged(replica, "volume.create", {"id": "vo2", "name": "more", "owner": "bob", "size_gb": 11}, "quota_exceeded")
    assert error["details"]["used"] == 10


def test_creating_volumes_reserve_space_until_the_pool_reports_again() -> None:
    replica = with_pool(free_gb=15)
    replica.ok("volume.create", {"id": "vo1", "name": "a", "owner": "bob", "size_gb": 10})
    unchanged(replica, "volume.create", {"id": "vo2", "name": "b", "owner": "bob", "size_gb": 10}, "insufficient_storage")


def test_attach_follows_the_vm_node_for_the_export_and_refuses_what_it_must() -> None:
    replica = with_pool()
    created(replica)
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    result = replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    assert result["target"] == "vdc" and replica.state.vms["vm1"]["volumes"] == [{"id": "vo1", "target": "vdc"}]
    assert replica.state.volumes["vo1"]["state"] == "attached"
    assert export_initiators(replica.state, replica.state.volumes["vo1"]) == [node_initiator("n1")]
    # the next extra disk does not take the volume's device name
    assert replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 1})["disk"]["target"] == "vdd"
    unchanged(replica, "volume.delete", {"id": "vo1"}, "conflict")
    unchanged(replica, "volume.attach", {"id": "vo1", "vm": "vm1"}, "conflict")
    # someone else's VM is not found
    replica.ok("vm.create", {"id": "vm9", "name": "other", "owner": "admin", "flavor": "small", "image": "img1"})
    created(replica, "vo2")
    unchanged(replica, "volume.attach", {"id": "vo2", "vm": "vm9"}, "not_found")


def test_detaching_from_a_running_guest_waits_until_it_lets_go() -> None:
    replica = with_pool()
    created(replica)
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "disks": ["vda", "sda"]})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "disks": ["vda", "vdc", "sda"]})
    task = replica.ok("volume.detach", {"id": "vo1"})["task"]["id"]
    assert replica.state.volumes["vo1"]["state"] == "detaching" and export_initiators(replica.state, replica.state.volumes["vo1"]) == []
    unchanged(replica, "volume.delete", {"id": "vo1"}, "conflict")
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "disks": ["vda", "vdc", "sda"]})
    assert replica.state.volumes["vo1"]["state"] == "detaching"
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "disks": ["vda", "sda"]})
    assert replica.state.volumes["vo1"]["state"] == "available" and replica.state.volumes["vo1"]["target"] is None
    assert replica.state.tasks[task]["state"] == "succeeded"


def test_resize_grows_offline_and_shrinks_only_when_forced() -> None:
    replica = with_pool()
    created(replica)
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running"})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    unchanged(replica, "volume.resize", {"id": "vo1", "size_gb": 20}, "conflict")  # its VM runs
    replica.ok("vm.stop", {"id": "vm1"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "shut_off"})
    unchanged(replica, "volume.resize", {"id": "vo1", "size_gb": 5}, "invalid")
    task = replica.ok("volume.resize", {"id": "vo1", "size_gb": 20})["task"]["id"]
    report(replica, size_bytes=10 * GIB)  # a report from before the resize
    assert replica.state.volumes["vo1"]["state"] == "resizing"
    report(replica, size_bytes=20 * GIB)
    assert replica.state.volumes["vo1"]["state"] == "attached" and replica.state.tasks[task]["state"] == "succeeded"
    replica.ok("volume.resize", {"id": "vo1", "size_gb": 15, "force": True})
    report(replica, size_bytes=20 * GIB)  # stale: still the old size
    assert replica.state.volumes["vo1"]["state"] == "resizing"
    report(replica, size_bytes=15 * GIB)
    assert replica.state.volumes["vo1"]["state"] == "attached"


def test_deleting_a_vm_frees_its_volumes_and_a_deleted_volume_goes_once_its_node_says_so() -> None:
    replica = with_pool()
    created(replica)
    new_vm(replica, "vm1")
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    replica.ok("vm.delete", {"id": "vm1"})  # pending: gone at once
    assert replica.state.volumes["vo1"]["state"] == "available"
    task = replica.ok("volume.delete", {"id": "vo1"})["task"]["id"]
    report(replica)  # still there
    assert replica.state.volumes["vo1"]["state"] == "deleting"
    replica.ok("volume.report", {"id": "vo1", "node": "n1", "present": False})
    assert "vo1" not in replica.state.volumes and replica.state.tasks[task]["state"] == "succeeded"
    unchanged(replica, "storage_pool.delete", {"name": "nope"}, "not_found")
    replica.ok("storage_pool.delete", {"name": "fast"})


def test_a_failed_create_puts_the_volume_in_error_with_the_reason() -> None:
    replica = with_pool()
    task = replica.ok("volume.create", {"id": "vo1", "name": "x", "owner": "bob", "size_gb": 1})["task"]["id"]
    replica.ok("volume.report", {"id": "vo1", "node": "n1", "present": False, "error": "qemu-img: no space"})
    assert replica.state.volumes["vo1"]["state"] == "error" and replica.state.tasks[task]["message"] == "qemu-img: no space"
    unchanged(replica, "volume.report", {"id": "vo1", "node": "n2", "present": True}, "conflict")


def test_a_user_who_still_owns_volumes_or_images_cannot_be_deleted() -> None:
    replica = with_pool()
    created(replica)
    error = unchanged(replica, "user.delete", {"name": "bob"}, "conflict")
    assert "still owns volumes: data-vo1" in error["message"]
    replica.ok("volume.delete", {"id": "vo1"})
    replica.ok("volume.report", {"id": "vo1", "node": "n1", "present": False})
    replica.ok("image.create", {"id": "im1", "name": "mine", "owner": "bob", "public": False, "format": "raw"})
    assert "still owns images: mine" in unchanged(replica, "user.delete", {"name": "bob"}, "conflict")["message"]
    replica.ok("image.delete", {"id": "im1"})
    replica.ok("user.delete", {"name": "bob"})
