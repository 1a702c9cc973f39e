"""A real TCG guest with a data disk on an iSCSI export (private tgtd on loopback): the
storage agent exports the volume to this node, the VM agent defines the domain with a
network disk and qemu's own initiator logs in with CHAP (the password as a libvirt
secret). Then the volume is hot-plugged out and in again.

Through a private libvirtd (tests/e2e/libvirtd.py), the production path: libvirt 9.0's
embedded driver cannot hand a CHAP secret to qemu, so nodes with an embedded libvirt
(the quick start) report a clear device error instead of attaching a volume."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import pytest

from cloudd.ops.file_volumes import FileVolumes
from cloudd.ops.compute import ComputeError
from cloudd.ops.libvirt_compute import LibvirtCompute
from cloudd.ops.local_disk import LocalDisks
from cloudd.ops.tgt import TgtExports
from cloudd.reconcile import ImagesByPath, ReconcileSettings, VmReconciler
from cloudd.storage_agent import StorageReconciler
from tests.e2e.guest_helpers import serial, wait_for
from tests.e2e.libvirtd import PrivateLibvirtd, libvirtd_missing
from tests.fake_env import FakeEnv
from tests.unit.test_volumes import GIB, with_pool

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
SECRET = "e2e-cluster-secret"
VNC = (7100, 7149)


@pytest.fixture
def libvirtd(tmp_path: Path) -> Iterator[PrivateLibvirtd]:
    reason = libvirtd_missing()
    if reason:
        pytest.skip(reason)
    daemon = PrivateLibvirtd(VNC, log_dir=tmp_path)
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def test_a_guest_boots_with_a_volume_over_iscsi_and_the_volume_hot_plugs(libvirtd: PrivateLibvirtd, guest: Path, tgt: TgtExports, tmp_path: Path) -> None:
    """Through libvirtd (the production path): its secret driver holds the password."""
    guest_with_a_volume(LibvirtCompute(libvirtd.uri, vnc_range=VNC), guest, tgt, tmp_path)


def test_an_embedded_libvirt_says_clearly_that_it_cannot_attach_volumes(embedded: tuple[LibvirtCompute, Path]) -> None:
    """libvirt 9.0's embedded qemu driver cannot fetch a CHAP secret (it asks virtsecretd;
    with an embedded secret driver open it fails: "No current identity to elevate")."""
    with pytest.raises(ComputeError, match="embedded libvirt cannot hand CHAP passwords"):
        embedded[0].ensure_secret("iqn.2026-11.io.cloudd:volume:x", "password-1234")


def guest_with_a_volume(drv: LibvirtCompute, guest: Path, tgt: TgtExports, tmp_path: Path) -> None:
    replica = with_pool()
    replica.state.nodes["n1"]["storage"] = {"export": "tgt", "portal": tgt.portal}
    replica.ok("image.register", {"id": "kern", "name": "tiny-kernel", "owner": "admin", "public": True, "format": "kernel", "path": str(guest), "size_gb": 0})
    env = FakeEnv(replica)
    volumes = FileVolumes(tmp_path / "volumes")
    storage = StorageReconciler("n1", lambda pool: volumes, tgt, SECRET)
    vms = VmReconciler(
        drv, ReconcileSettings(domain_type="qemu", vm_dir=str(tmp_path / "vms"), unplug_retry_s=5.0),
        disks=LocalDisks(), image_source=ImagesByPath(), cluster_secret=SECRET, node="n1",
    )

    def settle(passes: int = 1) -> None:
        for _ in range(passes):
            asyncio.run(storage.step(env))
            asyncio.run(vms.step(env))

    replica.ok("volume.create", {"id": "vol1", "name": "data", "owner": "bob", "size_gb": 0.0625})
    settle()
    assert replica.state.volumes["vol1"]["state"] == "available"
    replica.ok("vm.create", {"id": "iv1", "name": "iscsi-guest", "owner": "bob", "vcpus": 1, "ram_mb": 128, "disk_gb": 1, "image": "kern", "power": "stopped"})
    replica.ok("vm.place", {"id": "iv1", "node": "n1"})
    replica.ok("volume.attach", {"id": "vol1", "vm": "iv1"})
    try:
        settle(2)  # the export first, then the domain with its network disk
        xml = drv._run("reading", lambda conn: conn.lookupByName("cloudd-iv1").XMLDesc(0))
        assert "protocol='iscsi'" in xml and "iqn.2026-11.io.cloudd:volume:vol1/1" in xml and "<secret type='iscsi'" in xml
        replica.ok("vm.start", {"id": "iv1"})
        settle()
        assert replica.state.vms["iv1"]["error"] is None, replica.state.vms["iv1"]["error"]
        log = Path(vms.layout.serial_log("iv1"))
        booted = wait_for(lambda: next((line for line in serial(log).splitlines() if "CLOUDD-GUEST-BOOTED" in line), None), 90, "the boot marker")
        # two virtio disks: the OS disk and the volume, read by qemu over iSCSI (the guest
        # names disks in probe order: the volume is its vdb, libvirt's target vdc)
        assert booted.split("disks:")[1].split()[:2] == ["vda", "vdb"], booted
        assert tgt.exports()["iqn.2026-11.io.cloudd:volume:vol1"].sessions == 1
        wait_for(lambda: (settle(), replica.state.vms["iv1"]["state"] == "running")[1], 30, "running")

        # detach from the running guest: unplugged, then the export is withdrawn
        replica.ok("volume.detach", {"id": "vol1"})
        wait_for(lambda: (settle(), replica.state.volumes["vol1"]["state"] == "available")[1], 60, "the guest lets go")
        assert "CLOUDD-GUEST-HOTPLUG remove vdb" in serial(log)
        settle()
        assert "iqn.2026-11.io.cloudd:volume:vol1" not in tgt.exports()

        # attach again while it runs: exported, then hot-plugged
        replica.ok("volume.attach", {"id": "vol1", "vm": "iv1"})
        wait_for(lambda: (settle(), "vdc" in (replica.state.vms["iv1"]["observed"].get("disks") or []))[1], 60, "hot-plug")
        wait_for(lambda: "CLOUDD-GUEST-HOTPLUG add vd" in serial(log).split("CLOUDD-GUEST-HOTPLUG remove vdb")[-1], 30, "the guest sees the disk")
        task = [t for t in replica.state.tasks.values() if t["op"] == "vm.volume.attach"][-1]
        assert task["state"] == "succeeded"
    finally:
        drv.undefine("iv1")
    assert volumes.info("vol1").size_bytes == GIB // 16  # type: ignore[union-attr]
