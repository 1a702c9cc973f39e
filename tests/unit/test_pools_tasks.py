"""Resource pools (quotas), resizing, and the tasks that follow long operations."""

from __future__ import annotations

from typing import Any

from tests.factories import PW_HASH, Replica
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm, unchanged


def pooled(**limits: Any) -> Replica:
    replica = cluster_with_hypervisor()
    replica.ok("pool.create", {"name": "team", "limits": limits})
    replica.ok("user.update", {"name": "bob", "pool": "team"})
    return replica


def report(replica: Replica, power: str, **extra: Any) -> dict[str, Any]:
    return replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": power, **extra})


def test_a_pool_refuses_what_would_pass_a_limit_and_names_it() -> None:
    replica = pooled(vcpus=2, vms=5)
    new_vm(replica, "vm1")
    new_vm(replica, "vm2")
    error = unchanged(replica, "vm.create", {"id": "vm3", "name": "third", "owner": "bob", "flavor": "small", "image": "img1"}, "quota_exceeded")
    assert "vcpus=2" in error["message"] and error["details"] == {"pool": "team", "limit": "vcpus", "max": 2, "used": 2, "requested": 1}
    # the admin is in no pool: no limits
    replica.ok("vm.create", {"id": "vm4", "name": "x", "owner": "admin", "flavor": "small", "image": "img1"})


def test_disk_limits_count_os_disks_swap_and_extra_disks() -> None:
    replica = pooled(disk_gb=12)
    new_vm(replica, "vm1", swap_mb=1024)  # 5 GB + 1 GB swap
    replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 6})
    error = unchanged(replica, "vm.disk.add", {"id": "vm1", "disk_id": "d2", "size_gb": 1}, "quota_exceeded")
    assert error["details"]["limit"] == "disk_gb" and error["details"]["used"] == 12


def test_lowering_a_limit_keeps_what_exists_and_lifting_it_with_null_works() -> None:
    replica = pooled(vms=3)
    new_vm(replica, "vm1")
    new_vm(replica, "vm2")
    replica.ok("pool.update", {"name": "team", "limits": {"vms": 1}})
    assert set(replica.state.vms) == {"vm1", "vm2"}
    unchanged(replica, "vm.create", {"id": "vm3", "name": "c", "owner": "bob", "flavor": "small", "image": "img1"}, "quota_exceeded")
    replica.ok("pool.update", {"name": "team", "limits": {"vms": None}})
    new_vm(replica, "vm3")


def test_a_pool_with_members_cannot_be_deleted_and_an_unknown_pool_cannot_be_joined() -> None:
    replica = pooled()
    assert "bob" in unchanged(replica, "pool.delete", {"name": "team"}, "conflict")["message"]
    unchanged(replica, "user.update", {"name": "bob", "pool": "nope"}, "not_found")
    replica.ok("user.update", {"name": "bob", "pool": None})
    replica.ok("pool.delete", {"name": "team"})


def test_the_last_enabled_admin_cannot_be_disabled_or_demoted_and_disabling_ends_sessions() -> None:
    replica = cluster_with_hypervisor()
    unchanged(replica, "user.update", {"name": "admin", "disabled": True}, "conflict")
    unchanged(replica, "user.update", {"name": "admin", "role": "user"}, "conflict")
    replica.ok("token.create", {"token_id": "s1", "user": "bob", "secret_sha256": "0" * 64, "name": "login", "expires_at": None, "kind": "session"})
    replica.ok("token.create", {"token_id": "a1", "user": "bob", "secret_sha256": "0" * 64, "name": "ci", "expires_at": None})
    replica.ok("user.update", {"name": "bob", "disabled": True})
    assert set(replica.state.tokens) == {"a1"}  # kept, but refused while disabled (auth checks)


def test_resize_needs_a_stopped_vm_grows_the_disk_only_and_respects_the_pool() -> None:
    replica = pooled(ram_mb=2048)
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    report(replica, "running")
    unchanged(replica, "vm.resize", {"id": "vm1", "ram_mb": 1024}, "conflict")
    replica.ok("vm.shutdown", {"id": "vm1"})
    report(replica, "shut_off")
    unchanged(replica, "vm.resize", {"id": "vm1", "disk_gb": 4}, "invalid")
    unchanged(replica, "vm.resize", {"id": "vm1", "ram_mb": 4096}, "quota_exceeded")
    unchanged(replica, "vm.resize", {"id": "vm1"}, "invalid")
    result = replica.ok("vm.resize", {"id": "vm1", "vcpus": 2, "ram_mb": 2048, "disk_gb": 8})
    assert result["task"]["state"] == "succeeded"
    vm = replica.state.vms["vm1"]
    assert (vm["vcpus"], vm["ram_mb"], vm["disk_gb"], vm["flavor"]) == (2, 2048, 8, None)


