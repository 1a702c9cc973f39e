"""A real cloudd node running real qemu guests through its embedded libvirt."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.cluster]
MARKER = "CLOUDD-GUEST-BOOTED"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, guest: Path) -> Iterator[tuple[LocalCluster, httpx.Client]]:
    cluster = LocalCluster(tmp_path_factory.mktemp("guests"), first_host=31, compute=["--compute-uri", "embedded", "--vnc-ports", "6800-6849"])
    try:
        cluster.init(1, max_voters=1)
        with cluster.api("node1") as admin:
            admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "test-guest", "path": str(guest), "format": "kernel", "size_gb": 1}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "tiny-disk", "path": str(guest / "disk.qcow2"), "format": "qcow2", "size_gb": 0.0625}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "tools-cd", "path": str(tools_iso(guest.parent / "cloudd-test-tools.iso")), "format": "iso", "size_gb": 0.01}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "installer", "path": str(guest / "boot.iso"), "format": "iso", "size_gb": 0.01}).raise_for_status()
            admin.post("/api/v1/users", json={"name": "gina", "password": "gina-pass-1"}).raise_for_status()
        token = httpx.post(cluster.nodes["node1"].url + "/api/v1/auth/login", json={"username": "gina", "password": "gina-pass-1"}).json()["token"]
        with httpx.Client(base_url=cluster.nodes["node1"].url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as gina:
            yield cluster, gina
    finally:
        cluster.close()
        kill_guests(cluster.nodes["node1"].data_dir)


def tools_iso(path: Path) -> Path:
    """A small ISO image to insert as a CD-ROM."""
    if not path.exists():
        import io

        import pycdlib

        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="TOOLS")
        data = b"cloudd tools\n"
        iso.add_fp(io.BytesIO(data), len(data), "/README.;1", rr_name="README")
        tmp = path.with_suffix(".tmp")
        iso.write(str(tmp))
        iso.close()
        tmp.replace(path)
    return path


def kill_guests(data_dir: Path) -> None:
    """Guests of an embedded libvirt outlive their cloudd: end the ones this test started."""
    for pid_file in (data_dir / "libvirt" / "run" / "qemu").glob("cloudd-*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def vm(client: httpx.Client, vm_id: str) -> dict[str, Any]:
    return client.get(f"/api/v1/vms/{vm_id}").json()


def vm_dir(cluster: LocalCluster, vm_id: str) -> Path:
    return cluster.nodes["node1"].data_dir / "vms" / vm_id


def qemu_pid(cluster: LocalCluster, vm_id: str) -> int | None:
    pid_file = cluster.nodes["node1"].data_dir / "libvirt" / "run" / "qemu" / f"cloudd-{vm_id}.pid"
    try:
        return int(pid_file.read_text())
    except (OSError, ValueError):
        return None


def vnc_security_types(port: int) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(12).startswith(b"RFB 003.")
        conn.sendall(b"RFB 003.008\n")
        count = conn.recv(1)[0]
        return list(conn.recv(count))


def test_a_vm_boots_shuts_down_restarts_resets_and_is_deleted(node: tuple[LocalCluster, httpx.Client]) -> None:
    cluster, gina = node
    vm_id = gina.post("/api/v1/vms", json={"name": "real1", "flavor": "tiny", "image": "test-guest"}).json()["id"]
    serial = vm_dir(cluster, vm_id) / "serial.log"
    wait_for(lambda: vm(gina, vm_id)["state"] == "running", 60, what="running")
    wait_for(lambda: serial.exists() and MARKER in serial.read_text(errors="replace"), 90, what="boot marker")
    assert "disks: vda" in serial.read_text(errors="replace")
    assert (vm_dir(cluster, vm_id) / "disk.qcow2").exists()
    shown = vm(gina, vm_id)
    assert shown["observed"]["vnc_port"] in range(6800, 6850) and "vnc_password" not in shown
    assert vnc_security_types(shown["observed"]["vnc_port"]) == [2]  # VNC password auth only, never "none"

    gina.post(f"/api/v1/vms/{vm_id}/shutdown").raise_for_status()
    wait_for(lambda: vm(gina, vm_id)["state"] == "stopped", 60, what="clean shutdown")
    assert "CLOUDD-GUEST-POWEROFF" in serial.read_text(errors="replace")

    gina.post(f"/api/v1/vms/{vm_id}/start").raise_for_status()
    wait_for(lambda: vm(gina, vm_id)["state"] == "running", 60, what="started again")
    wait_for(lambda: MARKER in serial.read_text(errors="replace"), 90, what="boot marker after start")
    gina.post(f"/api/v1/vms/{vm_id}/reset").raise_for_status()
    wait_for(lambda: serial.read_text(errors="replace").count(MARKER) >= 2, 90, what="boot marker after reset")

    gina.post(f"/api/v1/vms/{vm_id}/stop").raise_for_status()
    wait_for(lambda: vm(gina, vm_id)["state"] == "stopped", 30, what="forced off")
    assert qemu_pid(cluster, vm_id) is None

    gina.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
    wait_for(lambda: gina.get(f"/api/v1/vms/{vm_id}").status_code == 404, 30, what="VM gone")
    assert not vm_dir(cluster, vm_id).exists()
    assert not list((cluster.nodes["node1"].data_dir / "libvirt").rglob(f"cloudd-{vm_id}*"))


def test_a_guest_killed_behind_cloudds_back_is_started_again_within_10s(node: tuple[LocalCluster, httpx.Client]) -> None:
    cluster, gina = node
    vm_id = gina.post("/api/v1/vms", json={"name": "drifty", "flavor": "tiny", "image": "test-guest"}).json()["id"]
    wait_for(lambda: vm(gina, vm_id)["state"] == "running", 60, what="running")
    first = wait_for(lambda: qemu_pid(cluster, vm_id), 30, what="qemu pid")
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    second = wait_for(lambda: (p := qemu_pid(cluster, vm_id)) and p != first and p, 30, interval=0.2, what="a new qemu")
    assert time.monotonic() - killed_at < 10.0
    assert second != first
    wait_for(lambda: vm(gina, vm_id)["state"] == "running", 30, what="running again")
    gina.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
    wait_for(lambda: gina.get(f"/api/v1/vms/{vm_id}").status_code == 404, 30, what="VM gone")


def test_bad_requests_leave_nothing_on_the_host(node: tuple[LocalCluster, httpx.Client]) -> None:
    cluster, gina = node
    before = sorted(p.name for p in (cluster.nodes["node1"].data_dir / "vms").glob("*")) if (cluster.nodes["node1"].data_dir / "vms").exists() else []
    for body in ({"name": "x", "flavor": "none"}, {"name": "y", "vcpus": 1, "ram_mb": 1 << 30, "disk_gb": 1}, {"name": "Bad Name", "flavor": "tiny"}):
        assert gina.post("/api/v1/vms", json=body).status_code in (400, 404)
    time.sleep(3)
    after = sorted(p.name for p in (cluster.nodes["node1"].data_dir / "vms").glob("*")) if (cluster.nodes["node1"].data_dir / "vms").exists() else []
    assert after == before


def serial_text(cluster: LocalCluster, vm_id: str) -> str:
    path = vm_dir(cluster, vm_id) / "serial.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_vm_boots_from_the_disk_image_with_its_seed_and_takes_disks_and_isos_while_running(node: tuple[LocalCluster, httpx.Client]) -> None:
    cluster, gina = node
    created = gina.post("/api/v1/vms", json={"name": "diskful", "flavor": "tiny", "image": "tiny-disk", "swap_mb": 64})
    assert created.status_code == 202, created.text
    vm_id = created.json()["id"]
    wait_for(lambda: MARKER in serial_text(cluster, vm_id), 120, what="boot marker from the disk image")
    text = serial_text(cluster, vm_id)
    assert "CLOUDD-GUEST-SEED hostname=diskful" in text  # the cloud-init seed reached the guest
    assert "console=tty0 console=ttyS0" in text  # booted by the disk's own bootloader, not by libvirt
    assert "disks: vda vdb" in text  # OS disk and swap
    wait_for(lambda: vm(gina, vm_id)["observed"].get("disks") == ["sda", "vda", "vdb"], 30, what="disks reported")

    added = gina.post(f"/api/v1/vms/{vm_id}/disks", json={"size_gb": 1})
    assert added.status_code == 202
    disk_id = added.json()["disk"]["id"]
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG add vdc" in serial_text(cluster, vm_id), 60, what="the guest sees the new disk")
    assert (vm_dir(cluster, vm_id) / f"disk-{disk_id}.qcow2").exists()
    assert gina.post(f"/api/v1/vms/{vm_id}/iso", json={"image": "tools-cd"}).status_code == 202
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG add sr1" in serial_text(cluster, vm_id), 60, what="the guest sees the CD-ROM")
    wait_for(lambda: vm(gina, vm_id)["observed"].get("disks") == ["sda", "sdb", "vda", "vdb", "vdc"], 30, what="devices reported")

    assert gina.delete(f"/api/v1/vms/{vm_id}/iso").status_code == 202
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG remove sr1" in serial_text(cluster, vm_id), 60, what="the CD-ROM ejected")
    assert gina.delete(f"/api/v1/vms/{vm_id}/disks/{disk_id}").status_code == 202
    wait_for(lambda: "CLOUDD-GUEST-HOTPLUG remove vdc" in serial_text(cluster, vm_id), 60, what="the disk unplugged")
    wait_for(lambda: not (vm_dir(cluster, vm_id) / f"disk-{disk_id}.qcow2").exists(), 30, what="the disk file deleted")
    assert vm(gina, vm_id)["state"] == "running" and serial_text(cluster, vm_id).count(MARKER) == 1  # never rebooted

    gina.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
    wait_for(lambda: gina.get(f"/api/v1/vms/{vm_id}").status_code == 404, 30, what="VM gone")
    assert not vm_dir(cluster, vm_id).exists() and not (vm_dir(cluster, vm_id).parent / f"{vm_id}-swap.qcow2").exists()


def test_a_vm_with_a_blank_disk_boots_its_install_iso(node: tuple[LocalCluster, httpx.Client]) -> None:
    cluster, gina = node
    created = gina.post("/api/v1/vms", json={"name": "installing", "flavor": "tiny", "image": None, "iso": "installer"})
    assert created.status_code == 202, created.text
    vm_id = created.json()["id"]
    wait_for(lambda: MARKER in serial_text(cluster, vm_id), 120, what="boot marker from the CD")
    text = serial_text(cluster, vm_id)
    assert "cloudd.boot=cd" in text and "CLOUDD-GUEST-SEED hostname=installing" in text  # the ISO, not the seed CD
    gina.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
    wait_for(lambda: gina.get(f"/api/v1/vms/{vm_id}").status_code == 404, 30, what="VM gone")


def vnc_password(cluster: LocalCluster, vm_id: str) -> str:
    """The VM's VNC password, as its node gave it to libvirt (no API shows it)."""
    import xml.etree.ElementTree as ET

    config = next((cluster.nodes["node1"].data_dir / "libvirt").rglob(f"etc/qemu/cloudd-{vm_id}.xml"))
    graphics = ET.parse(config).find("./devices/graphics[@type='vnc']")
    assert graphics is not None and graphics.get("passwd")
    return str(graphics.get("passwd"))


