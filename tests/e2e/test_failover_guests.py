"""Failover with real qemu guests: three ``cloudd serve`` nodes, each with its own embedded
libvirt (qemu TCG) and its own fence guard process, the VMs' disks in one directory all
nodes share (as NFS would be).

``kill -9`` the cloudd of an HA VM's node: its qemu lives on, nobody feeds its guard. The
guard must destroy that qemu before the leader's pick starts the VM again, and the two
qemu lifetimes must never overlap: every qemu of the VM is watched from this process
(its start time read from ``/proc/<pid>/stat``, its death seen by polling every 20 ms).
Then the dead node's cloudd comes back and must not start the VM again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.cluster.harness import CLOUDD, LocalCluster, Node, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKER = "CLOUDD-GUEST-BOOTED"
FIRST_HOST = 175  # 127.0.0.175-177: no other test uses them
VNC_BASE = 7200  # node i: 7200 + 10 (i-1) .. + 9: every embedded libvirt its own VNC range
CLK_TCK = os.sysconf("SC_CLK_TCK")


def boottime() -> float:
    """The clock ``/proc/<pid>/stat`` start times count on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def wall_offset() -> float:
    """Add to a boottime to get wall time (time.time())."""
    return time.time() - boottime()


def proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, start time on the boottime clock), None once the pid is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[19]) / CLK_TCK


def qemu_cmdline(pid: int, vm_id: str) -> str | None:
    """The cmdline of ``pid`` when it is a qemu of this VM's domain, else None."""
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    argv = raw.rstrip(b"\0").split(b"\0")
    if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system") or f"guest=cloudd-{vm_id}".encode() not in raw:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


@dataclass
class Qemu:
    pid: int
    node: str
    start: float  # boottime clock, from /proc (10 ms resolution, rounded down)
    cmdline: str
    last_alive: float
    dead_seen: float | None = None  # first poll that found it gone (or a zombie)


