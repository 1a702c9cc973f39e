"""FakeCompute's live migration: fakes that share a ``peers`` dict move domains between them."""

from __future__ import annotations

import dataclasses

import pytest

from cloudd.ops.compute import ComputeError, DiskSpec, DomainSpec, LiveOptions, MigrationTarget, NicSpec
from cloudd.ops.fake_compute import FakeCompute

SOURCE = DomainSpec("vm1", "web", 1, 256, (DiskSpec("/a/vm1/root.qcow2"),), interfaces=(NicSpec("52:54:00:00:00:01", "br-a", "tap-a"),))
TARGET = dataclasses.replace(SOURCE, disks=(DiskSpec("/b/vm1/root.qcow2"),), interfaces=(NicSpec("52:54:00:00:00:01", "br-b", "tap-b"),))
TO_B = MigrationTarget("hv2", "fake://hv2")


@pytest.fixture
def pair() -> tuple[FakeCompute, FakeCompute]:
    peers: dict[str, FakeCompute] = {}
    a, b = FakeCompute(peers=peers), FakeCompute(peers=peers)
    peers.update({"fake://hv1": a, "fake://hv2": b})
    a.define(SOURCE)
    a.start("vm1")
    return a, b


def test_a_running_domain_moves_to_its_peer(pair: tuple[FakeCompute, FakeCompute]) -> None:
    a, b = pair
    seen: list[tuple[str, str | None]] = []
    a.watch(lambda vm: seen.append(("a", vm)))
    b.watch(lambda vm: seen.append(("b", vm)))
    a.usage("vm1")
    assert a.live_migration and b.live_migration
    result = a.migrate_live("vm1", TO_B, TARGET, LiveOptions())
    assert result.downtime_ms is not None and result.data_bytes == 256 * 2**20
    assert "vm1" not in a.domains() and "vm1" not in a.defined
    info = b.domains()["vm1"]
    assert info.power == "running" and info.digest == TARGET.digest
    assert info.live_disks == {"vda": "/b/vm1/root.qcow2"} and info.live_nics == {"52:54:00:00:00:01": "tap-b"}
    assert b.usage("vm1")["cpu_time_s"] == 2.0  # the same guest: its CPU time goes on
    assert seen == [("a", "vm1"), ("b", "vm1")]
    assert b.migration_progress("vm1") is None
    b.migrate_live("vm1", MigrationTarget("hv1", "fake://hv1"), SOURCE, LiveOptions())  # and back
    assert a.domains()["vm1"].live_nics == {"52:54:00:00:00:01": "tap-a"} and "vm1" not in b.domains()


def test_a_failed_migration_leaves_the_domain_running_here(pair: tuple[FakeCompute, FakeCompute]) -> None:
    a, b = pair
    a.fail_next("migrate_live", "operation aborted: migration out: canceled by client")
    with pytest.raises(ComputeError, match="canceled by client"):
        a.migrate_live("vm1", TO_B, TARGET, LiveOptions())
    assert a.domains()["vm1"].power == "running" and b.domains() == {}
    with pytest.raises(ComputeError, match="cannot reach fake://nowhere"):
        a.migrate_live("vm1", MigrationTarget("hv3", "fake://nowhere"), TARGET, LiveOptions())
    with pytest.raises(ComputeError, match="no vdb"):
        a.migrate_live("vm1", TO_B, dataclasses.replace(TARGET, disks=(*TARGET.disks, DiskSpec("/b/x", target="vdb"))), LiveOptions())
    assert a.domains()["vm1"].power == "running" and b.domains() == {}
    a.abort_migration("vm1")  # no job: nothing happens
    assert ("abort_migration", "vm1") in a.calls


def test_only_a_running_domain_migrates(pair: tuple[FakeCompute, FakeCompute]) -> None:
    a, _ = pair
    a.destroy("vm1")
    with pytest.raises(ComputeError, match="not running"):
        a.migrate_live("vm1", TO_B, TARGET, LiveOptions())
    with pytest.raises(ComputeError, match="not defined"):
        a.migrate_live("vm9", TO_B, TARGET, LiveOptions())


def test_cpu_models_are_settable() -> None:
    fake = FakeCompute()
    assert fake.cpu_models() == []
    fake.host_cpu_models = ["qemu64", "Westmere"]
    assert fake.cpu_models() == ["qemu64", "Westmere"]
    assert FakeCompute(cpu_models=["Haswell"]).cpu_models() == ["Haswell"]
