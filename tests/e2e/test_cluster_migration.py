"""VM migration between real ``cloudd serve`` nodes, with real TCG guests.

**Offline** (two nodes, each with its own embedded libvirt and its OWN VM directory, the
cluster's ``shared_vm_storage`` off): a running VM moves only with ``force`` (409
without); the source shuts the guest down and undefines it, the target fetches its
disk over the node-to-node endpoint, rebases it onto its own copy of the (uploaded)
image and boots it. The disk carries a pattern written before the move; the source's
last state of the file is kept through a hard link and compared with the target's copy.
Nothing of the VM remains on the source: no domain (the embedded root keeps a
persistent definition as ``etc/qemu/cloudd-<id>.xml``, a running one under
``run/qemu/``), no VM directory.

**Live** (three nodes: node1 holds no VMs and leads; node2 and node3 each drive a private
libvirtd (``tests/e2e/libvirtd.py``) reached by the other over its unix socket, the VM
directory shared and ``migration_unsafe`` on, since libvirt does not know a plain local
directory is shared, and each runs its fence guard): one guest, pinned to node2 and
node3, moves back and forth. It keeps a random token in RAM only and prints it with its
uptime every second, so the same token and a still-growing uptime after the move prove
it kept its memory and never rebooted.

- A plain live migration: the task succeeds with the downtime the source measured.
- A migration made slow (1 MiB/s) has the cloudd of its source, or the cluster's leader,
  killed with SIGKILL once its task shows progress, and started again; once progress is
  reported again after the restart, the test lets libvirt finish at full speed. The VM
  must end up running exactly once (one qemu in /proc, one domain in the two libvirtds
  together, every node's API naming the node that runs it), with the same token.
- The source's cloudd killed for good mid-migration: its fence guard destroys the guest
  there (the migration breaks off), the leader recovers the VM on the migration's target
  only (a fresh boot: the memory died with the source), and the source, back, removes its
  stale definition and starts nothing.

A thread reads both libvirtds every 50 ms meanwhile: the guest must never be seen running
on the target while it still runs on the source. Its timeline (printed) also shows what
the shared ``serial.log`` goes through: see ``same_guest_goes_on``.

Host addresses 127.0.0.194-195 (offline) and .196-198 (live), VNC ports 7400-7419 and
7450-7489, migration ports 49400-49499: no other test uses them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cloudd.ops.compute import ComputeError
from cloudd.ops.libvirt_compute import LibvirtCompute
from tests.cluster.harness import FAST_TIMINGS, LocalCluster, Node, wait_for
from tests.e2e.libvirtd import PrivateLibvirtd, SharedDirCluster, libvirtd_missing
from tests.e2e.test_failover_guests import fence_records, start_guard, stop_guard

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BOOTED = "CLOUDD-GUEST-BOOTED"
HEARTBEAT = re.compile(r"CLOUDD-GUEST-HEARTBEAT uptime=(\d+(?:\.\d+)?) token=([0-9a-f]{16})")
OFFLINE_HOST, LIVE_HOST = 194, 196
OFFLINE_VNC = 7400  # node i: 7400 + 10 (i-1) .. + 9
LIVE_DAEMONS = {"node2": ((7450, 7469), (49400, 49449)), "node3": ((7470, 7489), (49450, 49499))}  # VNC, migration ports
PATTERN, PATTERN_AT = "0xa5", "900M"  # written into the offline VM's disk (1 GiB) before it moves
# a restarted node must not be declared down (nor its VMs failed over) while it comes back
# on a loaded machine; the rest as fast as the other cluster tests
LIVE_TIMINGS = {**FAST_TIMINGS, "down_after": 6.0, "fence_after": 10.0, "failover_margin": 2.0}


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def heartbeats(path: Path) -> list[tuple[float, str]]:
    return [(float(up), token) for up, token in HEARTBEAT.findall(text(path))]


def qemus_of(vm_id: str) -> list[int]:
    """Live (not zombie) qemu processes of the VM's domain anywhere on this host."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        argv0 = raw.split(b"\0", 1)[0]
        if os.path.basename(argv0).startswith(b"qemu-system") and f"guest=cloudd-{vm_id},".encode() in raw and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return sorted(pids)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def end_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def moved_mib(task: dict[str, Any]) -> int:
    """MiB of guest memory a live migration's task says were sent so far (0: none yet)."""
    found = re.search(r": (\d+) of (\d+) MiB", task["message"])
    return int(found.group(1)) if found else 0


def qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True, text=True, timeout=30)
    return dict(json.loads(out.stdout))


def tail(node: Node, chars: int = 4000) -> str:
    return f"----- {node.name} -----\n{node.log_text()[-chars:]}"


# --- offline: two nodes, embedded libvirts, node-local VM directories -------------------------


class OfflineCluster(LocalCluster):
    def __init__(self, root: Path) -> None:
        super().__init__(root, first_host=OFFLINE_HOST, compute=["--compute-uri", "embedded"])

    def _set_timings(self, node: Node) -> None:
        super()._set_timings(node)
        path = node.data_dir / "node.json"
        data = orjson.loads(path.read_bytes())
        low = OFFLINE_VNC + 10 * (int(node.name.removeprefix("node")) - 1)
        data["compute"].update(vnc_port_min=low, vnc_port_max=low + 9)  # vm_dir: <data dir>/vms, its own
        path.write_bytes(orjson.dumps(data))

    def libvirt_root(self, name: str) -> Path:
        return self.nodes[name].data_dir / "libvirt"

    def vm_dir(self, name: str, vm_id: str) -> Path:
        return self.nodes[name].data_dir / "vms" / vm_id

    def qemu_pid(self, name: str, vm_id: str) -> int | None:
        try:
            return int((self.libvirt_root(name) / "run" / "qemu" / f"cloudd-{vm_id}.pid").read_text())
        except (OSError, ValueError):
            return None

    def end_qemus(self, vm_ids: list[str]) -> None:
        """Guests of an embedded libvirt outlive their cloudd: end this test's (pid files, /proc)."""
        pids = {pid for vm_id in vm_ids for pid in qemus_of(vm_id)}
        for name in self.nodes:
            for pid_file in (self.libvirt_root(name) / "run" / "qemu").glob("cloudd-*.pid"):
                try:
                    pids.add(int(pid_file.read_text()))
                except (OSError, ValueError):
                    pass
        end_pids(pids)


@pytest.fixture(scope="module")
def offline(guest: Path) -> Iterator[tuple[OfflineCluster, httpx.Client, list[str]]]:
    # a short root: qemu's monitor socket under <root>/nodeN/libvirt must fit AF_UNIX
    root = Path(tempfile.mkdtemp(prefix="cdmo", dir="/tmp"))
    cluster = OfflineCluster(root)
    vm_ids: list[str] = []
    try:
        cluster.init(2)
        with cluster.api("node1") as admin:
            # uploaded, not registered by path: every node holds its own copy, which the
            # target rebases the moved disk onto
            image = admin.post("/api/v1/images", json={"name": "tiny-disk", "format": "qcow2", "upload": True, "public": True})
            assert image.status_code == 201, image.text
            put = admin.put(
                f"/api/v1/images/{image.json()['id']}/file", content=(guest / "disk.qcow2").read_bytes(),
                headers={"Content-Type": "application/octet-stream", "X-Cloudd-Min-Index": image.headers["X-Cloudd-Index"]},
            )
            assert put.status_code in (200, 201), put.text
            admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
            yield cluster, admin, vm_ids
    finally:
        try:
            cluster.close()
        finally:
            cluster.end_qemus(vm_ids)
            for node in cluster.nodes.values():
                print(tail(node))
            shutil.rmtree(root, ignore_errors=True)


