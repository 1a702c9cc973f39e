"""Drift repair and libvirt reconnection against a REAL libvirtd (the production path:
the remote driver over a unix socket), with virsh acting behind cloudd's back.

One cloudd node (tests/cluster/harness.py) manages guests through a private libvirtd
(tests/e2e/libvirtd.py); the tests destroy and undefine its domains with virsh, restart
libvirtd under it, stop it for a while and freeze it (SIGSTOP), and check that cloudd
repairs, reconnects and keeps serving its API.

Two tests guard fixes these tests found: a define racing with libvirtd's removal of a
transient domain is retried (it put the VM in error for good), and a frozen libvirtd no
longer starves the API (libvirt.open() has no timeout: calls now give up waiting for the
driver's lock, and run in the agent's own threads, not asyncio's default pool).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from tests.cluster.harness import LocalCluster, Node, wait_for
from tests.e2e.libvirtd import PrivateLibvirtd, host_libvirt_snapshot, libvirtd_missing

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.cluster]
MARKER = "CLOUDD-GUEST-BOOTED"
VNC = (7000, 7049)
DRIFT_DEADLINE_S = 10.0  # the spec: drift is detected (and repaired) within 10 s
# what a libvirtd started outside the private mounts would leave on the host
HOST_TELLTALES = (
    "/run/libvirtd.pid", "/run/virtlogd.pid", "/run/libvirt/libvirt-sock", "/run/libvirt/libvirt-sock-ro",
    "/run/libvirt/libvirt-admin-sock", "/run/libvirt/virtlogd-sock", "/run/libvirt/virtlogd-admin-sock", "/run/libvirt/qemu",
)


@dataclass
class Setup:
    cluster: LocalCluster
    libvirtd: PrivateLibvirtd
    gina: httpx.Client

    @property
    def node(self) -> Node:
        return self.cluster.nodes["node1"]

    def vm(self, vm_id: str) -> dict[str, Any]:
        reply = self.gina.get(f"/api/v1/vms/{vm_id}")
        reply.raise_for_status()
        return dict(reply.json())

    def serial(self, vm_id: str) -> str:
        path = self.node.data_dir / "vms" / vm_id / "serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pid(self, vm_id: str) -> int | None:
        return self.libvirtd.qemu_pid(f"cloudd-{vm_id}")

    def create_running(self, name: str) -> tuple[str, int]:
        reply = self.gina.post("/api/v1/vms", json={"name": name, "flavor": "tiny", "image": "test-guest"})
        assert reply.status_code in (200, 201, 202), reply.text
        vm_id = reply.json()["id"]
        wait_for(lambda: self.vm(vm_id)["state"] == "running", 90, what=f"{name} running")
        wait_for(lambda: MARKER in self.serial(vm_id), 120, interval=0.5, what=f"{name}'s boot marker")
        return vm_id, int(wait_for(lambda: self.pid(vm_id), 10, what=f"{name}'s qemu pid"))

    def wait_new_qemu(self, vm_id: str, old_pid: int, timeout: float, what: str) -> int:
        """A qemu other than ``old_pid``; fails at once if the VM goes to error."""

        def new() -> int | None:
            pid = self.pid(vm_id)
            if pid is not None and pid != old_pid:
                return pid
            vm = self.vm(vm_id)
            if vm["state"] == "error":
                raise VmInError(f"{what}: the VM went to error: {vm.get('error')}")
            return None

        return int(wait_for(new, timeout, interval=0.1, what=what))

    def wait_fresh_boot(self, vm_id: str, old_serial: str, timeout: float = 120) -> None:
        """A boot marker written after ``old_serial`` was read (the log is rewritten on
        each start, or appended to)."""

        def fresh() -> bool:
            text = self.serial(vm_id)
            if text.startswith(old_serial):
                return text.count(MARKER) > old_serial.count(MARKER)
            return MARKER in text

        wait_for(fresh, timeout, interval=0.5, what="a fresh boot marker")

    def delete(self, vm_id: str) -> None:
        self.gina.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
        wait_for(lambda: self.gina.get(f"/api/v1/vms/{vm_id}").status_code == 404, 60, what="VM gone")
        assert f"cloudd-{vm_id}" not in self.libvirtd.domains()
        assert not (self.node.data_dir / "vms" / vm_id).exists()

    def log_since(self, offset: int) -> str:
        return self.node.log_text()[offset:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, guest: Path) -> Iterator[Setup]:
    reason = libvirtd_missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("libvirtd-drift")
    before = host_libvirt_snapshot()
    telltales_before = {p for p in HOST_TELLTALES if Path(p).exists()}
    libvirtd = PrivateLibvirtd(VNC, log_dir=root)
    cluster = LocalCluster(
        root, first_host=60,
        compute=["--compute-uri", libvirtd.uri, "--domain-type", "qemu", "--vnc-ports", f"{VNC[0]}-{VNC[1]}"],
    )
    try:
        libvirtd.start()
        cluster.init(1, max_voters=1)
        with cluster.api("node1") as admin:
            admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "test-guest", "path": str(guest), "format": "kernel", "size_gb": 1}).raise_for_status()
            admin.post("/api/v1/users", json={"name": "gina", "password": "gina-pass-1"}).raise_for_status()
        token = httpx.post(cluster.nodes["node1"].url + "/api/v1/auth/login", json={"username": "gina", "password": "gina-pass-1"}).json()["token"]
        with httpx.Client(base_url=cluster.nodes["node1"].url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as gina:
            yield Setup(cluster, libvirtd, gina)
    finally:
        cluster.close()
        libvirtd.stop()
    # nothing of the private libvirtd reached the host's own libvirt directories
    after = host_libvirt_snapshot()
    new = sorted(p for p in set(after) - set(before) if not p.startswith("/run/libvirt/"))
    assert not new, f"the private libvirtd leaked into the host: {new}"
    assert {p for p in HOST_TELLTALES if Path(p).exists()} == telltales_before
    assert not [p for p in after if "cloudd-" in p]


def test_a_domain_destroyed_with_virsh_is_started_again_within_10s(setup: Setup) -> None:
    vm_id, first = setup.create_running("drift-destroy")
    domain = f"cloudd-{vm_id}"
    assert setup.vm(vm_id)["observed"]["vnc_port"] in range(VNC[0], VNC[1] + 1)
    old_serial = setup.serial(vm_id)

    destroyed_at = time.monotonic()
    setup.libvirtd.virsh("destroy", domain)
    took = time.monotonic() - destroyed_at
    second = setup.wait_new_qemu(vm_id, first, 30, what="a new qemu")
    latency = time.monotonic() - destroyed_at
    print(f"drift repair: virsh destroy took {took:.2f}s, new qemu {latency:.2f}s after it began")
    assert latency < DRIFT_DEADLINE_S, f"repair started {latency:.1f}s after the destroy"
    assert second != first
    setup.wait_fresh_boot(vm_id, old_serial)
    wait_for(lambda: setup.vm(vm_id)["state"] == "running", 30, what="running again")
    assert "running" in setup.libvirtd.virsh("domstate", domain).stdout
    setup.delete(vm_id)


def test_an_undefined_then_destroyed_domain_is_defined_and_started_again(setup: Setup) -> None:
    vm_id, first = setup.create_running("drift-undefine")
    domain = f"cloudd-{vm_id}"
    old_serial = setup.serial(vm_id)

    # one virsh session: the domain becomes transient, then vanishes when it stops
    gone_at = time.monotonic()
    out = setup.libvirtd.virsh(f"undefine {domain}; dominfo {domain}; destroy {domain}")
    took = time.monotonic() - gone_at
    assert "Persistent:     no" in out.stdout

    setup.wait_new_qemu(vm_id, first, 30, what="the domain defined and started again")
    latency = time.monotonic() - gone_at
    print(f"drift repair: undefine + destroy took {took:.2f}s, defined + new qemu {latency:.2f}s after they began")
    assert latency < DRIFT_DEADLINE_S
    info = setup.libvirtd.virsh("dominfo", domain).stdout
    assert "Persistent:     yes" in info and "running" in info
    setup.wait_fresh_boot(vm_id, old_serial)
    wait_for(lambda: setup.vm(vm_id)["state"] == "running", 30, what="running again")
    assert "vanished behind cloudd's back" in setup.node.log_text()
    setup.delete(vm_id)


def persistent(conn: libvirt.virConnect, name: str) -> bool:
    try:
        return bool(conn.lookupByName(name).isPersistent())
    except libvirt.libvirtError:
        return False


class VmInError(AssertionError):
    """Drift repair gave up: the VM went to the error state."""


def test_an_undefine_racing_with_a_destroy_never_leaves_the_vm_in_error(setup: Setup) -> None:
    """Undefine, then destroy after a growing delay: at some delay cloudd has seen the
    transient domain and (re)defines it just while libvirtd removes it."""
    vm_id, _ = setup.create_running("drift-race")
    conn = libvirt.open(setup.libvirtd.uri)
    try:
        for delay in [i * 0.005 for i in range(24)]:
            first = int(wait_for(lambda: setup.pid(vm_id), 30, what="a qemu"))
            wait_for(lambda: setup.vm(vm_id)["state"] == "running" and persistent(conn, f"cloudd-{vm_id}"), 30, what="settled")
            dom = conn.lookupByName(f"cloudd-{vm_id}")
            dom.undefine()
            time.sleep(delay)
            dom.destroy()
            setup.wait_new_qemu(vm_id, first, DRIFT_DEADLINE_S, what=f"repair (undefine, {delay:.2f}s, destroy)")
    finally:
        conn.close()
        if setup.vm(vm_id)["state"] == "error":
            setup.gina.post(f"/api/v1/vms/{vm_id}/stop")
        setup.delete(vm_id)


def test_cloudd_reconnects_after_libvirtd_restarts_under_a_running_guest(setup: Setup) -> None:
    vm_id, pid = setup.create_running("reconnect")
    offset = len(setup.node.log_text())

    started = time.monotonic()
    setup.libvirtd.restart_libvirtd()
    print(f"libvirtd restart: {time.monotonic() - started:.2f}s")
    assert setup.pid(vm_id) == pid and Path(f"/proc/{pid}").exists(), "the guest did not survive the libvirtd restart"
    assert "running" in setup.libvirtd.virsh("domstate", f"cloudd-{vm_id}").stdout
    # cloudd notices the old connection is gone (on its next reconcile, every 2 s)
    wait_for(lambda: "reconnecting" in (log := setup.log_since(offset)) or "cannot read the hypervisor" in log, 15, what="cloudd noticing the restart")

    old_serial = setup.serial(vm_id)
    asked = time.monotonic()
    setup.gina.post(f"/api/v1/vms/{vm_id}/shutdown").raise_for_status()
    wait_for(lambda: setup.vm(vm_id)["state"] == "stopped", 60, what="clean shutdown through the new connection")
    print(f"shutdown after the restart: {time.monotonic() - asked:.2f}s")
    assert "CLOUDD-GUEST-POWEROFF" in setup.serial(vm_id)
    assert setup.pid(vm_id) is None
    assert "shut off" in setup.libvirtd.virsh("domstate", f"cloudd-{vm_id}").stdout

    old_serial = setup.serial(vm_id)
    setup.gina.post(f"/api/v1/vms/{vm_id}/start").raise_for_status()
    wait_for(lambda: setup.vm(vm_id)["state"] == "running", 60, what="started again")
    setup.wait_fresh_boot(vm_id, old_serial)
    assert setup.pid(vm_id) not in (None, pid)
    assert setup.vm(vm_id)["state"] == "running"
    setup.delete(vm_id)


def test_the_node_stays_healthy_while_libvirtd_is_down_and_converges_after(setup: Setup) -> None:
    vm_id, pid = setup.create_running("outage")
    offset = len(setup.node.log_text())
    health = setup.node.url + "/healthz"

    setup.libvirtd.stop_libvirtd()
    assert Path(f"/proc/{pid}").exists(), "the guest died with libvirtd"
    # asked while libvirtd is away: committed at once, carried out when it is back
    setup.gina.post(f"/api/v1/vms/{vm_id}/stop").raise_for_status()
    slowest = 0.0
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        asked = time.monotonic()
        reply = httpx.get(health, timeout=2)
        slowest = max(slowest, time.monotonic() - asked)
        assert reply.status_code == 200, reply.text
        assert setup.vm(vm_id)["state"] in ("running", "stopping")
        time.sleep(0.2)
    print(f"slowest /healthz while libvirtd was down: {slowest * 1000:.0f} ms")
    assert Path(f"/proc/{pid}").exists()
    assert "cannot read the hypervisor" in setup.log_since(offset) or "cannot connect to libvirt" in setup.log_since(offset)

    back = time.monotonic()
    setup.libvirtd.start_libvirtd()
    wait_for(lambda: setup.vm(vm_id)["state"] == "stopped", 30, what="the stop carried out once libvirtd is back")
    print(f"converged {time.monotonic() - back:.2f}s after libvirtd came back")
    assert httpx.get(health, timeout=2).status_code == 200
    assert setup.pid(vm_id) is None

    old_serial = setup.serial(vm_id)
    setup.gina.post(f"/api/v1/vms/{vm_id}/start").raise_for_status()
    wait_for(lambda: setup.vm(vm_id)["state"] == "running", 60, what="started again")
    setup.wait_fresh_boot(vm_id, old_serial)
    setup.delete(vm_id)


class ApiStarved(AssertionError):
    """The API stopped answering while libvirtd hung."""


# Before the fix: asyncio's default pool has min(32, cores + 4) workers (6 here); keepalive
# ended the stuck call after ~20 s, then libvirt.open() blocked for good holding the driver's
# lock, and each reconcile step left one more worker waiting for it: logins hung after ~190 s.
# Now the agent's calls cannot reach that pool at all, so a shorter freeze shows the same.
HANG_S = 90.0


@pytest.mark.timeout(300)
def test_a_hung_libvirtd_does_not_starve_the_api(setup: Setup) -> None:
    vm_id, pid = setup.create_running("hang")
    libvirtd = setup.libvirtd.libvirtd
    assert libvirtd is not None
    login = setup.node.url + "/api/v1/auth/login"
    health = setup.node.url + "/healthz"
    starved = None
    os.kill(libvirtd.pid, signal.SIGSTOP)  # alive, listening, answering nothing
    frozen_at = time.monotonic()
    try:
        setup.gina.post(f"/api/v1/vms/{vm_id}/stop").raise_for_status()  # committed; carried out later
        while time.monotonic() - frozen_at < HANG_S:
            assert httpx.get(health, timeout=5).status_code == 200
            try:
                reply = httpx.post(login, json={"username": "gina", "password": "gina-pass-1"}, timeout=10)
            except httpx.TimeoutException:
                starved = f"login hung {time.monotonic() - frozen_at:.0f}s after libvirtd froze"
                break
            assert reply.status_code == 200, reply.text
            time.sleep(5)
    finally:
        os.kill(libvirtd.pid, signal.SIGCONT)
    thawed_at = time.monotonic()
    print(starved or f"the API answered throughout {HANG_S:.0f}s of a frozen libvirtd")
    assert Path(f"/proc/{pid}").exists()
    try:
        wait_for(lambda: setup.vm(vm_id)["state"] == "stopped", 120, what="the stop carried out once libvirtd answers again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the node's log ends:\n{setup.node.log_text()[-4000:]}") from None
    print(f"converged {time.monotonic() - thawed_at:.2f}s after libvirtd was thawed")
    wait_for(lambda: httpx.post(login, json={"username": "gina", "password": "gina-pass-1"}, timeout=10).status_code == 200, 30, what="login")
    setup.delete(vm_id)
    if starved:
        raise ApiStarved(starved)


def test_no_domain_is_left(setup: Setup) -> None:
    assert setup.gina.get("/api/v1/vms").json()["items"] == []
    assert setup.libvirtd.domains() == []
    assert not list((setup.node.data_dir / "vms").glob("*"))
