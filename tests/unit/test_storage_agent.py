"""The storage agent with in-memory volumes and exports: creation, export ACLs that follow
the VM's node (fencing), resize, delete, usage counters."""

from __future__ import annotations

import asyncio

from cloudd.ops.fake_storage import FakeExports, FakeVolumes
from cloudd.ops.storage import ExportStats, node_initiator, volume_target
from cloudd.storage_agent import ExportCounters, StorageReconciler, chap_credentials
from tests.fake_env import FakeEnv
from tests.unit.test_volumes import GIB, with_pool
from tests.unit.test_compute_commands import new_vm

SECRET = "cluster-secret"


def agent(volumes: FakeVolumes, exports: FakeExports) -> StorageReconciler:
    return StorageReconciler("n1", lambda pool: volumes, exports, SECRET, report_every_s=30.0, clock=lambda: 0.0)


def test_the_agent_creates_exports_to_the_vm_node_only_and_fences_on_a_move() -> None:
    replica = with_pool()
    replica.ok("node.register", {"name": "n2", "roles": ["hypervisor"], "inventory": {"cpus": 4, "ram_mb": 9216, "disk_gb": 100.0}}) if "n2" in replica.state.nodes else None
    env = FakeEnv(replica)
    volumes, exports = FakeVolumes(), FakeExports()
    storage = agent(volumes, exports)
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 2})
    asyncio.run(storage.step(env))
    assert volumes.sizes == {"vo1": 2 * GIB} and replica.state.volumes["vo1"]["state"] == "available"
    assert exports.targets == {}  # not attached: offered to no one
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    asyncio.run(storage.step(env))
    spec = exports.targets[volume_target("vo1")]
    assert spec.initiators == (node_initiator("n1"),) and (spec.chap_user, spec.chap_password) == chap_credentials(SECRET, "vo1")
    assert replica.state.volumes["vo1"]["observed"]["exported_to"] == [node_initiator("n1")]
    assert exports.login(volume_target("vo1"), node_initiator("n1"), *chap_credentials(SECRET, "vo1"))
    assert not exports.login(volume_target("vo1"), node_initiator("n1"), "v-vo1", "wrong-password-123")
    # the VM moves (failover puts it on another node): the old node is fenced
    replica.state.vms["vm1"]["node"] = "n2"
    asyncio.run(storage.step(env))
    assert exports.targets[volume_target("vo1")].initiators == (node_initiator("n2"),)
    assert exports.sessions[volume_target("vo1")] == set()  # n1's session ended
    assert not exports.login(volume_target("vo1"), node_initiator("n1"), *chap_credentials(SECRET, "vo1"))


def test_resize_detach_and_delete_reach_the_backend_and_only_changes_are_reported() -> None:
    replica = with_pool()
    env = FakeEnv(replica)
    volumes, exports = FakeVolumes(), FakeExports()
    storage = agent(volumes, exports)
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 2})
    asyncio.run(storage.step(env))
    before = len(env.proposed)
    asyncio.run(storage.step(env))
    assert len(env.proposed) == before  # nothing changed: nothing proposed
    replica.ok("volume.resize", {"id": "vo1", "size_gb": 3})
    asyncio.run(storage.step(env))
    assert volumes.sizes["vo1"] == 3 * GIB and replica.state.volumes["vo1"]["state"] == "available"
    replica.ok("volume.delete", {"id": "vo1"})
    asyncio.run(storage.step(env))
    assert volumes.sizes == {} and "vo1" not in replica.state.volumes


def test_a_backend_failure_puts_a_new_volume_in_error_with_the_reason() -> None:
    replica = with_pool()
    env = FakeEnv(replica)
    storage = agent(FakeVolumes(total_bytes=GIB), FakeExports())
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 2})
    asyncio.run(storage.step(env))
    volume = replica.state.volumes["vo1"]
    assert volume["state"] == "error" and "full" in volume["error"]


def test_pool_capacity_is_reported() -> None:
    replica = with_pool()
    env = FakeEnv(replica)
    asyncio.run(agent(FakeVolumes(total_bytes=50 * GIB), FakeExports()).step(env))
    assert replica.state.storage_pools["fast"]["capacity"]["total_bytes"] == 50 * GIB


