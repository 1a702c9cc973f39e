"""The compute contract, held by the fake and by libvirt (its test:///default driver)."""

from __future__ import annotations

import itertools
import time
import xml.etree.ElementTree as ET
from typing import Iterator

import pytest

from cloudd.ops.compute import ComputeDriver, ComputeError, DiskSpec, DomainSpec
from cloudd.ops.domain_xml import disk_xml, domain_xml
from cloudd.ops.fake_compute import FakeCompute
from cloudd.ops.libvirt_compute import LibvirtCompute

_ids = itertools.count()


@pytest.fixture(params=["fake", "libvirt-test"])
def driver(request: pytest.FixtureRequest) -> Iterator[tuple[ComputeDriver, str]]:
    if request.param == "fake":
        yield FakeCompute(), "qemu"
    else:
        drv = LibvirtCompute("test:///default")
        yield drv, "test"
        for vm_id in list(drv.domains()):
            drv.undefine(vm_id)


def spec(domain_type: str, vm_id: str | None = None) -> DomainSpec:
    vm_id = vm_id or f"t{next(_ids)}"
    return DomainSpec(vm_id, "web-1", 1, 128, (DiskSpec(f"/srv/{vm_id}.qcow2"),), domain_type=domain_type)


def test_lifecycle_and_idempotency(driver: tuple[ComputeDriver, str]) -> None:
    drv, domain_type = driver
    s = spec(domain_type)
    drv.define(s)
    drv.define(s)
    assert drv.domains()[s.vm_id].power == "shut_off"
    drv.start(s.vm_id)
    drv.start(s.vm_id)
    assert drv.domains()[s.vm_id].power == "running"
    drv.reset(s.vm_id)
    drv.destroy(s.vm_id)
    drv.destroy(s.vm_id)
    assert drv.domains()[s.vm_id].power == "shut_off"
    drv.start(s.vm_id)
    drv.undefine(s.vm_id)
    drv.undefine(s.vm_id)
    assert s.vm_id not in drv.domains()


def test_acting_on_an_undefined_domain_is_a_compute_error(driver: tuple[ComputeDriver, str]) -> None:
    drv, _ = driver
    for action in (drv.start, drv.shutdown, drv.reset, drv.reboot):
        with pytest.raises(ComputeError, match="not defined"):
            action("missing")
    drv.destroy("missing")
    drv.undefine("missing")


def test_only_cloudd_domains_are_listed() -> None:
    drv = LibvirtCompute("test:///default")
    assert "test" not in drv.domains()  # the test driver's own sample domain


def test_an_unreachable_libvirt_is_a_transient_error() -> None:
    drv = LibvirtCompute("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    with pytest.raises(ComputeError) as info:
        drv.domains()
    assert info.value.transient


def test_domain_xml_has_virtio_scsi_serial_log_and_escaped_values() -> None:
    s = DomainSpec("abc", 'evil"<name>&', 2, 256, (DiskSpec("/srv/a b.qcow2"),), domain_type="qemu", vnc_listen="10.0.0.5", vnc_password="s3cret", serial_log="/srv/abc/serial.log")
    root = ET.fromstring(domain_xml(s))
    assert root.get("type") == "qemu" and root.findtext("name") == "cloudd-abc"
    assert root.findtext("title") == 'evil"<name>&'
    assert root.find("memory").text == "256" and root.find("memory").get("unit") == "MiB"
    assert root.find("./devices/controller[@model='virtio-scsi']") is not None
    disk = root.find("./devices/disk")
    assert disk.find("source").get("file") == "/srv/a b.qcow2" and disk.find("target").get("bus") == "virtio"
    assert root.find("./devices/serial/log").get("file") == "/srv/abc/serial.log"
    graphics = root.find("./devices/graphics")
    assert graphics.get("listen") == "10.0.0.5" and graphics.get("passwd") == "s3cret"


def test_the_definition_carries_the_spec_digest(driver: tuple[ComputeDriver, str]) -> None:
    drv, domain_type = driver
    s = spec(domain_type)
    drv.define(s)
    assert drv.domains()[s.vm_id].digest == s.digest
    bigger = DomainSpec(s.vm_id, s.name, 2, 128, s.disks, domain_type=domain_type)
    assert bigger.digest != s.digest
    drv.define(bigger)
    assert drv.domains()[s.vm_id].digest == bigger.digest
    drv.start(s.vm_id)
    assert set(drv.domains()[s.vm_id].live_disks) == {"vda"}
    drv.undefine(s.vm_id)


def test_domain_events_reach_the_watcher(driver: tuple[ComputeDriver, str]) -> None:
    drv, domain_type = driver
    seen: list[str | None] = []
    drv.watch(seen.append)
    s = spec(domain_type)
    drv.define(s)
    drv.start(s.vm_id)
    if isinstance(drv, FakeCompute):
        drv.kill(s.vm_id)  # behind cloudd's back
    else:
        drv.destroy(s.vm_id)
    deadline = time.monotonic() + 5
    while s.vm_id not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.vm_id in seen
    drv.undefine(s.vm_id)


def test_hot_plug_disk_xml_has_the_serial_and_the_scsi_cdrom_is_read_only() -> None:
    cd = ET.fromstring(disk_xml(DiskSpec("/isos/x.iso", format="raw", target="sdb", bus="scsi", device="cdrom")))
    assert cd.get("device") == "cdrom" and cd.find("target").get("bus") == "scsi" and cd.find("readonly") is not None
    extra = ET.fromstring(disk_xml(DiskSpec("/srv/d.qcow2", target="vdc", serial="abc123")))
    assert extra.findtext("serial") == "abc123" and extra.find("readonly") is None
    disks = (DiskSpec("/a", boot_order=1), DiskSpec("/seed.iso", target="sda", bus="scsi", device="cdrom"), DiskSpec("/i.iso", target="sdb", bus="scsi", device="cdrom", boot_order=2))
    root = ET.fromstring(domain_xml(DomainSpec("v", "v", 1, 128, disks)))
    assert root.find("./os/boot") is None  # per-device order: the seed CD-ROM is never booted
    assert [(d.find("target").get("dev"), d.find("boot").get("order") if d.find("boot") is not None else None) for d in root.findall("./devices/disk")] == [("vda", "1"), ("sda", None), ("sdb", "2")]
    assert ET.fromstring(disk_xml(disks[2])).find("boot") is None  # hot-plug: the order applies from the next start
