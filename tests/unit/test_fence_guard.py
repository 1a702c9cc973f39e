"""The fence guard: its decision on a fake clock, the pid-file killer on a fake /proc,
the feeder, and one loop iteration over a real socket with fake destroyers."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import orjson
import pytest

from cloudd.fence_guard import (
    FenceFeeder,
    FenceGuard,
    GuardState,
    LibvirtDestroyer,
    Outcome,
    PidFileKiller,
    bind_socket,
    is_qemu_of,
    parse_feed,
    qemu_run_dirs,
    run_in_child,
    sd_notify,
)

QEMU = "/usr/bin/qemu-system-x86_64"


def ticks(state: GuardState, start: float, end: float, step: float = 0.5) -> list[float]:
    """The times in [start, end) at which a tick said: fence."""
    fenced, now = [], start
    while now < end:
        if state.tick(now):
            fenced.append(now)
        now += step
    return fenced


def test_an_unarmed_guard_never_fences() -> None:
    assert ticks(GuardState(fence_after=10), 0, 1000) == []


def test_fed_in_time_it_never_fences() -> None:
    state = GuardState(fence_after=10)
    for now in range(0, 300, 9):
        assert not state.feed(now, 10)
        assert ticks(state, now, now + 9) == []


def test_when_the_feeds_stop_it_fences_exactly_once_after_fence_after() -> None:
    state = GuardState(fence_after=30)  # the config's default, until the first feed says 10
    state.feed(100.0, 10)
    assert state.wait_s(104.0) == 6.0
    assert not state.tick(109.99)
    assert state.tick(110.0)
    assert not state.armed and state.wait_s(111.0) is None
    assert ticks(state, 110.0, 1000.0) == []


def test_a_new_feed_rearms_it() -> None:
    state = GuardState(fence_after=10)
    state.feed(0.0, 10)
    assert ticks(state, 0, 20) == [10.0]
    state.feed(500.0, 5)
    assert ticks(state, 500, 520) == [505.0]


def test_a_feed_after_a_missed_tick_fences_and_rearms() -> None:
    state = GuardState(fence_after=10)
    state.feed(0.0, 10)
    assert state.feed(25.0, 10)  # silent for 25 s: fence, even though a feed is here now
    assert state.armed and not state.feed(30.0, 10)


@pytest.mark.parametrize("data", [b"", b"feed", b"feed ", b"feed -3", b"feed nan", b"feed inf", b"feed 1e3", b"FEED 10", b"feed 10 20", b"stop", b"feed 10\n\n", b"\xff\xfe", b"feed 1" * 50])
def test_malformed_datagrams_are_refused(data: bytes) -> None:
    assert parse_feed(data) is None


@pytest.mark.parametrize(("data", "seconds"), [(b"feed 10", 10.0), (b"feed 2.5\n", 2.5), (b"feed 0", 1.0), (b"feed 0.2", 1.0), (b"feed 86400", 600.0), (b"feed 600.000", 600.0)])
def test_feeds_are_read_and_clamped_to_1_to_600_s(data: bytes, seconds: float) -> None:
    assert parse_feed(data) == seconds


def test_the_configured_default_is_clamped_too() -> None:
    assert GuardState(fence_after=0).fence_after == 1.0
    assert GuardState(fence_after=5000).fence_after == 600.0
    state = GuardState(fence_after=10)
    state.feed(0.0, 9999)
    assert state.fence_after == 600.0


def test_the_feeder_says_false_without_a_guard(tmp_path: Path) -> None:
    feeder = FenceFeeder(tmp_path / "fence.sock")
    assert feeder.feed(10) is False
    (tmp_path / "fence.sock").write_text("not a socket")
    assert feeder.feed(10) is False
    assert FenceFeeder(tmp_path / ("x" * 200)).feed(10) is False  # too long for AF_UNIX
    assert feeder.feed(float("nan")) is False
    feeder.close()


def test_the_feeder_sends_one_datagram_to_a_listening_guard(tmp_path: Path) -> None:
    sock = bind_socket(tmp_path / "fence.sock")
    try:
        assert (tmp_path / "fence.sock").stat().st_mode & 0o777 == 0o600
        feeder = FenceFeeder(tmp_path / "fence.sock")
        assert feeder.feed(7.5) is True
        assert parse_feed(sock.recv(256)) == 7.5
        feeder.close()
    finally:
        sock.close()


def test_a_second_guard_refuses_to_take_the_socket_but_a_dead_ones_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "fence.sock"
    first = bind_socket(path)
    with pytest.raises(SystemExit, match="another fence guard"):
        bind_socket(path)
    first.close()  # the socket file stays behind, as after a crash
    bind_socket(path).close()


def fake_host(tmp_path: Path, processes: dict[int, bytes], pid_files: dict[str, str]) -> tuple[Path, Path]:
    proc, run = tmp_path / "proc", tmp_path / "run"
    for pid, cmdline in processes.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(cmdline)
    run.mkdir()
    for name, content in pid_files.items():
        (run / name).write_text(content)
    return proc, run


def qemu_cmdline(domain: str, binary: str = QEMU) -> bytes:
    return b"\0".join(a.encode() for a in (binary, "-name", f"guest={domain},debug-threads=on", "-S", "-machine", "pc")) + b"\0"


def test_the_pid_file_killer_kills_only_qemus_of_their_own_domain(tmp_path: Path) -> None:
    proc, run = fake_host(
        tmp_path,
        processes={
            101: qemu_cmdline("cloudd-a"),
            102: b"/bin/sleep\0" + b"1000\0",  # a recycled pid: not a qemu
            103: qemu_cmdline("cloudd-other"),  # a qemu, but another domain's
            104: b"",  # a zombie
            105: qemu_cmdline("cloudd-e", binary="/usr/libexec/qemu-kvm"),
            107: qemu_cmdline("cloudd-g"),
        },
        pid_files={
            "cloudd-a.pid": "101\n", "cloudd-b.pid": "102", "cloudd-c.pid": "103", "cloudd-d.pid": "104",
            "cloudd-e.pid": "105", "cloudd-f.pid": "106",  # 106: gone
            "cloudd-x.pid": "garbage", "other-g.pid": "107",  # not ours by name
        },
    )
    killed: list[tuple[int, int]] = []
    outcome = PidFileKiller([run, tmp_path / "missing"], proc=proc, kill=lambda pid, sig: killed.append((pid, sig)))()
    assert killed == [(101, signal.SIGKILL), (105, signal.SIGKILL)]
    assert outcome.destroyed == [{"domain": "cloudd-a", "how": "sigkill", "pid": 101}, {"domain": "cloudd-e", "how": "sigkill", "pid": 105}]
    assert len(outcome.errors) == 1 and "cloudd-x.pid" in outcome.errors[0]


def test_a_process_that_died_before_the_kill_is_no_error(tmp_path: Path) -> None:
    proc, run = fake_host(tmp_path, {101: qemu_cmdline("cloudd-a")}, {"cloudd-a.pid": "101"})

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError

    assert PidFileKiller([run], proc=proc, kill=gone)() == Outcome()


@pytest.mark.parametrize(
    ("cmdline", "ours"),
    [
        (qemu_cmdline("cloudd-a"), True),
        (b"qemu-system-aarch64\0-name\0cloudd-a\0", True),
        (qemu_cmdline("cloudd-ab"), False),
        (b"/usr/bin/qemu-system-x86_64\0-machine\0none\0", False),  # no -name
        (b"/usr/bin/python3\0qemu-system-x86_64\0-name\0guest=cloudd-a\0", False),
        (b"/tmp/evil-qemu-system-x86_64x\0-name\0guest=cloudd-a\0", False),
        (b"", False),
    ],
)
def test_is_qemu_of(cmdline: bytes, ours: bool) -> None:
    assert is_qemu_of(cmdline, "cloudd-a") is ours


def test_run_dirs_follow_the_compute_uri() -> None:
    assert qemu_run_dirs("qemu:///embed?root=/var/lib/cloudd/libvirt") == [Path("/var/lib/cloudd/libvirt/run/qemu")]
    assert qemu_run_dirs("qemu:///system") == [Path("/run/libvirt/qemu")]
    assert qemu_run_dirs("qemu+unix:///system?socket=/x/sock") == [Path("/run/libvirt/qemu")]
    assert qemu_run_dirs("test:///default") == []


def test_the_libvirt_destroyer_skips_hosts_where_nothing_runs(tmp_path: Path) -> None:
    def never(*_args: object) -> tuple[list[dict[str, object]], str | None]:
        raise AssertionError("no libvirt call expected")

    assert LibvirtDestroyer("test:///default", run=never)() == Outcome()
    assert LibvirtDestroyer(f"qemu:///embed?root={tmp_path / 'none'}", run=never)() == Outcome()


def test_the_libvirt_destroyer_reports_partial_work_and_a_timeout(tmp_path: Path) -> None:
    (tmp_path / "run" / "qemu").mkdir(parents=True)

    def hung(_work: object, timeout: float) -> tuple[list[dict[str, object]], str | None]:
        return [{"domain": "cloudd-a", "how": "libvirt"}, {"error": "cloudd-b: busy"}], f"timed out after {timeout:g} s"

    outcome = LibvirtDestroyer(f"qemu:///embed?root={tmp_path}", timeout=2, run=hung)()
    assert outcome.destroyed == [{"domain": "cloudd-a", "how": "libvirt"}]
    assert outcome.errors == ["libvirt: cloudd-b: busy", "libvirt: timed out after 2 s"]


def test_a_child_reports_what_it_did_and_a_hung_one_is_killed() -> None:
    def works(report):  # type: ignore[no-untyped-def]
        report({"domain": "cloudd-a", "how": "libvirt"})

    assert run_in_child(works, 10) == ([{"domain": "cloudd-a", "how": "libvirt"}], None)

    def fails(report):  # type: ignore[no-untyped-def]
        report({"domain": "cloudd-a", "how": "libvirt"})
        raise RuntimeError("no libvirt here")

    assert run_in_child(fails, 10) == ([{"domain": "cloudd-a", "how": "libvirt"}, {"error": "no libvirt here"}], None)

    def hangs(report):  # type: ignore[no-untyped-def]
        report({"domain": "cloudd-a", "how": "libvirt"})
        time.sleep(60)

    started = time.monotonic()
    assert run_in_child(hangs, 0.5) == ([{"domain": "cloudd-a", "how": "libvirt"}], "timed out after 0.5 s")
    assert time.monotonic() - started < 5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_guard_loop_feeds_ignores_junk_and_fences_once(tmp_path: Path) -> None:
    clock = Clock()
    calls: list[str] = []

    def libvirt_fails() -> Outcome:
        calls.append("libvirt")
        raise RuntimeError("boom")  # one destroyer failing must not stop the next

    def kills() -> Outcome:
        calls.append("pids")
        return Outcome(destroyed=[{"domain": "cloudd-a", "how": "sigkill", "pid": 101}])

    sock = bind_socket(tmp_path / "fence.sock")
    guard = FenceGuard(sock, GuardState(fence_after=10), [libvirt_fails, kills], tmp_path / "fence.log", clock=clock, wall=lambda: 1_700_000_000.0)
    feeder = FenceFeeder(tmp_path / "fence.sock")
    try:
        assert not guard.step(max_wait=0)
        assert not guard.state.armed
        clock.now += 100
        assert not guard.step(max_wait=0)  # never fed: never fences
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as junk:
            junk.sendto(b"kill everything", str(tmp_path / "fence.sock"))
        assert not guard.step(max_wait=0) and not guard.state.armed
        assert feeder.feed(3)
        assert not guard.step(max_wait=0) and guard.state.armed and guard.state.fence_after == 3
        clock.now += 2.9
        assert not guard.step(max_wait=0)
        clock.now += 0.1
        assert guard.step(max_wait=0)
        assert calls == ["libvirt", "pids"]
        clock.now += 100
        assert not guard.step(max_wait=0) and calls == ["libvirt", "pids"]
    finally:
        feeder.close()
        sock.close()
    (line,) = (tmp_path / "fence.log").read_bytes().splitlines()
    record = orjson.loads(line)
    assert record["time"] == 1_700_000_000.0 and record["at"] == "2023-11-14T22:13:20Z"
    assert record["silent_s"] == 3.0 and record["fence_after"] == 3
    assert record["destroyed"] == [{"domain": "cloudd-a", "how": "sigkill", "pid": 101}]
    assert record["errors"] == ["libvirt_fails: boom"]
    assert os.stat(tmp_path / "fence.log").st_mode & 0o777 == 0o600


def test_sd_notify_sends_ready_when_asked(tmp_path: Path) -> None:
    assert sd_notify("READY=1", environ={}) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert systemd.recv(64) == b"READY=1"
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
