"""``cloudd doctor`` on the machine the tests run on, against what the kernel really does
when asked: a VLAN, a bridge and a VXLAN device made in a throwaway network namespace,
device-mapper's control node opened, configfs and DRBD looked for. On the reference
machine (../shared/MACHINE-NOTES.md) device-mapper, LIO/configfs, DRBD and 802.1Q are
missing and KVM, bridges, VXLAN, nftables, dnsmasq, qemu and tgt are present."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLOUDD = str(Path(sys.executable).absolute().parent / "cloudd")


def can_make(*links: str) -> bool:
    """Whether ``ip link add`` of each spec works, inside a network namespace of its own."""
    script = " && ".join(f"ip link add {link}" for link in links)
    out = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=20)
    return out.returncode == 0


def device_mapper_works() -> bool:
    try:
        with open("/dev/mapper/control", "rb"):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to probe the kernel")
    data_dir = tmp_path_factory.mktemp("doctor") / "data"
    out = subprocess.run([CLOUDD, "doctor", "--json", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == {"ok": 0, "info": 0, "warn": 1, "fail": 2}[report["worst"]]
    return {f["check"]: f for f in report["findings"]}


def test_every_check_of_the_issue_is_there(findings: dict[str, dict[str, str]]) -> None:
    assert {"kvm", "libvirt", "bridge", "vxlan", "vlan", "nftables", "dnsmasq", "tgt", "lio", "lvm", "drbd", "clock", "data-dir", "raft-peers"} <= set(findings)


def test_vlan_bridge_and_vxlan_as_the_kernel_answers(findings: dict[str, dict[str, str]]) -> None:
    vlan = can_make("d0 type dummy", "link d0 name d0.5 type vlan id 5")
    assert findings["vlan"]["status"] == ("ok" if vlan else "info")
    if not vlan:
        assert "no 802.1Q" in findings["vlan"]["message"]
    assert findings["bridge"]["status"] == ("ok" if can_make("b0 type bridge") else "warn")
    assert findings["vxlan"]["status"] == ("ok" if can_make("vx0 type vxlan id 5 dstport 4789") else "warn")


def test_device_mapper_configfs_and_drbd_as_the_kernel_answers(findings: dict[str, dict[str, str]]) -> None:
    assert ("no device-mapper" in findings["lvm"]["message"]) == (not device_mapper_works())
    assert ("no LIO/configfs" in findings["lio"]["message"]) == (not Path("/sys/kernel/config/target").is_dir())
    assert ("no /proc/drbd" in findings["drbd"]["message"]) == (not Path("/proc/drbd").exists())
    for check in ("lvm", "lio", "drbd"):
        if "this kernel has no" in findings[check]["message"]:
            assert findings[check]["status"] == "info"  # file pools and tgt work without them


def test_the_present_tools_are_reported_present(findings: dict[str, dict[str, str]]) -> None:
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert findings["kvm"]["status"] == ("ok" if kvm_usable else "warn")
    nft_works = shutil.which("nft") is not None and subprocess.run(["nft", "list", "tables"], capture_output=True, timeout=20).returncode == 0
    assert findings["nftables"]["status"] == ("ok" if nft_works else "warn")
    assert findings["dnsmasq"]["status"] == ("ok" if shutil.which("dnsmasq") else "warn")
    assert findings["tgt"]["status"] == ("ok" if shutil.which("tgtd") and shutil.which("tgtadm") else "warn")
    assert findings["data-dir"]["status"] in ("ok", "warn", "fail") and "free" in findings["data-dir"]["message"]


def test_this_machine_is_the_one_the_notes_describe(findings: dict[str, dict[str, str]]) -> None:
    """The reference machine: the four missing features are reported missing here."""
    if device_mapper_works() or Path("/proc/drbd").exists() or can_make("d0 type dummy", "link d0 name d0.5 type vlan id 5"):
        pytest.skip("not the reference machine (this kernel has device-mapper, DRBD or 802.1Q)")
    assert findings["lvm"]["status"] == "info" and "no device-mapper" in findings["lvm"]["message"]
    assert findings["lio"]["status"] == "info" and "no LIO/configfs" in findings["lio"]["message"]
    assert findings["drbd"]["status"] == "info" and "no DRBD" in findings["drbd"]["message"]
    assert findings["vlan"]["status"] == "info" and "no 802.1Q" in findings["vlan"]["message"]
    assert {findings[c]["status"] for c in ("kvm", "bridge", "vxlan", "nftables", "dnsmasq")} == {"ok"}
