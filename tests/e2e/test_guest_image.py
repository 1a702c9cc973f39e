"""The test guest's bootable disk image (disk.qcow2 from scripts/build-guest.sh) under qemu
TCG through embedded libvirt: boot from disk under SeaBIOS, the NoCloud seed (cidata ISO on
a SCSI CD-ROM), and block device hot-plug reported by the guest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import libvirt
import pytest

from cloudd.ops.compute import DiskSpec, DomainSpec
from cloudd.ops.libvirt_compute import LibvirtCompute
from tests.e2e.guest_helpers import serial, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MARKER = "CLOUDD-GUEST-BOOTED"


def make_iso(directory: Path, label: str, files: dict[str, str]) -> Path:
    if shutil.which("genisoimage") is None:
        pytest.skip("genisoimage is not installed (scripts/install.sh installs it)")
    src = directory / f"{label}-files"
    src.mkdir()
    for name, text in files.items():
        (src / name).write_text(text)
    iso = directory / f"{label}.iso"
    subprocess.run(["genisoimage", "-quiet", "-V", label, "-J", "-r", "-o", str(iso), str(src)], check=True)
    return iso


def boot_from_disk(drv: LibvirtCompute, root: Path, guest: Path, vm_id: str, *extra: DiskSpec) -> Path:
    """A domain booting a copy-on-write overlay of disk.qcow2 (no kernel given: SeaBIOS
    boots the disk); returns its serial log once the guest printed its boot marker."""
    overlay = root / f"{vm_id}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest / "disk.qcow2"), "-F", "qcow2", str(overlay)], check=True)
    log = root / f"{vm_id}.serial.log"
    drv.define(DomainSpec(vm_id, vm_id, 1, 128, (DiskSpec(str(overlay), format="qcow2", target="vda"), *extra), domain_type="qemu", serial_log=str(log)))
    drv.start(vm_id)
    wait_for(lambda: MARKER in serial(log), 120, f"{vm_id}'s boot marker")
    return log


def device_xml(path: Path, fmt: str, target: str, bus: str, device: str = "disk") -> str:
    readonly = "<readonly/>" if device == "cdrom" else ""
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='{fmt}'/><source file='{path}'/>"
            f"<target dev='{target}' bus='{bus}'/>{readonly}</disk>")


def live(drv: LibvirtCompute, vm_id: str, action: str, xml: str) -> None:
    """Attach or detach a device of the running domain through the driver's own connection
    (an embedded libvirt root allows one connection-owning process)."""

    def go(conn: libvirt.virConnect) -> None:
        dom = conn.lookupByName(f"cloudd-{vm_id}")
        getattr(dom, f"{action}DeviceFlags")(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    drv._run(f"{action} on {vm_id}", go)


def test_disk_image_boots_under_seabios_and_powers_off(embedded: tuple[LibvirtCompute, Path], guest: Path) -> None:
    drv, root = embedded
    log = boot_from_disk(drv, root, guest, "img1")
    text = serial(log)
    assert "disks: vda" in text
    assert "CLOUDD-GUEST-SEED none" in text
    assert "console=tty0 console=ttyS0" in text  # the command line comes from the disk's syslinux.cfg
    assert drv.domains()["img1"].vnc_port in range(6900, 6980)
    drv.shutdown("img1")  # ACPI power button -> acpid -> poweroff
    wait_for(lambda: drv.domains()["img1"].power == "shut_off", 30, "clean power-off")
    assert "CLOUDD-GUEST-POWEROFF" in serial(log)
    drv.undefine("img1")


def test_nocloud_seed_on_a_scsi_cdrom_sets_the_hostname(embedded: tuple[LibvirtCompute, Path], guest: Path) -> None:
    drv, root = embedded
    iso = make_iso(root, "cidata", {"meta-data": "instance-id: i-seeded1\nlocal-hostname: seeded1\n", "user-data": "#cloud-config\n"})
    log = boot_from_disk(drv, root, guest, "img2", DiskSpec(str(iso), format="raw", target="sda", bus="scsi", device="cdrom"))
    text = serial(log)
    assert "CLOUDD-GUEST-SEED hostname=seeded1" in text
    assert "CLOUDD-GUEST-SEED user-data-bytes=14" in text
    assert "CLOUDD-GUEST-SEED none" not in text
    assert "disks: vda sr0" in text
    drv.undefine("img2")


def test_hot_plugged_disk_and_cdrom_are_reported_by_the_guest(embedded: tuple[LibvirtCompute, Path], guest: Path) -> None:
    drv, root = embedded
    log = boot_from_disk(drv, root, guest, "img3")
    assert "CLOUDD-GUEST-HOTPLUG" not in serial(log)
    blank = root / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    iso = make_iso(root, "media", {"readme.txt": "not a seed\n"})
    disk = device_xml(blank, "qcow2", "vdb", "virtio")
    cdrom = device_xml(iso, "raw", "sdb", "scsi", device="cdrom")

    live(drv, "img3", "attach", disk)
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG add vdb" in serial(log), 60, "the guest to see vdb")
    live(drv, "img3", "attach", cdrom)
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG add sr0" in serial(log), 60, "the guest to see the CD-ROM")

    live(drv, "img3", "detach", disk)  # ACPI eject: the guest's acpiphp releases the slot
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG remove vdb" in serial(log), 60, "the guest to lose vdb")
    live(drv, "img3", "detach", cdrom)
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG remove sr0" in serial(log), 60, "the guest to lose the CD-ROM")

    def devices(conn: libvirt.virConnect) -> str:
        return conn.lookupByName("cloudd-img3").XMLDesc(0)

    wait_for(lambda: "blank.qcow2" not in drv._run("xml", devices), 30, "libvirt to drop vdb")
    wait_for(lambda: "media.iso" not in drv._run("xml", devices), 30, "libvirt to drop the CD-ROM")
    drv.undefine("img3")
