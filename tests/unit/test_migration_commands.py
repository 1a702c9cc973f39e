"""Migration commands: what a migration needs (refused requests change nothing), its
steps, the commit point, roll-back, cancel, and the task that follows it."""

from __future__ import annotations

from typing import Any

import pytest

from cloudd.alloc.snapshot import AllocSettings, Snapshot
from cloudd.alloc.placement import used
from tests.factories import PW_HASH, Replica, admit, initialized
from tests.unit.test_compute_commands import unchanged

INVENTORY = {"cpus": 4, "ram_mb": 5120, "disk_gb": 100.0}
LIVE = {"cpu_models": ["qemu64", "Haswell"], "live_migration": True, "migration_uri": "qemu+tls://{n}/system", "migrate_uri": None}


def cluster(nodes: int = 3, shared: bool = True, live: bool = True) -> Replica:
    replica = initialized()
    for n in range(2, nodes + 1):
        admit(replica, f"n{n}", n)
    for n in range(1, nodes + 1):
        compute = {**LIVE, "migration_uri": LIVE["migration_uri"].format(n=f"n{n}"), "live_migration": live}
        replica.ok("node.register", {"name": f"n{n}", "roles": ["hypervisor"], "inventory": INVENTORY, "compute": compute})
        replica.ok("node.heartbeat", {"name": f"n{n}"})
        replica.ok("node.status_set", {"name": f"n{n}", "status": "up", "observed_seq": 1})
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    replica.ok("flavor.create", {"name": "small", "vcpus": 1, "ram_mb": 1024, "disk_gb": 5})
    if shared:
        replica.ok("cluster.settings_set", {"shared_vm_storage": True})
    return replica


def running_vm(replica: Replica, vm_id: str = "v1", node: str = "n1", **extra: Any) -> dict[str, Any]:
    replica.ok("vm.create", {"id": vm_id, "name": vm_id, "owner": "bob", "flavor": "small", **extra})
    replica.ok("vm.place", {"id": vm_id, "node": node})
    replica.ok("vm.report", {"id": vm_id, "node": node, "power": "running"})
    return replica.state.vms[vm_id]


def step(replica: Replica, vm: dict[str, Any], node: str, phase: str, **extra: Any) -> Any:
    if phase == "migrating":
        extra.setdefault("target_spec", {"vm_id": vm["id"], "name": vm["name"], "vcpus": 1, "ram_mb": 1024})
    return replica.ok("vm.migration_step", {"id": vm["id"], "migration": vm["migration"]["id"], "node": node, "phase": phase, **extra})


def task_of(replica: Replica, vm_id: str) -> dict[str, Any]:
    return [t for t in replica.state.tasks.values() if t["op"] == "vm.migrate" and t["vm"] == vm_id][-1]


def test_a_placed_vm_gets_the_best_cpu_model_all_hypervisors_share() -> None:
    replica = cluster()
    vm = running_vm(replica)
    assert vm["cpu_model"] == "Haswell"


def test_offline_migration_steps_commit_point_and_task() -> None:
    replica = cluster(shared=False)
    vm = running_vm(replica)
    result = replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "offline", "force": True})
    assert vm["state"] == "migrating" and vm["node"] == "n1"
    mig = vm["migration"]
    assert (mig["phase"], mig["source"], mig["target"], mig["copy"]) == ("stopping", "n1", "n2", True)
    assert result["task"]["state"] == "running"
    # the room is held on both nodes while it moves
    assert used("n2", replica.state.vms.values()).ram_mb == 1024 and used("n1", replica.state.vms.values()).ram_mb == 1024
    snap = Snapshot.build(replica.state.nodes, replica.state.vms.values(), AllocSettings())
    assert snap.nodes["n2"].alloc_ram_mb == 1024 and "v1" not in snap.nodes["n2"].vms
    # the target cannot claim the source's step, nor skip one
    assert replica.do("vm.migration_step", {"id": "v1", "migration": mig["id"], "node": "n2", "phase": "copying"})["error"]["code"] == "conflict"
    unchanged(replica, "vm.migration_step", {"id": "v1", "migration": mig["id"], "node": "n2", "phase": "switched"}, "conflict")
    unchanged(replica, "vm.migration_step", {"id": "v1", "migration": mig["id"], "node": "n3", "phase": "copying"}, "forbidden")
    # a report from the source while it moves changes only what was observed
    replica.ok("vm.report", {"id": "v1", "node": "n1", "power": "shut_off"})
    assert vm["state"] == "migrating"
    step(replica, vm, "n1", "copying")
    replica.ok("vm.migration_progress", {"id": "v1", "migration": mig["id"], "node": "n2", "percent": 50, "message": "2.5 of 5 GB"})
    task = task_of(replica, "v1")
    assert task["progress"] == 20 + 35 and "2.5 of 5 GB" in task["message"]
    step(replica, vm, "n2", "switched")
    # the commit point: the VM is the target's, the source must clean up its files
    assert vm["node"] == "n2" and vm["state"] == "creating" and "migration" not in vm
    assert vm["leftovers"] == {"n1": {"files": True}}
    assert task["state"] == "running" and task["progress"] == 95
    replica.ok("vm.report", {"id": "v1", "node": "n2", "power": "running"})
    assert vm["state"] == "running" and task["state"] == "succeeded" and "n2" in task["message"]
    replica.ok("vm.leftovers_cleaned", {"id": "v1", "node": "n1"})
    assert "leftovers" not in vm
    unchanged(replica, "vm.leftovers_cleaned", {"id": "v1", "node": "n2"}, "conflict")