def test_offline_migration_moves_the_disk_to_the_other_nodes_own_directory(offline: tuple[OfflineCluster, httpx.Client, list[str]]) -> None:
    cluster, admin, vm_ids = offline

    def vm() -> dict[str, Any]:
        return dict(admin.get(f"/api/v1/vms/{vm_id}").json())

    # created stopped: the pattern goes into its disk before the guest ever runs
    created = admin.post("/api/v1/vms", json={"name": "off1", "flavor": "tiny", "image": "tiny-disk", "power": "stopped"})
    assert created.status_code == 202, created.text
    vm_id = created.json()["id"]
    vm_ids.append(vm_id)
    source = wait_for(lambda: (v := vm())["state"] == "stopped" and v["node"], 90, what="the VM defined, stopped")
    target = next(n for n in cluster.nodes if n != source)
    disk = cluster.vm_dir(source, vm_id) / "disk.qcow2"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} {PATTERN_AT} 1M", str(disk)], check=True, capture_output=True, timeout=30)
    admin.post(f"/api/v1/vms/{vm_id}/start").raise_for_status()
    wait_for(lambda: vm()["state"] == "running", 60, what="the VM running")
    wait_for(lambda: BOOTED in text(cluster.vm_dir(source, vm_id) / "serial.log"), 120, interval=0.3, what="the guest booted on the source")
    first_qemu = cluster.qemu_pid(source, vm_id)
    assert first_qemu is not None and alive(first_qemu)

    refused = admin.post(f"/api/v1/vms/{vm_id}/migrate", json={"node": target, "mode": "offline"})
    assert refused.status_code == 409 and "give force" in refused.json()["error"]["message"], refused.text
    assert (vm()["state"], vm()["node"], vm().get("migration")) == ("running", source, None)

    # the source's file as it will be when the guest is down (same inode: qemu writes in place)
    os.link(disk, cluster.root / "source-disk.qcow2")
    asked = time.monotonic()
    moved = admin.post(f"/api/v1/vms/{vm_id}/migrate", json={"node": target, "mode": "offline", "force": True})
    assert moved.status_code == 202, moved.text
    task_id = moved.json()["task"]["id"]
    phases: dict[str, float] = {}

    def ended() -> dict[str, Any] | None:
        task = admin.get(f"/api/v1/tasks/{task_id}").json()
        phase = (vm().get("migration") or {}).get("phase")
        if phase and phase not in phases:
            phases[phase] = time.monotonic() - asked
        return task if task["state"] != "running" else None

    done = wait_for(ended, 120, interval=0.1, what="the offline migration's end")
    took = time.monotonic() - asked
    assert done["state"] == "succeeded", done
    after = wait_for(lambda: (v := vm())["state"] == "running" and not v.get("leftovers") and v, 60, what="running on the target, the source cleaned")
    assert after["node"] == target and after["migrated"]["from"] == source and after["migrated"]["mode"] == "offline"
    target_serial = cluster.vm_dir(target, vm_id) / "serial.log"
    wait_for(lambda: BOOTED in text(target_serial), 120, interval=0.3, what="the guest booted on the target")
    booted = time.monotonic() - asked
    print(f"\noffline {source} -> {target}: phases at {', '.join(f'{p} {t:.1f} s' for p, t in phases.items())}; task done {took:.1f} s, "
          f"guest booted on the target {booted:.1f} s after the request")

    # one qemu, the target's; the source's is gone with its domain and its files
    second_qemu = cluster.qemu_pid(target, vm_id)
    assert second_qemu is not None and alive(second_qemu) and not alive(first_qemu)
    assert qemus_of(vm_id) == [second_qemu]
    source_root = cluster.libvirt_root(source)
    assert not (source_root / "etc" / "qemu" / f"cloudd-{vm_id}.xml").exists()
    assert list((source_root / "run" / "qemu").glob(f"cloudd-{vm_id}.*")) == []
    assert (cluster.libvirt_root(target) / "etc" / "qemu" / f"cloudd-{vm_id}.xml").exists()
    assert not cluster.vm_dir(source, vm_id).exists()
    assert [p.name for p in (cluster.nodes[source].data_dir / "vms").iterdir() if vm_id in p.name] == []
    assert [p.name for p in (cluster.nodes[target].data_dir / "vms").iterdir() if vm_id in p.name] == [vm_id]

    # the target's disk: a qcow2 on the target's own copy of the image, with the source's content
    moved_disk = cluster.vm_dir(target, vm_id) / "disk.qcow2"
    info = qemu_img_info(moved_disk)
    image_copy = Path(info["full-backing-filename"])
    assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30, info
    assert image_copy.parent == cluster.nodes[target].data_dir / "images" and image_copy.exists(), info
    assert qemu_img_info(cluster.root / "source-disk.qcow2")["full-backing-filename"].startswith(str(cluster.nodes[source].data_dir)), "the source's disk was on its own image copy"
    subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", f"read -P {PATTERN} {PATTERN_AT} 1M", str(moved_disk)], check=True, capture_output=True, timeout=30)
    compared = subprocess.run(["qemu-img", "compare", "-U", str(cluster.root / "source-disk.qcow2"), str(moved_disk)], check=False, capture_output=True, text=True, timeout=60)
    assert compared.returncode == 0, compared.stdout + compared.stderr


