"""Live migration for real: two private libvirtds on this machine (tests/e2e/libvirtd.py,
each with its own host UUID, VNC and migration port ranges) and the tiny TCG guest.

The guest runs on daemon A through ``LibvirtCompute(A.uri)`` and moves to B with
``migrate_live``: peer to peer (A's libvirtd opens B's unix socket itself), memory over
``tcp://127.0.0.1`` into B's migration port range. Its node-local parts change on the way
(bridge and tap, disk file, serial log, VNC password): the disk is copied along (NBD)
into a file "node B" made beforehand, as a target node prepares it. The guest keeps a
random token in RAM only and prints it with its uptime every second, so the same token
and a still-growing uptime on B's serial log prove it kept its memory and never rebooted.

A guest whose disk is an iSCSI volume (a private tgtd; shared storage, nothing copied)
moves too: the target logs in with its own initiator name and its own copy of the CHAP
secret, which it must hold before the migration starts.

Also: ``abort_migration`` from another thread during a migration made slow (1 MiB/s),
progress read meanwhile, and a target that cannot be reached; both leave the guest
running on A. The two daemons use VNC ports 7300-7399 and migration ports 49300-49399,
which no other test uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudd.ops.compute import ComputeError, DiskSpec, DomainSpec, IscsiSource, LiveOptions, MigrationProgress, MigrationResult, MigrationTarget, NicSpec
from cloudd.ops.domain_xml import digest_of
from cloudd.ops.libvirt_compute import LibvirtCompute
from cloudd.ops.storage import ExportSpec, node_initiator, volume_target
from cloudd.ops.tgt import TgtExports, parse_connections
from tests.e2e.guest_helpers import serial, wait_for
from tests.e2e.libvirtd import PrivateLibvirtd, libvirtd_missing

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NODES = {  # node -> (VNC ports, migration ports, bridge)
    "a": ((7300, 7349), (49300, 49349), "cldmig-bra"),
    "b": ((7350, 7399), (49350, 49399), "cldmig-brb"),
}
HEARTBEAT = re.compile(r"CLOUDD-GUEST-HEARTBEAT uptime=(\d+(?:\.\d+)?) token=([0-9a-f]{16})")
BOOTED = "CLOUDD-GUEST-BOOTED"
DISK_MIB = 64
PATTERN = "0xa5"  # written into the disk on A, read back from B's copy


def heartbeats(path: Path) -> list[tuple[float, str]]:
    """(uptime, token) of every complete heartbeat in a serial log."""
    return [(float(up), token) for up, token in HEARTBEAT.findall(serial(path))]


def mac(vm_id: str) -> str:
    return "52:54:00:7e:{:02x}:{:02x}".format(*hashlib.sha256(vm_id.encode()).digest()[:2])


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Pair:
    """Two libvirtds ("nodes" a and b) and a directory both see (/tmp is shared)."""

    daemons: dict[str, PrivateLibvirtd]
    drivers: dict[str, LibvirtCompute]
    work: Path
    guest: Path

    def target(self, node: str, uri: str | None = None) -> MigrationTarget:
        return MigrationTarget(node, uri or self.daemons[node].uri, "tcp://127.0.0.1")

    def spec(self, vm_id: str, node: str, disk: bool = False) -> DomainSpec:
        """The VM as ``node`` defines it: its own bridge, tap, disk file, log, VNC password."""
        disks = (DiskSpec(str(self.disk(vm_id, node)), format="qcow2", target="vda"),) if disk else ()
        return DomainSpec(
            vm_id, vm_id, 1, 128, disks, domain_type="qemu", vnc_password=f"pw-{node}",
            serial_log=str(self.log(vm_id, node)), interfaces=(NicSpec(mac(vm_id), NODES[node][2], f"cmig{node}-{vm_id}"),),
            kernel=str(self.guest / "vmlinuz"), initrd=str(self.guest / "initrd.img"), cmdline="console=ttyS0",
        )

    def disk(self, vm_id: str, node: str) -> Path:
        return self.work / node / f"{vm_id}.qcow2"

    def log(self, vm_id: str, node: str) -> Path:
        return self.work / node / f"{vm_id}.serial.log"

    def boot(self, spec: DomainSpec, node: str) -> tuple[float, str]:
        """Define and start on ``node``; its first heartbeat (uptime, token)."""
        drv = self.drivers[node]
        drv.define(spec)
        drv.start(spec.vm_id)
        first = wait_for(lambda: next(iter(heartbeats(self.log(spec.vm_id, node))), None), 120, f"{spec.vm_id}'s first heartbeat")
        assert first is not None
        return first

    def xml(self, node: str, vm_id: str) -> str:
        return self.daemons[node].virsh("dumpxml", "--security-info", f"cloudd-{vm_id}").stdout


@pytest.fixture(scope="module")
def pair(guest: Path) -> Iterator[Pair]:
    reason = libvirtd_missing()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="cloudd-migrate-", dir="/tmp"))
    daemons: dict[str, PrivateLibvirtd] = {}
    bridges: list[str] = []
    try:
        for node, (vnc, migration, bridge) in NODES.items():
            (work / node).mkdir()
            subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True, timeout=30)  # a leftover of a killed run
            ip("link", "add", bridge, "type", "bridge")
            bridges.append(bridge)
            ip("link", "set", bridge, "up")
            daemons[node] = PrivateLibvirtd(vnc, log_dir=work / node, migration_ports=migration).start()
        drivers = {node: LibvirtCompute(daemon.uri, vnc_range=daemon.vnc_ports) for node, daemon in daemons.items()}
        yield Pair(daemons, drivers, work, guest)
    finally:
        for daemon in daemons.values():
            daemon.stop()
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def resident(pair: Pair) -> Iterator[tuple[DomainSpec, str]]:
    """A guest on A that every migration attempt of these tests leaves there: (spec, token)."""
    spec = pair.spec("stay", "a")
    _, token = pair.boot(spec, "a")
    try:
        yield spec, token
    finally:
        for drv in pair.drivers.values():
            drv.undefine("stay")


def still_runs_on_a(pair: Pair, spec: DomainSpec, token: str) -> None:
    """Running on A with the same memory (token), heartbeats still coming; B has nothing."""
    assert pair.drivers["a"].domains()[spec.vm_id].power == "running"
    assert pair.drivers["b"].domains() == {}
    count = len(heartbeats(pair.log(spec.vm_id, "a")))
    wait_for(lambda: len(heartbeats(pair.log(spec.vm_id, "a"))) >= count + 2, 30, "heartbeats on A")
    assert {t for _, t in heartbeats(pair.log(spec.vm_id, "a"))} == {token}
    assert serial(pair.log(spec.vm_id, "a")).count(BOOTED) == 1


def test_a_running_guest_moves_live_to_the_other_node_and_back(pair: Pair) -> None:
    a, b = pair.drivers["a"], pair.drivers["b"]
    assert a.live_migration and not LibvirtCompute("test:///default").live_migration
    on_a, on_b = pair.spec("mover", "a", disk=True), pair.spec("mover", "b", disk=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pair.disk("mover", "a")), f"{DISK_MIB}M"], check=True, timeout=30)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 1M 1M", str(pair.disk("mover", "a"))], check=True, capture_output=True, timeout=30)
    pair.boot(on_a, "a")
    try:
        assert a.migration_progress("mover") is None  # no job yet
        a.abort_migration("mover")  # no-op without a job
        # a local disk that is neither on shared storage nor copied along: libvirt refuses
        with pytest.raises(ComputeError, match="Migration without shared storage is unsafe"):
            a.migrate_live("mover", pair.target("b"), on_b, LiveOptions())
        assert a.domains()["mover"].power == "running"
        # what the target node prepares: the file the local disk is copied into (same size)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pair.disk("mover", "b")), f"{DISK_MIB}M"], check=True, timeout=30)
        wait_for(lambda: len(heartbeats(pair.log("mover", "a"))) >= 3, 30, "a few heartbeats on A")
        before_up, token = heartbeats(pair.log("mover", "a"))[-1]

        result = a.migrate_live("mover", pair.target("b"), on_b, LiveOptions(max_downtime_ms=300, copy_disks=("vda",)))
        print(f"\nA -> B: {result.elapsed_s:.2f} s, downtime {result.downtime_ms} ms, {result.data_bytes / 2**20:.1f} MiB sent")
        assert result.downtime_ms is not None and 0 < result.downtime_ms < 5000
        assert result.data_bytes > 0

        # gone from A, not even defined; running and persistent on B with B's own parts
        assert "mover" not in a.domains() and "cloudd-mover" not in pair.daemons["a"].domains()
        info = b.domains()["mover"]
        assert info.power == "running" and info.digest == on_b.digest
        assert info.live_nics == {mac("mover"): "cmigb-mover"}
        assert info.live_disks == {"vda": str(pair.disk("mover", "b"))}
        assert "Persistent:     yes" in pair.daemons["b"].virsh("dominfo", "cloudd-mover").stdout
        xml = pair.xml("b", "mover")
        assert f"<source bridge='{NODES['b'][2]}'/>" in xml and f"file='{pair.log('mover', 'b')}'" in xml and "passwd='pw-b'" in xml
        assert digest_of(pair.daemons["b"].virsh("dumpxml", "--inactive", "cloudd-mover").stdout) == on_b.digest
        assert info.vnc_port in range(*NODES["b"][0])
        # the copied disk holds what was written on A
        subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {PATTERN} 1M 1M", str(pair.disk("mover", "b"))], check=True, capture_output=True, timeout=30)

        # the same guest goes on: same token, uptime continues, no boot on B
        wait_for(lambda: len(heartbeats(pair.log("mover", "b"))) >= 3, 30, "heartbeats on B")
        after = heartbeats(pair.log("mover", "b"))
        assert {t for _, t in after} == {token}, (token, after)
        assert after[0][0] > before_up, f"uptime went from {before_up} (A) to {after[0][0]} (B): a reboot?"
        assert [up for up, _ in after] == sorted(up for up, _ in after)
        assert BOOTED not in serial(pair.log("mover", "b"))
        print(f"guest uptime {before_up:.2f} s on A before, {after[0][0]:.2f} s at its first heartbeat on B, token {token}")

        # and back to A (A's disk file is still there to copy into)
        back = b.migrate_live("mover", pair.target("a"), on_a, LiveOptions(copy_disks=("vda",)))
        print(f"B -> A: {back.elapsed_s:.2f} s, downtime {back.downtime_ms} ms")
        assert b.domains() == {} and a.domains()["mover"].digest == on_a.digest
        wait_for(lambda: len(heartbeats(pair.log("mover", "a"))) >= 2, 30, "heartbeats on A again")  # the log starts afresh
        again = heartbeats(pair.log("mover", "a"))
        assert {t for _, t in again} == {token} and again[0][0] > after[-1][0]
        assert BOOTED not in serial(pair.log("mover", "a"))
    finally:
        a.undefine("mover")
        b.undefine("mover")


def test_an_aborted_slow_migration_leaves_the_guest_running_on_a(pair: Pair, resident: tuple[DomainSpec, str]) -> None:
    spec, token = resident
    a = pair.drivers["a"]
    outcome: list[MigrationResult | BaseException] = []

    def migrate() -> None:
        try:
            outcome.append(a.migrate_live(spec.vm_id, pair.target("b"), pair.spec(spec.vm_id, "b"), LiveOptions(bandwidth_mib_s=1)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=migrate, name="migrate", daemon=True)
    worker.start()
    try:
        seen: list[MigrationProgress] = []

        def progressed() -> bool:
            progress = a.migration_progress(spec.vm_id)
            if progress is not None:
                seen.append(progress)
            assert worker.is_alive(), f"the migration ended early: {outcome}"
            moving = [p for p in seen if p.data_processed > 0]  # the first reads may come before any page
            return len(moving) >= 2 and moving[-1].data_processed > moving[0].data_processed

        wait_for(progressed, 60, "the migration's progress")
        last = seen[-1]
        print(f"\nprogress: {last.percent}% after {last.elapsed_s:.1f} s, {last.data_processed} of {last.data_total} bytes, pass {last.iteration}")
        assert last.data_total >= 128 * 2**20 and 0 < last.data_remaining < last.data_total and last.elapsed_s > 0
        # the driver's shared connection is free meanwhile: other calls answer at once
        asked = time.monotonic()
        assert a.domains()[spec.vm_id].power in ("running", "paused")
        listing = time.monotonic() - asked
        assert listing < 1.0, f"domains() took {listing:.2f} s during the migration"
        assert worker.is_alive()

        asked = time.monotonic()
        a.abort_migration(spec.vm_id)
        worker.join(30)
        print(f"abort: migrate_live raised {time.monotonic() - asked:.2f} s after abort_migration; domains() took {listing * 1000:.0f} ms meanwhile")
    finally:
        if worker.is_alive():
            a.abort_migration(spec.vm_id)
            worker.join(60)
    assert not worker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ComputeError), outcome
    assert "abort" in str(outcome[0]) or "cancel" in str(outcome[0]), outcome[0]
    print(f"the error: {outcome[0]}")
    assert a.migration_progress(spec.vm_id) is None
    still_runs_on_a(pair, spec, token)


def test_a_migration_that_cannot_work_fails_fast_and_the_guest_stays(pair: Pair, resident: tuple[DomainSpec, str]) -> None:
    spec, token = resident
    a = pair.drivers["a"]
    nowhere = f"qemu+unix:///system?socket={pair.work}/no-such-libvirt-sock"
    asked = time.monotonic()
    with pytest.raises(ComputeError, match="Failed to connect socket") as failed:
        a.migrate_live(spec.vm_id, pair.target("b", uri=nowhere), pair.spec(spec.vm_id, "b"), LiveOptions())
    took = time.monotonic() - asked
    print(f"\nunreachable target: {took:.3f} s: {failed.value}")
    assert took < 10
    # a target spec with a disk the guest does not have: refused before libvirt is asked
    with_disk = pair.spec(spec.vm_id, "b", disk=True)
    with pytest.raises(ComputeError, match="no disk vda"):
        a.migrate_live(spec.vm_id, pair.target("b"), with_disk, LiveOptions())
    # a VM that does not run here
    with pytest.raises(ComputeError, match="not running|not defined"):
        a.migrate_live("no-such-vm", pair.target("b"), dataclasses.replace(spec, vm_id="no-such-vm"), LiveOptions())
    still_runs_on_a(pair, spec, token)


def test_a_guest_on_an_iscsi_volume_moves_and_the_target_logs_in_with_its_own_initiator(pair: Pair, tgt: TgtExports, tmp_path: Path) -> None:
    volume, target_iqn, password = tmp_path / "vol.raw", volume_target("migvol1"), "chap-secret-1234"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(volume), f"{DISK_MIB}M"], check=True, timeout=30)
    subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {PATTERN} 1M 1M", str(volume)], check=True, capture_output=True, timeout=30)
    # what both nodes need beforehand: the export admits both initiators, each libvirtd holds the secret
    tgt.ensure(ExportSpec(target_iqn, str(volume), (node_initiator("mig-a"), node_initiator("mig-b")), "migchap", password))
    host, port = tgt.portal.rsplit(":", 1)

    def spec(node: str) -> DomainSpec:
        iscsi = IscsiSource(host, int(port), target_iqn, node_initiator(f"mig-{node}"), "migchap")
        return dataclasses.replace(pair.spec("vol", node), disks=(DiskSpec(iscsi.url, format="raw", target="vda", iscsi=iscsi),))

    def sessions() -> list[str]:
        tid = next(line.split()[1].rstrip(":") for line in tgt._adm("--op", "show", "--mode", "target").splitlines() if line.endswith(target_iqn))
        return [initiator for _, _, initiator in parse_connections(tgt._adm("--op", "show", "--mode", "conn", "--tid", tid))]

    for drv in pair.drivers.values():
        drv.ensure_secret(target_iqn, password)
    _, token = pair.boot(spec("a"), "a")
    try:
        assert sessions() == [node_initiator("mig-a")]
        result = pair.drivers["a"].migrate_live("vol", pair.target("b"), spec("b"), LiveOptions())  # shared: nothing to copy
        print(f"\niSCSI guest A -> B: {result.elapsed_s:.2f} s, downtime {result.downtime_ms} ms")
        assert "vol" not in pair.drivers["a"].domains() and pair.drivers["b"].domains()["vol"].power == "running"
        assert f"<iqn name='{node_initiator('mig-b')}'/>" in pair.xml("b", "vol")
        wait_for(lambda: sessions() == [node_initiator("mig-b")], 30, "B's session alone")
        wait_for(lambda: len(heartbeats(pair.log("vol", "b"))) >= 2, 30, "heartbeats on B")
        assert {t for _, t in heartbeats(pair.log("vol", "b"))} == {token}
    finally:
        for drv in pair.drivers.values():
            drv.undefine("vol")