def test_live_migration_lands_with_its_downtime() -> None:
    replica = cluster()
    vm = running_vm(replica)
    replica.ok("vm.migrate", {"id": "v1", "node": "n3", "mode": "live", "max_downtime_ms": 200})
    mig = vm["migration"]
    assert (mig["phase"], mig["copy"], mig["max_downtime_ms"]) == ("preparing", False, 200)
    step(replica, vm, "n3", "migrating")
    step(replica, vm, "n1", "landed", downtime_ms=42.0)
    assert vm["node"] == "n3" and vm["state"] == "running" and vm["migrated"]["mode"] == "live"
    task = task_of(replica, "v1")
    assert task["state"] == "succeeded" and "42 ms" in task["message"]
    assert vm["leftovers"] == {"n1": {"files": False}}


def test_a_failed_live_migration_leaves_the_vm_running_on_its_source() -> None:
    replica = cluster()
    vm = running_vm(replica)
    replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "live"})
    step(replica, vm, "n2", "migrating")
    # while it runs, only the source can tell it failed
    unchanged(replica, "vm.migration_step", {"id": "v1", "migration": vm["migration"]["id"], "node": "n2", "phase": "failed"}, "conflict")
    step(replica, vm, "n1", "failed", reason="libvirt: connection reset")
    assert vm["node"] == "n1" and vm["state"] == "running" and "migration" not in vm
    task = task_of(replica, "v1")
    assert task["state"] == "failed" and "connection reset" in task["message"] and "stays on n1" in task["message"]
    assert vm["leftovers"] == {"n2": {"files": False}}
    assert used("n2", replica.state.vms.values()).ram_mb == 0


def test_cancel_rolls_an_offline_migration_back_and_asks_the_source_to_abort_a_live_one() -> None:
    replica = cluster(shared=False)
    vm = running_vm(replica)
    replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "offline", "force": True})
    step(replica, vm, "n1", "copying")
    replica.ok("vm.migration_cancel", {"id": "v1"}, actor={"user": "admin"})
    assert vm["node"] == "n1" and vm["state"] == "creating" and vm["leftovers"] == {"n2": {"files": True}}
    assert task_of(replica, "v1")["state"] == "failed"
    unchanged(replica, "vm.migration_cancel", {"id": "v1"}, "conflict")

    live = cluster()
    vm = running_vm(live)
    live.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "live"})
    step(live, vm, "n2", "migrating")
    live.ok("vm.migration_cancel", {"id": "v1", "reason": "too slow"})
    assert vm["migration"]["cancel"] and vm["state"] == "migrating"
    assert "cancelling (too slow)" in task_of(live, "v1")["message"]


