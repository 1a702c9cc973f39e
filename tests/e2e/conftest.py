"""Real qemu guests (TCG) under libvirt's embedded driver, built from Debian packages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