# --- live: three nodes, two private libvirtds, one shared VM directory ------------------------


class LiveCluster(SharedDirCluster):
    def __init__(self, root: Path, vm_dir: Path, daemons: dict[str, PrivateLibvirtd]) -> None:
        super().__init__(root, vm_dir, daemons, first_host=LIVE_HOST, timings=LIVE_TIMINGS)


@dataclass
class Live:
    cluster: LiveCluster
    daemons: dict[str, PrivateLibvirtd]
    vm_id: str
    token: str
    serial: Path
    guards: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return f"cloudd-{self.vm_id}"

    def api(self, avoid: str | None = None) -> httpx.Client:
        return self.cluster.api(next(n for n in self.cluster.running() if n != avoid))

    def vm(self, via: str | None = None) -> dict[str, Any]:
        with self.api(avoid=via) as client:
            return dict(client.get(f"/api/v1/vms/{self.vm_id}").json())

    def task(self, task_id: str, avoid: str | None = None) -> dict[str, Any]:
        with self.api(avoid=avoid) as client:
            return dict(client.get(f"/api/v1/tasks/{task_id}").json())

    def placement(self) -> tuple[str, str]:
        """(source, target): where the VM runs now, and the other hypervisor."""
        vm = wait_for(lambda: (v := self.vm())["state"] == "running" and not v.get("migration") and not v.get("leftovers") and v, 60, what="the VM settled")
        return vm["node"], next(n for n in self.daemons if n != vm["node"])

    def defined(self) -> dict[str, list[str]]:
        """The libvirt domains (running or not) of each hypervisor."""
        return {name: daemon.domains() for name, daemon in self.daemons.items()}

    def state_on(self, node: str) -> str:
        return self.daemons[node].virsh("domstate", self.domain).stdout.strip()

    def hearts_after(self, count: int) -> list[tuple[float, str]]:
        try:
            return list(wait_for(lambda: len(h := heartbeats(self.serial)) >= count and h, 30, what=f"{count} heartbeats"))
        except AssertionError:
            raw = self.serial.read_bytes() if self.serial.exists() else b""
            raise AssertionError(f"{count} heartbeats expected in {self.serial} ({len(raw)} bytes, {raw.count(0)} NULs): {raw[:300]!r} ... {raw[-300:]!r}") from None


def same_guest_goes_on(live: Live, up_before: float) -> None:
    """Heartbeats come after a move, with the guest's token (drawn at boot, kept in RAM only)
    and an uptime that went on from ``up_before``: the guest kept its memory, never rebooted.

    The VM directory is shared, and so is ``serial.log``: when the target's qemu starts,
    its virtlogd deletes the file and makes a new one, so the source's output from then
    until the switch goes to the deleted file, and the log holds the target's output only."""
    after = live.hearts_after(len(heartbeats(live.serial)) + 2)
    assert {token for _, token in after} == {live.token}, after
    uptimes = [up for up, _ in after]
    assert uptimes == sorted(uptimes) and uptimes[-1] > up_before + 1, (up_before, after)


class PowerWatch(threading.Thread):
    """Reads both libvirtds every 50 ms (source, target, source again): the guest must never
    run on the target while it still runs on the source. Keeps the changes it saw."""

    def __init__(self, live: Live, source: str, target: str) -> None:
        super().__init__(daemon=True, name="power-watch")
        self.live, self.source, self.target = live, source, target
        self.drivers = {n: LibvirtCompute(live.daemons[n].uri) for n in (source, target)}
        self.halt = threading.Event()
        self.seen: list[tuple[float, str, str, str]] = []  # (time, source power, target power, qemu pids)
        self.both: list[str] = []
        self.error: BaseException | None = None
        self.started_at = time.monotonic()

    def power(self, node: str) -> str:
        try:
            seen = self.drivers[node].domains().get(self.live.vm_id)
        except ComputeError as exc:
            return f"? ({exc})"[:60]
        return seen.power if seen is not None else "-"

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                before, there, after = self.power(self.source), self.power(self.target), self.power(self.source)
                now = time.monotonic() - self.started_at
                pids = ",".join(map(str, qemus_of(self.live.vm_id)))
                try:  # which file the shared serial.log is, and whether a guest writes into it
                    pids += f"  serial.log: inode {self.live.serial.stat().st_ino}, {len(heartbeats(self.live.serial))} heartbeats"
                except OSError:
                    pids += "  no serial.log"
                if before == there == after == "running":
                    self.both.append(f"{now:.2f} s: running on both {self.source} and {self.target}")
                if not self.seen or self.seen[-1][1:] != (after, there, pids):
                    self.seen.append((now, after, there, pids))
                self.halt.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self) -> str:
        self.halt.set()
        self.join(10)
        for driver in self.drivers.values():
            driver._drop()  # close its libvirt connection
        return "\n".join(f"  {t:6.2f} s  {self.source}: {s:9} {self.target}: {g:9} qemus: {p}" for t, s, g, p in self.seen)