def test_export_counters_keep_what_ended_sessions_counted() -> None:
    counters = ExportCounters()
    assert counters.update(ExportStats(per_session={"1": (10, 1, 20, 2)})) == {"read_bytes": 10, "read_ops": 1, "write_bytes": 20, "write_ops": 2}
    assert counters.update(ExportStats(per_session={"2": (5, 1, 0, 0)})) == {"read_bytes": 15, "read_ops": 2, "write_bytes": 20, "write_ops": 2}
    assert counters.update(ExportStats()) == {"read_bytes": 15, "read_ops": 2, "write_bytes": 20, "write_ops": 2}


def test_chap_credentials_are_stable_per_volume_and_differ_between_volumes() -> None:
    assert chap_credentials(SECRET, "vo1") == chap_credentials(SECRET, "vo1")
    assert chap_credentials(SECRET, "vo1")[1] != chap_credentials(SECRET, "vo2")[1]
    assert chap_credentials("other", "vo1")[1] != chap_credentials(SECRET, "vo1")[1]
    assert len(chap_credentials(SECRET, "vo1")[1]) >= 12


def test_the_vm_agent_gives_a_vm_its_volume_once_exported_to_its_node_with_the_chap_secret() -> None:
    from cloudd.ops.domain_xml import disk_xml
    from cloudd.ops.fake_compute import FakeCompute
    from cloudd.reconcile import ReconcileSettings, VmReconciler

    replica = with_pool()
    replica.state.nodes["n1"]["storage"] = {"export": "tgt", "portal": "10.0.0.5:3260"}
    env = FakeEnv(replica)
    volumes, exports = FakeVolumes(), FakeExports()
    storage = agent(volumes, exports)
    compute = FakeCompute()
    vms = VmReconciler(compute, ReconcileSettings(domain_type="test"), cluster_secret=SECRET)
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 1})
    asyncio.run(storage.step(env))
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    asyncio.run(vms.step(env))  # not exported here yet: the VM waits (storage fencing comes first)
    assert "vm1" not in compute.defined
    asyncio.run(storage.step(env))
    asyncio.run(vms.step(env))
    disk = next(d for d in compute.defined["vm1"].disks if d.iscsi)
    assert disk.target == "vdc" and disk.serial == "vo1" and disk.path == "iscsi://10.0.0.5:3260/iqn.2026-11.io.cloudd:volume:vo1/1"
    assert disk.iscsi is not None and disk.iscsi.initiator == node_initiator("n1") and disk.iscsi.chap_user == chap_credentials(SECRET, "vo1")[0]
    assert compute.secrets[volume_target("vo1")] == chap_credentials(SECRET, "vo1")[1]
    assert "vdc" in compute.live["vm1"]  # in the guest from its first start
    xml = disk_xml(disk)
    assert "protocol=\"iscsi\"" in xml and "<secret type=\"iscsi\" usage=\"iqn.2026-11.io.cloudd:volume:vo1\"" in xml
    assert "<iqn name=\"iqn.2026-11.io.cloudd:node:n1\"" in xml and "<host name=\"10.0.0.5\" port=\"3260\"" in xml
    assert chap_credentials(SECRET, "vo1")[1] not in xml  # the password only in the secret store


def test_a_node_whose_libvirt_holds_no_secrets_reports_why_it_cannot_attach_a_volume() -> None:
    from cloudd.ops.fake_compute import FakeCompute
    from cloudd.reconcile import ReconcileSettings, VmReconciler

    replica = with_pool()
    replica.state.nodes["n1"]["storage"] = {"export": "tgt", "portal": "10.0.0.5:3260"}
    env = FakeEnv(replica)
    storage = agent(FakeVolumes(), FakeExports())
    compute = FakeCompute()
    compute.secrets_supported = False  # type: ignore[misc]
    vms = VmReconciler(compute, ReconcileSettings(domain_type="test"), cluster_secret=SECRET)
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 1})
    asyncio.run(storage.step(env))
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    for _ in range(3):
        asyncio.run(storage.step(env))
        asyncio.run(vms.step(env))
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "running" and "cannot hand CHAP passwords" in vm["observed"]["device_error"]
    assert not any(d.iscsi for d in compute.defined["vm1"].disks)