def test_the_vnc_console_takes_the_vms_password_and_a_login(node: tuple[LocalCluster, httpx.Client]) -> None:
    from tests.e2e.rfb import RfbClient

    cluster, gina = node
    vm_id = gina.post("/api/v1/vms", json={"name": "console", "flavor": "tiny", "image": "tiny-disk"}).json()["id"]
    wait_for(lambda: MARKER in serial_text(cluster, vm_id), 120, what="boot marker")
    port = wait_for(lambda: vm(gina, vm_id)["observed"]["vnc_port"], 30, what="VNC port")
    first = qemu_pid(cluster, vm_id)
    with pytest.raises(PermissionError):
        RfbClient("127.0.0.1", port, "wrong-pw").close()
    console = RfbClient("127.0.0.1", port, vnc_password(cluster, vm_id))
    try:
        assert console.width >= 640 and console.height >= 400
        time.sleep(2)  # the getty on tty1 is up once the boot marker is out; give it a moment
        console.type("root\n")  # the tiny guest's root has no password
        time.sleep(2)
        console.type("poweroff -f\n")  # typed at the shell on the VNC screen
    finally:
        console.close()
    # the guest really powered off: cloudd sees it and (desired: running) starts it again
    wait_for(lambda: (p := qemu_pid(cluster, vm_id)) and p != first, 60, interval=0.2, what="the guest powered off from its console")
    gina.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
    wait_for(lambda: gina.get(f"/api/v1/vms/{vm_id}").status_code == 404, 30, what="VM gone")