@pytest.fixture(scope="module")
def live(guest: Path) -> Iterator[Live]:
    reason = libvirtd_missing()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="cdml", dir="/tmp"))
    shared = root / "shared-vms"
    shared.mkdir()
    daemons: dict[str, PrivateLibvirtd] = {}
    cluster = LiveCluster(root, shared, daemons)
    guards: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (vnc, ports) in LIVE_DAEMONS.items():
            (root / f"{name}-libvirtd").mkdir()
            daemons[name] = PrivateLibvirtd(vnc, log_dir=root / f"{name}-libvirtd", migration_ports=ports).start()
        cluster.init(3)
        for name in daemons:
            guards[name] = start_guard(cluster.nodes[name])
        with cluster.api("node1") as admin:
            assert admin.patch("/api/v1/cluster/settings", json={"shared_vm_storage": True}).status_code == 200
            admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "test-guest", "path": str(guest), "format": "kernel", "size_gb": 1}).raise_for_status()
            wait_for(lambda: all((n.get("compute") or {}).get("live_migration") for n in admin.get("/api/v1/nodes").json()["items"] if n["name"] in daemons), 30, what="both hypervisors live-capable")
            created = admin.post("/api/v1/vms", json={"name": "mover", "flavor": "tiny", "image": "test-guest", "nodes": sorted(daemons)})
            assert created.status_code == 202, created.text
            vm_id = created.json()["id"]
            serial = shared / vm_id / "serial.log"
            wait_for(lambda: admin.get(f"/api/v1/vms/{vm_id}").json()["state"] == "running", 90, what="the VM running")
            first = wait_for(lambda: heartbeats(serial), 120, interval=0.3, what="the guest's first heartbeat")
        yield Live(cluster, daemons, vm_id, first[0][1], serial, guards)
    finally:
        try:
            for proc in guards.values():
                stop_guard(proc)
            cluster.close()
        finally:
            for daemon in daemons.values():
                daemon.stop()  # destroys its guests, ends its qemus by their pid files
            for node in cluster.nodes.values():
                print(tail(node))
            shutil.rmtree(root, ignore_errors=True)


def test_live_migration_moves_the_running_guest_with_its_memory(live: Live) -> None:
    source, target = live.placement()
    before = live.hearts_after(3)
    first_qemu = live.daemons[source].qemu_pid(live.domain)
    assert first_qemu is not None and qemus_of(live.vm_id) == [first_qemu]
    watch = PowerWatch(live, source, target)
    watch.start()
    try:
        asked = time.monotonic()
        with live.api() as admin:
            reply = admin.post(f"/api/v1/vms/{live.vm_id}/migrate", json={"node": target, "mode": "live"})
        assert reply.status_code == 202, reply.text
        assert reply.json()["migration"]["mode"] == "live"
        task_id = reply.json()["task"]["id"]
        done = wait_for(lambda: (t := live.task(task_id))["state"] != "running" and t, 120, interval=0.1, what="the live migration's end")
        took = time.monotonic() - asked
    finally:
        timeline = watch.stop()
    print(f"\nlive {source} -> {target}: task {done['state']} after {took:.1f} s: {done['message']}\n{timeline}")
    assert watch.error is None and watch.both == [], watch.both or watch.error
    assert done["state"] == "succeeded" and "downtime" in done["message"], done
    vm = live.vm()
    assert vm["node"] == target and vm["migrated"] == {**vm["migrated"], "from": source, "to": target, "mode": "live"}
    assert live.defined()[source] == [] and live.defined()[target] == [live.domain]
    assert live.state_on(target) == "running"
    assert "Persistent:     yes" in live.daemons[target].virsh("dominfo", live.domain).stdout
    second_qemu = live.daemons[target].qemu_pid(live.domain)
    assert second_qemu is not None and not alive(first_qemu) and qemus_of(live.vm_id) == [second_qemu]

    # the same guest goes on: heartbeats after the move, its token (drawn at boot, kept in RAM
    # only), its uptime still growing
    same_guest_goes_on(live, before[-1][0])


