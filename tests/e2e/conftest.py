"""Real qemu guests (TCG) under libvirt's embedded driver, built from Debian packages."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

from cloudd.ops.libvirt_compute import LibvirtCompute

if TYPE_CHECKING:
    from cloudd.ops.tgt import TgtExports

ROOT = Path(__file__).resolve().parents[2]
GUEST_CACHE = Path("/tmp/cloudd-test-guest")


def qemu_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (scripts/install.sh installs it)"
    if not Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so").exists():
        return "libvirt's qemu driver is not installed (libvirt-daemon-driver-qemu)"
    return None


@pytest.fixture(scope="session")
def guest() -> Path:
    """vmlinuz + initrd.img of the tiny test guest (built once, cached in /tmp)."""
    reason = qemu_missing()
    if reason:
        pytest.skip(reason)
    subprocess.run(["bash", str(ROOT / "scripts" / "build-guest.sh"), str(GUEST_CACHE)], check=True, capture_output=True, timeout=300)
    return GUEST_CACHE


EMBED_VNC_PORTS = (6900, 6979)


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LibvirtCompute, Path]]:
    """This test process's embedded libvirt. Its qemu driver serves one root per process
    (a second root is refused, and qemu:/// URIs then resolve to it), so every in-process
    test shares this one; other libvirts are reached over qemu+unix:// or from cloudd nodes."""
    reason = qemu_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("embed")
    drv = LibvirtCompute(f"qemu:///embed?root={root}", vnc_range=EMBED_VNC_PORTS)
    try:
        yield drv, root
    finally:
        try:
            for vm_id in list(drv.domains()):
                drv.undefine(vm_id)
        finally:  # whatever happened above: no qemu of ours outlives the tests
            for pid_file in (root / "run" / "qemu").glob("cloudd-*.pid"):
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except (OSError, ValueError):
                    pass


@pytest.fixture
def tgt(tmp_path: Path) -> Iterator["TgtExports"]:
    """A private tgtd on loopback (ended, with its control socket, after the test)."""
    from cloudd.ops.tgt import TgtDaemon, TgtExports, free_control_port
    from tests.cluster.harness import free_port

    for tool in ("tgtd", "tgtadm", "qemu-io", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install.sh installs tgt and qemu-utils)")
    portal = f"127.0.0.1:{free_port('127.0.0.1')}"
    daemon = TgtDaemon(free_control_port(), portal, tmp_path / "tgtd.log").start()
    try:
        yield TgtExports(portal, control_port=daemon.control_port)
    finally:
        daemon.stop()
        assert daemon.proc is not None and daemon.proc.poll() is not None
