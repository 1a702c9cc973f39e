"""A real ``cloudd fence-guard`` process destroying real qemu guests (TCG) once its feeds stop.

Two ways cloudd can fail while its qemu processes live on:
- cloudd crashed (kill -9): its embedded libvirt root is free, the guard destroys the
  guest through libvirt;
- cloudd hangs: it still holds the embedded root (here: this test process, through the
  shared ``embedded`` fixture), libvirt is refused, the guard SIGKILLs the qemu named in
  the domain's pid file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from cloudd.config import ComputeSettings, NodeConfig, Timings
from cloudd.fence_guard import FenceFeeder
from cloudd.ops.compute import DomainSpec
from cloudd.ops.libvirt_compute import LibvirtCompute
from tests.e2e.guest_helpers import serial, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLOUDD = ROOT / ".venv" / "bin" / "cloudd"
MARKER = "CLOUDD-GUEST-BOOTED"
CONFIG_FENCE_AFTER = 2.0  # node.json's timings.fence_after: the guard's default until fed
FENCE_AFTER = 3.0  # what the feeds say
LATE_S = 2.0  # the guest must be gone this soon after the deadline

# "cloudd" of the crash scenario: boots a guest through its own embedded libvirt, then waits to be killed
BOOT = """
import sys, time
from cloudd.ops.compute import DomainSpec
from cloudd.ops.libvirt_compute import LibvirtCompute
root, guest, log = sys.argv[1:4]
drv = LibvirtCompute(f"qemu:///embed?root={root}", vnc_range=(6980, 6999))
drv.define(DomainSpec("fg1", "guest", 1, 128, (), domain_type="qemu", serial_log=log,
                      kernel=f"{guest}/vmlinuz", initrd=f"{guest}/initrd.img", cmdline="console=ttyS0"))
drv.start("fg1")
print("started", flush=True)
time.sleep(600)
"""

# lists the embedded root's domains: proves the guard left the root free for cloudd
LIST = """
import sys, libvirt
from cloudd.ops.libvirt_compute import ensure_event_loop
ensure_event_loop()
conn = libvirt.open(f"qemu:///embed?root={sys.argv[1]}")
print(" ".join(f"{d.name()}={d.isActive()}" for d in conn.listAllDomains()))
"""


def process_state(pid: int) -> str:
    """``/proc/<pid>/stat``'s state letter; "" when the process is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""


def alive(pid: int) -> bool:
    return process_state(pid) not in ("", "Z", "X")  # a zombie is dead, only not yet reaped by PID 1


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def node_dir(tmp_path: Path, libvirt_root: Path) -> Path:
    data = tmp_path / "node"
    data.mkdir(mode=0o700)
    NodeConfig(
        name="n1", cluster_id="c1", api_addr="127.0.0.1:1", raft_addr=None, membership="voter", peers=[],
        timings=Timings(fence_after=CONFIG_FENCE_AFTER),
        compute=ComputeSettings(uri=f"qemu:///embed?root={libvirt_root}", domain_type="qemu"),
        data_dir=str(data),
    ).save()
    return data