@pytest.mark.parametrize("victim", ["source", "leader"])
def test_a_cloudd_killed_mid_migration_leaves_the_guest_running_exactly_once(live: Live, victim: str) -> None:
    """SIGKILL the cloudd of the migration's source (its libvirtd and qemu live on), or the
    cluster's leader, while a slow live migration moves the guest's memory; start it again."""
    source, target = live.placement()
    leader = live.cluster.wait_leader()
    killed = source if victim == "source" else leader
    role = "source" if killed == source else "target" if killed == target else "a node outside the migration"
    first_qemu = live.daemons[source].qemu_pid(live.domain)
    assert first_qemu is not None and qemus_of(live.vm_id) == [first_qemu]
    up_before = live.hearts_after(1)[-1][0]
    watch = PowerWatch(live, source, target)
    watch.start()
    events: list[str] = []
    try:
        asked = time.monotonic()
        with live.api(avoid=killed) as admin:
            reply = admin.post(f"/api/v1/vms/{live.vm_id}/migrate", json={"node": target, "mode": "live", "bandwidth_mib_s": 1})
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["task"]["id"]
        moving = wait_for(lambda: moved_mib(t := live.task(task_id, avoid=killed)) and t, 60, interval=0.1, what="the task's progress")
        events.append(f"{time.monotonic() - asked:6.2f} s  task: {moving['progress']}% {moving['message']}")
        assert "Unbounded" in live.daemons[source].virsh("domjobinfo", live.domain).stdout, "no migration job runs on the source"

        live.cluster.kill9(killed)
        killed_at = time.monotonic()
        events.append(f"{killed_at - asked:6.2f} s  kill -9 of {killed}'s cloudd ({role}; the leader was {leader})")
        assert alive(first_qemu), "the guest died with its node's cloudd"
        time.sleep(1.0)
        live.cluster.start(killed)
        live.cluster.wait_healthy(killed, timeout=60)
        events.append(f"{time.monotonic() - asked:6.2f} s  {killed} answers again")
        # the migration goes on under the cluster's eyes: progress reported after the restart
        # (by the source's new process, or to the new leader)
        going = wait_for(lambda: moved_mib(t := live.task(task_id)) > moved_mib(moving) and t, 60, interval=0.2, what="progress after the restart")
        events.append(f"{time.monotonic() - asked:6.2f} s  task: {going['progress']}% {going['message']}")
        # the rest at full speed (the slow part was for the kill)
        live.daemons[source].virsh("migrate-setspeed", live.domain, "--bandwidth", "8192", check=False)
        done = wait_for(lambda: (t := live.task(task_id))["state"] != "running" and t, 240, interval=0.2, what="the migration's end")
        events.append(f"{time.monotonic() - asked:6.2f} s  task {done['state']}: {done['message']}")
        settled = wait_for(lambda: (v := live.vm())["state"] == "running" and not v.get("migration") and not v.get("leftovers") and v, 60, what="the VM settled")
        events.append(f"{time.monotonic() - asked:6.2f} s  VM running on {settled['node']}, no leftovers")
    finally:
        timeline = watch.stop()
        print(f"\nkilled the {victim} ({killed}) during a live migration {source} -> {target}:\n" + "\n".join(events) + f"\nlibvirt, seen from the test:\n{timeline}")
    assert watch.error is None and watch.both == [], watch.both or watch.error
    home = settled["node"]
    assert (done["state"], home) in (("succeeded", target), ("failed", source)), (done, home)

    # exactly once: one domain in both libvirtds together, running where the API says, one qemu
    time.sleep(3.0)  # a few passes of every agent (the restarted one included)
    assert live.defined() == {n: ([live.domain] if n == home else []) for n in live.daemons}
    assert live.state_on(home) == "running"
    qemu = live.daemons[home].qemu_pid(live.domain)
    assert qemu is not None and qemus_of(live.vm_id) == [qemu]
    assert (qemu == first_qemu) == (home == source)
    live.cluster.wait_leader()  # every node agrees on one
    for name in live.cluster.nodes:
        with live.cluster.api(name) as client:
            assert client.get(f"/api/v1/vms/{live.vm_id}").json()["node"] == home, name

    # the same guest, never rebooted, whichever node runs it
    same_guest_goes_on(live, up_before)