@pytest.mark.parametrize(
    "setup, args, code, words",
    [
        (None, {"node": "n1", "mode": "offline", "force": True}, "invalid", "on n1 already"),
        ("maintenance", {"node": "n2", "mode": "offline", "force": True}, "conflict", "in maintenance"),
        ("full", {"node": "n2", "mode": "offline", "force": True}, "conflict", "RAM"),
        (None, {"node": "n2", "mode": "offline"}, "conflict", "give force"),
        ("stopped", {"node": "n2", "mode": "live"}, "conflict", "needs it running"),
        ("local", {"node": "n2", "mode": "live"}, "conflict", "migrate it offline"),
        ("no-live", {"node": "n2", "mode": "live"}, "conflict", "cannot live-migrate"),
        (None, {"node": "n9", "mode": "offline", "force": True}, "not_found", "n9"),
        ("migrating", {"node": "n3", "mode": "offline", "force": True}, "conflict", "already migrating"),
        ("pinned", {"node": "n2", "mode": "offline", "force": True}, "conflict", "pinned"),
        ("old-cpu", {"node": "n2", "mode": "live"}, "conflict", "CPU model"),
        ("limit", {"node": "n2", "mode": "live"}, "conflict", "limit"),
    ],
)
def test_bad_migrations_are_refused_and_change_nothing(setup: str | None, args: dict[str, Any], code: str, words: str) -> None:
    replica = cluster(shared=setup != "local", live=setup != "no-live")
    running_vm(replica, pinned_extra := "v1", **({"nodes": ["n1", "n3"]} if setup == "pinned" else {}))
    if setup == "maintenance":
        replica.ok("node.maintenance_set", {"name": "n2", "enabled": True})
    elif setup == "full":
        running_vm(replica, "big1", "n2")
        running_vm(replica, "big2", "n2")
        running_vm(replica, "big3", "n2")
        running_vm(replica, "big4", "n2")
    elif setup == "stopped":
        replica.ok("vm.stop", {"id": "v1"})
        replica.ok("vm.report", {"id": "v1", "node": "n1", "power": "shut_off"})
    elif setup == "migrating":
        replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "live"})
    elif setup == "old-cpu":
        replica.ok("node.register", {"name": "n2", "roles": ["hypervisor"], "inventory": INVENTORY, "compute": {**LIVE, "cpu_models": ["qemu64"]}})
    elif setup == "limit":
        replica.ok("cluster.settings_set", {"migrations_per_node": 1})
        running_vm(replica, "v2", "n2")
        replica.ok("vm.migrate", {"id": "v2", "node": "n3", "mode": "live"})
    assert pinned_extra == "v1"
    error = unchanged(replica, "vm.migrate", {"id": "v1", **args}, code)
    assert words in error["message"], error


def test_the_vm_refuses_power_and_device_changes_while_it_moves() -> None:
    replica = cluster()
    running_vm(replica)
    replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "live"})
    for op in ("vm.stop", "vm.start", "vm.delete"):
        unchanged(replica, op, {"id": "v1"}, "conflict")


def test_a_live_migration_whose_source_is_lost_is_recovered_only_on_its_target() -> None:
    replica = cluster()
    vm = running_vm(replica)
    replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "live"})
    step(replica, vm, "n2", "migrating")
    replica.ok("node.status_set", {"name": "n1", "status": "down", "observed_seq": 1})
    seq = replica.state.nodes["n1"]["lease_seq"]
    unchanged(replica, "vm.failover", {"id": "v1", "from_node": "n1", "node": "n3", "observed_seq": seq}, "conflict")
    replica.ok("vm.failover", {"id": "v1", "from_node": "n1", "node": "n2", "observed_seq": seq})
    assert vm["node"] == "n2" and "migration" not in vm
    assert task_of(replica, "v1")["state"] == "failed"


def test_a_volume_is_exported_to_both_nodes_only_while_its_vm_migrates_live() -> None:
    from cloudd.commands.volumes import export_initiators
    from cloudd.ops.storage import node_initiator

    replica = cluster()
    vm = running_vm(replica)
    volume = {"id": "vo1", "attached_to": "v1"}
    assert export_initiators(replica.state, volume) == [node_initiator("n1")]
    replica.ok("vm.migrate", {"id": "v1", "node": "n2", "mode": "live"})
    assert export_initiators(replica.state, volume) == [node_initiator("n1"), node_initiator("n2")]
    step(replica, vm, "n2", "migrating")
    step(replica, vm, "n1", "landed")
    assert export_initiators(replica.state, volume) == [node_initiator("n2")]  # the source is fenced off
    replica.ok("vm.migrate", {"id": "v1", "node": "n3", "mode": "live"})
    replica.ok("vm.migration_cancel", {"id": "v1"})
    assert export_initiators(replica.state, volume) == [node_initiator("n2")]