@contextmanager
def fence_guard(data: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = data / "guard.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(CLOUDD), "fence-guard", "--data-dir", str(data)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (data / "fence.sock").exists() or proc.poll() is not None, 20, "the guard's socket")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sys.stderr.write(log.read_text())  # shown by pytest when the test fails


def feed_for(feeder: FenceFeeder, seconds: float, pids: list[int]) -> float:
    """Feed every 0.5 s for ``seconds`` while checking the guests stay up; the last feed's time."""
    end = time.monotonic() + seconds
    while True:
        assert feeder.feed(FENCE_AFTER)
        last = time.monotonic()
        if last >= end:
            return last
        time.sleep(0.5)
        assert all(alive(pid) for pid in pids), "fenced while fed"


def killed_within(pid: int, last_feed: float) -> float:
    """Watch ``pid`` after the last feed: alive until the deadline, dead soon after.
    Returns how long after the deadline it died."""
    deadline = last_feed + FENCE_AFTER
    while time.monotonic() < deadline - 0.2:
        assert alive(pid), f"killed {deadline - time.monotonic():.2f} s before the deadline"
        time.sleep(0.05)
    while time.monotonic() < deadline + LATE_S:
        if not alive(pid):
            return time.monotonic() - deadline
        time.sleep(0.05)
    raise AssertionError(f"qemu {pid} still {process_state(pid)!r} {LATE_S} s after the deadline")


def fence_records(data: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in (data / "fence.log").read_bytes().splitlines()]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A libvirt root with a short path (qemu's monitor socket path must fit AF_UNIX)."""
    path = Path(tempfile.mkdtemp(prefix="fg", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_crashed_cloudd_s_guest_is_destroyed_through_libvirt(tmp_path: Path, short_dir: Path, guest: Path) -> None:
    root, serial_log, booter_log = short_dir, tmp_path / "fg1.serial.log", tmp_path / "booter.log"
    with booter_log.open("wb") as err:
        booter = subprocess.Popen([sys.executable, "-c", BOOT, str(root), str(guest), str(serial_log)], stdout=subprocess.DEVNULL, stderr=err)
    qemu_pid = 0
    try:
        wait_for(lambda: MARKER in serial(serial_log) or booter.poll() is not None, 90, "the guest's boot marker")
        assert booter.poll() is None, booter_log.read_text()[-2000:]
        qemu_pid = int((root / "run" / "qemu" / "cloudd-fg1.pid").read_text())
        booter.kill()  # cloudd crashes; its qemu lives on
        booter.wait()
        assert alive(qemu_pid)
        data = node_dir(tmp_path, root)
        with fence_guard(data):
            time.sleep(CONFIG_FENCE_AFTER + 1.5)
            assert alive(qemu_pid), "an unarmed guard (never fed) fenced"
            feeder = FenceFeeder(data / "fence.sock")
            last_feed = feed_for(feeder, FENCE_AFTER + 1.0, [qemu_pid])  # longer than the config's 2 s: the feed's 3 s counts
            late = killed_within(qemu_pid, last_feed)
            feeder.close()
            wait_for(lambda: (data / "fence.log").exists(), 10, "the fence record")  # libvirt waits for the zombie's reaping
            (record,) = fence_records(data)
        print(f"destroyed {late:.2f} s after the deadline: {record}")
        assert record["destroyed"] == [{"domain": "cloudd-fg1", "how": "libvirt"}] and record["errors"] == []
        assert record["fence_after"] == FENCE_AFTER and FENCE_AFTER <= record["silent_s"] < FENCE_AFTER + 1  # type: ignore[operator]
        # the guard did not keep the embedded root: a restarted cloudd can open it
        listed = subprocess.run([sys.executable, "-c", LIST, str(root)], check=False, capture_output=True, text=True, timeout=60)
        assert listed.stdout.split() == ["cloudd-fg1=0"], listed.stderr[-500:]
    finally:
        kill_pid(booter.pid)
        booter.wait()
        if qemu_pid:
            kill_pid(qemu_pid)


def test_a_hung_cloudd_s_guest_is_killed_through_its_pid_file(tmp_path: Path, embedded: tuple[LibvirtCompute, Path], guest: Path) -> None:
    drv, root = embedded  # this process holds the root, as a hung cloudd would
    serial_log = root / "fgp1.serial.log"
    drv.define(DomainSpec("fgp1", "guest", 1, 128, (), domain_type="qemu", serial_log=str(serial_log), kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"), cmdline="console=ttyS0"))
    qemu_pid = 0
    try:
        drv.start("fgp1")
        qemu_pid = int((root / "run" / "qemu" / "cloudd-fgp1.pid").read_text())
        wait_for(lambda: MARKER in serial(serial_log), 90, "the guest's boot marker")
        data = node_dir(tmp_path, root)
        with fence_guard(data):
            feeder = FenceFeeder(data / "fence.sock")
            last_feed = feed_for(feeder, 1.0, [qemu_pid])
            late = killed_within(qemu_pid, last_feed)
            feeder.close()
            wait_for(lambda: (data / "fence.log").exists(), 10, "the fence record")  # libvirt waits for the zombie's reaping
            (record,) = fence_records(data)
        print(f"killed {late:.2f} s after the deadline: {record}")
        assert record["destroyed"] == [{"domain": "cloudd-fgp1", "how": "sigkill", "pid": qemu_pid}]
        assert any("driver.pid" in error for error in record["errors"])  # type: ignore[attr-defined]
        wait_for(lambda: drv.domains()["fgp1"].power == "shut_off", 30, "libvirt to see the guest gone")
    finally:
        if qemu_pid:
            kill_pid(qemu_pid)
        drv.undefine("fgp1")
