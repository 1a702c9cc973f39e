"""The libvirt compute driver booting a real tiny guest under qemu TCG (embedded libvirt)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cloudd.ops.compute import DomainSpec
from cloudd.ops.libvirt_compute import LibvirtCompute
from tests.e2e.guest_helpers import serial, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MARKER = "CLOUDD-GUEST-BOOTED"


def test_boot_shutdown_start_reset_destroy_undefine(embedded: tuple[LibvirtCompute, Path], guest: Path) -> None:
    drv, root = embedded
    log = root / "g1.serial.log"
    spec = DomainSpec("g1", "guest", 1, 128, (), domain_type="qemu", serial_log=str(log), kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"), cmdline="console=ttyS0")
    drv.define(spec)
    drv.start("g1")
    wait_for(lambda: MARKER in serial(log), 60, "the boot marker")
    info = drv.domains()["g1"]
    assert info.power == "running" and info.vnc_port is not None and 6900 <= info.vnc_port <= 6979
    with socket.create_connection(("127.0.0.1", info.vnc_port), timeout=5) as vnc:
        assert vnc.recv(12).startswith(b"RFB ")
    usage = drv.usage("g1")
    assert usage["cpu_time_s"] > 0 and usage["ram_used_mb"] > 0 and "disk_read_bytes" in usage
    drv.shutdown("g1")  # ACPI power button -> the guest's acpid powers off
    wait_for(lambda: drv.domains()["g1"].power == "shut_off", 30, "clean power-off")
    assert "CLOUDD-GUEST-POWEROFF" in serial(log)
    drv.start("g1")
    wait_for(lambda: MARKER in serial(log), 60, "boot after start")
    drv.reset("g1")
    wait_for(lambda: serial(log).count(MARKER) >= 2, 60, "boot after reset")  # serial log restarts per start: count within one run
    drv.destroy("g1")
    assert drv.domains()["g1"].power == "shut_off"
    drv.undefine("g1")
    assert "g1" not in drv.domains()