def test_a_create_task_follows_the_vm_to_running() -> None:
    replica = cluster_with_hypervisor()
    task_id = new_vm(replica, "vm1")["task"]["id"]
    task = replica.state.tasks[task_id]
    assert (task["state"], task["progress"]) == ("running", 10)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    assert (task["progress"], task["message"]) == (40, "creating on n1")
    report(replica, "running")
    assert (task["state"], task["progress"], task["finished_at"]) == ("succeeded", 100, 1000.0)
    assert replica.state.vms["vm1"]["tasks"] == []


def test_a_failed_create_fails_its_task_with_the_reason() -> None:
    replica = cluster_with_hypervisor()
    task_id = new_vm(replica, "vm1")["task"]["id"]
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    report(replica, "shut_off", error="qemu said no")
    assert (replica.state.tasks[task_id]["state"], replica.state.tasks[task_id]["message"]) == ("failed", "qemu said no")


def test_a_stop_supersedes_a_running_start_and_delete_ends_everything() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica, "vm1", power="stopped")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    report(replica, "shut_off")
    start = replica.ok("vm.start", {"id": "vm1"})["task"]["id"]
    stop = replica.ok("vm.stop", {"id": "vm1"})["task"]["id"]
    assert replica.state.tasks[start]["state"] == "superseded"
    report(replica, "shut_off")
    assert replica.state.tasks[stop]["state"] == "succeeded"
    delete = replica.ok("vm.delete", {"id": "vm1"})["task"]["id"]
    assert replica.state.tasks[delete]["state"] == "running"
    report(replica, "absent")
    assert replica.state.tasks[delete]["state"] == "succeeded"


def test_a_hotplug_task_waits_for_the_guest_and_fails_on_a_device_error() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    report(replica, "running", disks=["vda", "sda"])
    add = replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 1})["task"]["id"]
    assert replica.state.tasks[add]["state"] == "running"
    report(replica, "running", disks=["vda", "vdc", "sda"])
    assert replica.state.tasks[add]["state"] == "succeeded"
    remove = replica.ok("vm.disk.remove", {"id": "vm1", "disk_id": "d1"})["task"]["id"]
    report(replica, "running", disks=["vda", "vdc", "sda"], device_error="the guest did not let go")
    assert (replica.state.tasks[remove]["state"], replica.state.tasks[remove]["message"]) == ("failed", "the guest did not let go")


def test_reboot_tasks_end_when_the_agent_acknowledges() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    report(replica, "running")
    first = replica.ok("vm.reboot", {"id": "vm1"})["task"]["id"]
    second = replica.ok("vm.reset", {"id": "vm1"})["task"]["id"]
    assert replica.state.tasks[first]["state"] == "superseded"
    report(replica, "running", action_seq=2)
    assert replica.state.tasks[second]["state"] == "succeeded"


def test_a_retried_request_returns_the_same_task() -> None:
    replica = cluster_with_hypervisor()
    args = {"id": "vm1", "name": "web", "owner": "bob", "flavor": "small", "image": "img1"}
    first = replica.do("vm.create", args, rid="same")
    again = replica.do("vm.create", args, rid="same")
    assert again["duplicate"] and again["result"]["task"]["id"] == first["result"]["task"]["id"]
    assert len(replica.state.tasks) == 1


def test_old_finished_tasks_are_trimmed() -> None:
    from cloudd.model import tasks

    replica = cluster_with_hypervisor()
    replica.ok("user.create", {"name": "carol", "role": "user", "password_hash": PW_HASH})
    new_vm(replica, "vm1", power="stopped")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    report(replica, "shut_off")
    old = tasks.TASK_RETENTION, tasks.TRIM_BATCH
    tasks.TASK_RETENTION, tasks.TRIM_BATCH = 5, 2
    try:
        for i in range(10):
            replica.ok("vm.resize", {"id": "vm1", "vcpus": 1 + i % 2})
        assert len(replica.state.tasks) <= 7
    finally:
        tasks.TASK_RETENTION, tasks.TRIM_BATCH = old