def test_a_source_lost_mid_migration_is_fenced_and_its_vm_recovered_on_the_target_only(live: Live) -> None:
    """The source's cloudd dies for good while the guest's memory moves: its fence guard
    destroys the guest there (the migration breaks off), the leader recovers the VM on the
    migration's target only, and the source, back later, starts nothing and keeps nothing."""
    source, target = live.placement()
    node = live.cluster.nodes[source]
    wait_for(lambda: "armed" in text(node.data_dir / "guard.log"), 20, what=f"{source}'s fence guard armed")
    fenced_before = len(fence_records(node))
    first_qemu = live.daemons[source].qemu_pid(live.domain)
    assert first_qemu is not None and qemus_of(live.vm_id) == [first_qemu]
    watch = PowerWatch(live, source, target)
    watch.start()
    events: list[str] = []
    try:
        asked = time.monotonic()
        with live.api(avoid=source) as admin:
            reply = admin.post(f"/api/v1/vms/{live.vm_id}/migrate", json={"node": target, "mode": "live", "bandwidth_mib_s": 1})
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["task"]["id"]
        moving = wait_for(lambda: moved_mib(t := live.task(task_id, avoid=source)) and t, 60, interval=0.1, what="the task's progress")
        events.append(f"{time.monotonic() - asked:6.2f} s  task: {moving['progress']}% {moving['message']}")
        live.cluster.kill9(source)
        killed_wall = time.time()
        events.append(f"{time.monotonic() - asked:6.2f} s  kill -9 of {source}'s cloudd, not started again")
        assert alive(first_qemu)

        (record,) = wait_for(lambda: fence_records(node)[fenced_before:], 40, interval=0.1, what=f"{source}'s guard fencing")
        events.append(f"{time.monotonic() - asked:6.2f} s  {source}'s guard fenced ({record['time'] - killed_wall:.1f} s after the kill): {record['destroyed']}")
        assert any(d["domain"] == live.domain for d in record["destroyed"]), record
        wait_for(lambda: not alive(first_qemu), 10, interval=0.05, what="the source's qemu gone")
        done = wait_for(lambda: (t := live.task(task_id, avoid=source))["state"] != "running" and t, 60, interval=0.2, what="the migration's end")
        events.append(f"{time.monotonic() - asked:6.2f} s  task {done['state']}: {done['message']}")
        vm = wait_for(lambda: (v := live.vm(via=source))["state"] == "running" and v, 90, interval=0.2, what="the VM running again")
        events.append(f"{time.monotonic() - asked:6.2f} s  VM {vm['state']} on {vm['node']}: {vm.get('recovered')}")
        new_qemu = live.daemons[target].qemu_pid(live.domain)
        assert new_qemu is not None and qemus_of(live.vm_id) == [new_qemu]

        # the source comes back: its stale (fenced, still defined) domain goes, nothing starts
        live.cluster.start(source)
        live.cluster.wait_healthy(source, timeout=60)
        wait_for(lambda: live.defined()[source] == [], 30, what=f"{source}'s stale definition removed")
        events.append(f"{time.monotonic() - asked:6.2f} s  {source} back, its stale domain removed")
        time.sleep(3.0)
    finally:
        timeline = watch.stop()
        print(f"\nthe source {source} lost during a live migration to {target}:\n" + "\n".join(events) + f"\nlibvirt, seen from the test:\n{timeline}")
    assert watch.error is None and watch.both == [], watch.both or watch.error
    assert vm["node"] == target and vm["recovered"]["from"] == source and vm["recovered"]["to"] == target
    assert vm["recovered"]["at"] > record["time"], "recovered before the source was fenced"
    assert done["state"] == "failed" and "lost during the migration" in done["message"], done
    assert live.defined() == {source: [], target: [live.domain]} and live.state_on(target) == "running"
    assert qemus_of(live.vm_id) == [new_qemu]
    with live.api() as client:
        assert client.get(f"/api/v1/vms/{live.vm_id}").json()["node"] == target
    # the memory died with the source: the guest booted again on the target (a new token)
    wait_for(lambda: BOOTED in text(live.serial) and heartbeats(live.serial), 120, interval=0.3, what="the guest booted on the target")
    live.token = heartbeats(live.serial)[-1][1]