class QemuWatch(threading.Thread):
    """Every qemu of one VM on any node, its start and (an upper bound of) its death.

    Polls each node's libvirt pid file every 20 ms and, as a backstop, scans /proc for
    ``qemu-system*`` processes of the domain every 0.5 s."""

    def __init__(self, vm_id: str, roots: dict[str, Path]) -> None:
        super().__init__(daemon=True, name="qemu-watch")
        self.vm_id = vm_id
        self.roots = roots  # node -> its embedded libvirt root
        self.qemus: dict[int, Qemu] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def node_of(self, cmdline: str) -> str:
        for node, root in self.roots.items():
            if f"{root}/" in cmdline:
                return node
        return "?"

    def _track(self, pid: int, now: float) -> None:
        if pid in self.qemus:
            return
        stat = proc_stat(pid)
        cmdline = qemu_cmdline(pid, self.vm_id)
        if stat is None or cmdline is None or stat[0] in ("Z", "X"):
            return
        self.qemus[pid] = Qemu(pid, self.node_of(cmdline), stat[1], cmdline, last_alive=now)

    def poll(self, scan: bool) -> None:
        now = boottime()
        with self.lock:
            for root in self.roots.values():
                try:
                    self._track(int((root / "run" / "qemu" / f"cloudd-{self.vm_id}.pid").read_text().strip()), now)
                except (OSError, ValueError):
                    pass
            if scan:
                for entry in os.scandir("/proc"):
                    if entry.name.isdigit() and int(entry.name) not in self.qemus:
                        try:
                            comm = Path(entry.path, "comm").read_text()
                        except OSError:
                            continue
                        if comm.startswith("qemu-system"):
                            self._track(int(entry.name), now)
            for qemu in self.qemus.values():
                if qemu.dead_seen is not None:
                    continue  # a recycled pid must not bring it back
                stat = proc_stat(qemu.pid)
                if stat is None or stat[0] in ("Z", "X") or stat[1] != qemu.start:
                    qemu.dead_seen = now
                else:
                    qemu.last_alive = now

    def run(self) -> None:
        try:
            last_scan = 0.0
            while not self.halt.is_set():
                scan = time.monotonic() - last_scan >= 0.5
                self.poll(scan)
                if scan:
                    last_scan = time.monotonic()
                self.halt.wait(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not by pytest's thread hook
            self.error = exc

    def snapshot(self) -> list[Qemu]:
        with self.lock:
            return sorted((Qemu(**vars(q)) for q in self.qemus.values()), key=lambda q: q.start)

    def alive_on(self, node: str) -> list[Qemu]:
        return [q for q in self.snapshot() if q.node == node and q.dead_seen is None]

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class GuestCluster(LocalCluster):
    """LocalCluster whose nodes put VM disks in one shared directory and use their own VNC range."""

    def __init__(self, root: Path, vm_dir: Path) -> None:
        super().__init__(root, first_host=FIRST_HOST, compute=["--compute-uri", "embedded"])
        self.vm_dir = vm_dir
        self.vm_ids: list[str] = []  # the VMs whose qemu processes the teardown ends

    def _set_timings(self, node: Node) -> None:
        super()._set_timings(node)
        path = node.data_dir / "node.json"
        data = orjson.loads(path.read_bytes())
        index = int(node.name.removeprefix("node")) - 1
        data["compute"].update(vm_dir=str(self.vm_dir), vnc_port_min=VNC_BASE + 10 * index, vnc_port_max=VNC_BASE + 10 * index + 9)
        path.write_bytes(orjson.dumps(data))

    def libvirt_root(self, name: str) -> Path:
        return self.nodes[name].data_dir / "libvirt"


def start_guard(node: Node) -> subprocess.Popen[bytes]:
    with (node.data_dir / "guard.log").open("ab") as out:
        proc = subprocess.Popen(
            [CLOUDD, "fence-guard", "--data-dir", str(node.data_dir)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    wait_for(lambda: (node.data_dir / "fence.sock").exists() or proc.poll() is not None, 20, what=f"{node.name}'s fence guard socket")
    assert proc.poll() is None, (node.data_dir / "guard.log").read_text()
    return proc


def stop_guard(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_qemus(cluster: GuestCluster, vm_ids: list[str]) -> None:
    """Guests of an embedded libvirt outlive their cloudd: end the ones this test started
    (by the nodes' pid files, and any qemu of these VMs still found in /proc)."""
    pids: set[int] = set()
    for name in cluster.nodes:
        for pid_file in (cluster.libvirt_root(name) / "run" / "qemu").glob("cloudd-*.pid"):
            try:
                pids.add(int(pid_file.read_text()))
            except (OSError, ValueError):
                pass
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and any(qemu_cmdline(int(entry.name), vm_id) for vm_id in vm_ids):
            pids.add(int(entry.name))
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"qemu-system" in cmdline.split(b"\0")[0] and any(str(cluster.libvirt_root(n)).encode() in cmdline or str(cluster.vm_dir).encode() in cmdline for n in cluster.nodes):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def fence_records(node: Node) -> list[dict[str, Any]]:
    path = node.data_dir / "fence.log"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def serial_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def guest_cluster(guest: Path) -> Iterator[tuple[GuestCluster, dict[str, subprocess.Popen[bytes]]]]:
    # a short root: qemu's monitor socket path under <root>/nodeN/libvirt must fit AF_UNIX
    root = Path(tempfile.mkdtemp(prefix="cdfo", dir="/tmp"))
    shared = root / "shared-vms"
    shared.mkdir()
    cluster = GuestCluster(root, shared)
    guards: dict[str, subprocess.Popen[bytes]] = {}
    try:
        cluster.init(3)
        for name, node in cluster.nodes.items():
            guards[name] = start_guard(node)
        with cluster.api("node1") as admin:
            assert admin.patch("/api/v1/cluster/settings", json={"shared_vm_storage": True}).status_code == 200
            admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
            admin.post("/api/v1/images", json={"name": "tiny-disk", "path": str(guest / "disk.qcow2"), "format": "qcow2", "size_gb": 0.0625}).raise_for_status()
        yield cluster, guards
    finally:
        try:
            for proc in guards.values():
                stop_guard(proc)
            cluster.close()
        finally:
            kill_qemus(cluster, cluster.vm_ids)
            for name, node in cluster.nodes.items():  # shown by pytest when the test fails
                print(f"----- {name} fence guard -----\n{serial_text(node.data_dir / 'guard.log')[-3000:]}")
            shutil.rmtree(root, ignore_errors=True)


def test_the_fence_guard_destroys_a_crashed_nodes_guest_before_it_runs_elsewhere(guest_cluster: tuple[GuestCluster, dict[str, subprocess.Popen[bytes]]]) -> None:
    cluster, guards = guest_cluster
    admin = cluster.api("node1")
    created = admin.post("/api/v1/vms", json={"name": "hav", "flavor": "tiny", "image": "tiny-disk", "ha": True})
    assert created.status_code == 202, created.text
    vm_id = created.json()["id"]
    cluster.vm_ids.append(vm_id)
    watch = QemuWatch(vm_id, {name: cluster.libvirt_root(name) for name in cluster.nodes})
    watch.start()
    try:
        run_scenario(cluster, guards, admin, vm_id, watch)
    finally:
        watch.stop()
        for q in watch.snapshot():
            print(f"qemu {q.pid} on {q.node}: start {q.start:.3f} last alive {q.last_alive:.3f} dead seen {q.dead_seen}")


def run_scenario(cluster: GuestCluster, guards: dict[str, subprocess.Popen[bytes]], admin: Any, vm_id: str, watch: QemuWatch) -> None:
    def vm() -> dict[str, Any]:
        return dict(survivor_api.get(f"/api/v1/vms/{vm_id}").json())

    survivor_api = admin
    serial = cluster.vm_dir / vm_id / "serial.log"
    disk = cluster.vm_dir / vm_id / "disk.qcow2"
    wait_for(lambda: vm()["state"] == "running", 90, what="the HA VM running")
    wait_for(lambda: MARKER in serial_text(serial), 120, interval=0.3, what="the guest's boot marker")
    victim = vm()["node"]
    (first,) = wait_for(lambda: watch.alive_on(victim), 10, what=f"the VM's qemu on {victim}")
    assert f"{disk} " in first.cmdline or f'"{disk}"' in first.cmdline, first.cmdline
    disk_inode = disk.stat().st_ino
    first_boot = serial_text(serial)
    victim_dir = cluster.nodes[victim].data_dir
    wait_for(lambda: "armed" in serial_text(victim_dir / "guard.log"), 20, what=f"{victim}'s guard armed by cloudd's feeds")
    others = [n for n in cluster.nodes if n != victim]
    survivor_api = cluster.api(others[0])
    assert fence_records(cluster.nodes[victim]) == []

    cluster.kill9(victim)  # cloudd dies; its qemu and its fence guard live on
    killed_b, offset = boottime(), wall_offset()
    killed_wall = killed_b + offset
    assert guards[victim].poll() is None, "the victim's fence guard died with cloudd"
    assert watch.alive_on(victim), "the qemu died with cloudd"

    # the guard fences
    (record,) = wait_for(lambda: fence_records(cluster.nodes[victim]), 30, interval=0.05, what=f"{victim}'s fence.log record")
    fence_log_mtime = (victim_dir / "fence.log").stat().st_mtime
    assert {"domain": f"cloudd-{vm_id}", "how": "libvirt"} in record["destroyed"] or any(
        d["domain"] == f"cloudd-{vm_id}" and d["how"] == "sigkill" for d in record["destroyed"]), record
    dead = wait_for(lambda: next((q for q in watch.snapshot() if q.pid == first.pid and q.dead_seen is not None), None), 10, interval=0.05, what=f"qemu {first.pid} gone")
    assert dead.dead_seen is not None

    # the VM runs elsewhere, from the same disk file
    moved = wait_for(lambda: (v := vm())["node"] != victim and v["state"] == "running" and v, 90, interval=0.1, what="the VM running on another node")
    running_b = boottime()
    target = moved["node"]
    assert target in others and moved["recovered"]["from"] == victim and moved["recovered"]["to"] == target
    (second,) = wait_for(lambda: watch.alive_on(target), 10, what=f"the VM's qemu on {target}")
    assert f"{disk} " in second.cmdline or f'"{disk}"' in second.cmdline, second.cmdline
    assert disk.stat().st_ino == disk_inode, "the disk file was made anew"

    # the two lifetimes never overlap: the old qemu was seen dead before the new one began
    timeline = (
        f"kill at 0; guard fenced (fence.log time) at {record['time'] - killed_wall:+.2f} s, fence.log written at {fence_log_mtime - killed_wall:+.2f} s; "
        f"old qemu {first.pid} last seen alive at {dead.last_alive - killed_b:+.2f} s, seen dead at {dead.dead_seen - killed_b:+.2f} s; "
        f"new qemu {second.pid} on {target} started at {second.start - killed_b:+.2f} s; API running at {running_b - killed_b:+.2f} s; "
        f"recovered.at {moved['recovered']['at'] - killed_wall:+.2f} s"
    )
    print(timeline)
    assert second.start > dead.last_alive, f"the two qemus OVERLAPPED: {timeline}"
    assert second.start >= dead.dead_seen, f"the new qemu started before the old one was seen gone: {timeline}"
    assert record["time"] < second.start + offset, f"the new qemu started before the guard fenced: {timeline}"
    assert record["time"] - killed_wall >= cluster.timings["fence_after"] - cluster.timings["heartbeat_interval"] - 0.5, f"the guard fenced too early: {timeline}"
    assert moved["recovered"]["at"] > record["time"], f"re-homed before the guard fenced: {timeline}"

    def booted_again() -> bool:  # libvirt truncates the serial log when it starts the new qemu
        text = serial_text(serial)
        return text.count(MARKER) >= 2 if text.startswith(first_boot) else MARKER in text

    wait_for(booted_again, 120, interval=0.3, what="the guest booting again on the new node")

    # the dead node's cloudd comes back: it removes its stale copy and never starts the VM
    cluster.start(victim)
    cluster.wait_healthy(victim, timeout=60)
    log_path = cluster.nodes[victim].log_path
    wait_for(lambda: f"VM {vm_id} runs on {target} now: removing the stale copy here" in log_path.read_text(errors="replace"), 60, what=f"{victim} removing its stale copy")
    wait_for(lambda: cluster.status(victim)["leader"] is not None, 30, what=f"{victim} back in the cluster")
    time.sleep(5.0)  # a few reconcile passes of the returned node
    qemus = watch.snapshot()
    assert [q for q in qemus if q.node == victim and q.pid != first.pid] == [], f"{victim} started the VM again: {qemus}"
    assert [q.pid for q in qemus] == [first.pid, second.pid], f"unexpected qemus of the VM: {qemus}"
    assert watch.alive_on(target) and watch.alive_on(target)[0].pid == second.pid, "the re-homed qemu was disturbed"
    final = vm()
    assert final["node"] == target and final["state"] == "running"
    assert watch.error is None, repr(watch.error)
