"""The fence guard: destroys this node's VMs when cloudd stops feeding it.

A tiny process of its own (``cloudd fence-guard``, ``systemd/cloudd-fence-guard.service``)
that does not need cloudd to be alive. cloudd's agent sends it ``feed <fence_after>``
datagrams on ``<data dir>/fence.sock`` only while the node's lease is valid; when none
came for ``fence_after`` seconds on the guard's own monotonic clock (cloudd crashed, hung
or lost quorum while the host and its qemu processes live on), the guard destroys every
``cloudd-*`` domain: through libvirt first, then by SIGKILL of the qemu processes named in
``cloudd-*.pid`` files for whatever still lives. See DESIGN.md, "Failover safety".

The decision is ``GuardState`` (pure, driven by a clock it is given); the effects are
``Destroyer`` callables handed to ``FenceGuard``, so tests pass their own.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import select
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import orjson

from cloudd.systemd import notify as sd_notify

log = logging.getLogger(__name__)

SOCKET_NAME = "fence.sock"
LOG_NAME = "fence.log"
FENCE_AFTER_MIN = 1.0
FENCE_AFTER_MAX = 600.0
LIBVIRT_TIMEOUT_S = 4.0  # a hung libvirtd costs this much, then the pid files are used
SYSTEM_RUN_DIR = Path("/run/libvirt/qemu")
LOG_MAX_BYTES = 256 * 1024
FEED_RE = re.compile(rb"feed ([0-9]{1,6}(?:\.[0-9]{1,6})?)\n?")
QEMU_BINARY_RE = re.compile(r"qemu-system-[a-z0-9_]+|qemu-kvm|kvm")
DOMAIN_PREFIX = "cloudd-"


# --- the decision (pure) -------------------------------------------------------------


def clamp_fence_after(seconds: float) -> float:
    return min(max(seconds, FENCE_AFTER_MIN), FENCE_AFTER_MAX)


def parse_feed(data: bytes) -> float | None:
    """``b"feed 10"`` → 10.0 (clamped to 1..600 s); anything else → None."""
    match = FEED_RE.fullmatch(data)
    return clamp_fence_after(float(match.group(1))) if match else None


@dataclass
class GuardState:
    """Armed by the first feed; fences once when no feed came for ``fence_after`` seconds,
    then stays disarmed until the next feed. Times are the guard's monotonic clock."""

    fence_after: float
    last_feed: float | None = None

    def __post_init__(self) -> None:
        self.fence_after = clamp_fence_after(self.fence_after)

    @property
    def armed(self) -> bool:
        return self.last_feed is not None

    def tick(self, now: float) -> bool:
        """True exactly once when the feeds stopped for ``fence_after``: fence now."""
        if self.last_feed is None or now - self.last_feed < self.fence_after:
            return False
        self.last_feed = None
        return True

    def feed(self, now: float, fence_after: float) -> bool:
        """A feed arms (again) from ``now``. True when it came too late: the silence before
        it was already longer than ``fence_after`` (the guard missed its tick), fence now."""
        overdue = self.tick(now)
        self.last_feed = now
        self.fence_after = clamp_fence_after(fence_after)
        return overdue

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next tick may fence; None while disarmed."""
        if self.last_feed is None:
            return None
        return max(0.0, self.last_feed + self.fence_after - now)


# --- the agent's side ----------------------------------------------------------------


class FenceFeeder:
    """cloudd's end of ``fence.sock``: call ``feed`` only while the node's lease is valid."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._sock: socket.socket | None = None

    def feed(self, fence_after: float) -> bool:
        """Send one ``feed`` datagram without blocking; False (never an exception) when no
        guard listens, its queue is full or ``fence_after`` is not a finite number."""
        try:
            if not math.isfinite(fence_after):
                return False
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(f"feed {clamp_fence_after(fence_after):.3f}".encode(), self.path)
            return True
        except Exception:  # noqa: BLE001 - the agent's loop must never fail here
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- the effects ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What one destroyer did: ``destroyed`` entries are JSON-ready dicts
    (``{"domain": "cloudd-x", "how": "libvirt"}``), ``errors`` are messages."""

    destroyed: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Destroyer(Protocol):
    def __call__(self) -> Outcome:
        """Destroy what it can of this node's ``cloudd-*`` domains; never raises, never
        blocks for long. Idempotent: a second call finds nothing left."""
        ...


def run_in_child(work: Callable[[Callable[[dict[str, Any]], None]], None], timeout: float) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``work(report)`` in a forked child, collecting what it reports; SIGKILL it after
    ``timeout``. Returns the reports and an error (timeout, exception) or None.

    A child because libvirt's embedded driver keeps its root locked for the life of the
    process that opened it (cloudd could not start again), and a hung call can be killed."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report JSON lines, never return
        code = 0
        try:
            os.close(read_fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)

            def report(item: dict[str, Any]) -> None:
                os.write(write_fd, orjson.dumps(item) + b"\n")

            work(report)
        except BaseException as exc:  # noqa: BLE001 - the child reports everything
            message = getattr(exc, "get_error_message", lambda: None)() or str(exc) or type(exc).__name__
            try:
                os.write(write_fd, orjson.dumps({"error": message}) + b"\n")
            except OSError:
                pass
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    buffer, error = b"", None
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                error = f"timed out after {timeout:g} s"
                os.kill(pid, signal.SIGKILL)
                break
            if select.select([read_fd], [], [], left)[0]:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                buffer += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    reports = []
    for line in buffer.splitlines():
        try:
            reports.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pass  # the last line of a killed child may be cut
    return reports, error


def embed_root(uri: str) -> Path | None:
    if not uri.startswith("qemu:///embed"):
        return None
    root = parse_qs(urlparse(uri).query).get("root", [None])[0]
    return Path(root) if root else None


def qemu_run_dirs(uri: str) -> list[Path]:
    """Where the libvirt of ``uri`` keeps its qemu pid files: an embedded root's
    ``run/qemu``, the system libvirt's ``/run/libvirt/qemu``; none for others."""
    root = embed_root(uri)
    if root is not None:
        return [root / "run" / "qemu"]
    parsed = urlparse(uri)
    if parsed.scheme in ("qemu", "qemu+unix") and parsed.path == "/system":
        return [SYSTEM_RUN_DIR]
    return []


def _destroy_through_libvirt(uri: str, report: Callable[[dict[str, Any]], None]) -> None:
    """(In the child.) Destroy every active ``cloudd-*`` domain of ``uri``, all at once:
    each destroy waits for its qemu to be reaped (~1.5 s where PID 1 is slow)."""
    from concurrent.futures import ThreadPoolExecutor

    import libvirt

    from cloudd.ops.libvirt_compute import ensure_event_loop

    ensure_event_loop()  # the embedded driver needs it
    conn = libvirt.open(uri)

    def destroy(dom: Any) -> None:
        name = dom.name()
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            if dom.isActive():
                report({"error": f"{name}: {exc.get_error_message()}"})
                return  # the pid files get it
        report({"domain": name, "how": "libvirt"})

    doms = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) if d.name().startswith(DOMAIN_PREFIX)]
    if doms:
        with ThreadPoolExecutor(max_workers=min(len(doms), 32)) as pool:
            list(pool.map(destroy, doms))
    conn.close()


class LibvirtDestroyer:
    """``virDomainDestroy`` of every ``cloudd-*`` domain on ``uri``, in a child process
    killed after ``timeout`` (a hung libvirtd, or an embedded root still held by a hung
    cloudd, leaves the rest to ``PidFileKiller``)."""

    def __init__(self, uri: str, timeout: float = LIBVIRT_TIMEOUT_S, run: Callable[..., tuple[list[dict[str, Any]], str | None]] = run_in_child) -> None:
        self.uri = uri
        self.timeout = timeout
        self._run = run

    def __call__(self) -> Outcome:
        root = embed_root(self.uri)
        if self.uri.startswith("test:") or (root is not None and not (root / "run" / "qemu").is_dir()):
            return Outcome()  # nothing real runs there
        reports, error = self._run(lambda report: _destroy_through_libvirt(self.uri, report), self.timeout)
        outcome = Outcome(destroyed=[r for r in reports if "domain" in r], errors=[f"libvirt: {r['error']}" for r in reports if "error" in r])
        if error:
            outcome.errors.append(f"libvirt: {error}")
        return outcome


def is_qemu_of(cmdline: bytes, domain: str) -> bool:
    """Whether ``/proc/<pid>/cmdline`` is a qemu that libvirt started for ``domain``
    (its ``-name guest=<domain>,…``): a stale pid file's recycled pid is never killed."""
    argv = cmdline.rstrip(b"\0").split(b"\0")
    if not argv or not QEMU_BINARY_RE.fullmatch(os.path.basename(argv[0].decode(errors="replace"))):
        return False
    for flag, value in itertools.pairwise(argv):
        if flag in (b"-name", b"--name"):
            parts = value.decode(errors="replace").split(",")
            return domain in (parts[0], parts[0].removeprefix("guest="))
    return False


class PidFileKiller:
    """SIGKILL of the qemu processes named in ``cloudd-*.pid`` files under ``run_dirs``,
    each checked against ``<proc>/<pid>/cmdline`` first (dead, zombie or not a qemu of
    that domain: left alone)."""

    def __init__(self, run_dirs: Sequence[Path], proc: Path = Path("/proc"), kill: Callable[[int, int], None] = os.kill) -> None:
        self.run_dirs = list(run_dirs)
        self.proc = proc
        self.kill = kill

    def __call__(self) -> Outcome:
        outcome = Outcome()
        for run_dir in self.run_dirs:
            for pid_file in sorted(run_dir.glob(f"{DOMAIN_PREFIX}*.pid")):
                domain = pid_file.name.removesuffix(".pid")
                try:
                    pid = int(pid_file.read_text().strip())
                    if pid <= 1 or not is_qemu_of((self.proc / str(pid) / "cmdline").read_bytes(), domain):
                        continue
                    self.kill(pid, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    continue  # gone meanwhile
                except (OSError, ValueError) as exc:
                    outcome.errors.append(f"{pid_file}: {exc}")
                    continue
                outcome.destroyed.append({"domain": domain, "how": "sigkill", "pid": pid})
        return outcome


# --- the process ---------------------------------------------------------------------


def bind_socket(path: Path) -> socket.socket:
    """The guard's datagram socket, mode 0600; refuses when another guard listens there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
        raise SystemExit(f"another fence guard listens on {path}")
    except (FileNotFoundError, ConnectionRefusedError):
        path.unlink(missing_ok=True)  # none, or a dead guard's
    finally:
        probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.setblocking(False)
    return sock


def append_fence_log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per fence; the file is cut to its newer half past 256 KiB."""
    try:
        if path.stat().st_size > LOG_MAX_BYTES:
            tail = path.read_bytes()[-LOG_MAX_BYTES // 2:]
            path.write_bytes(tail[tail.find(b"\n") + 1:])
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, orjson.dumps(record) + b"\n")
    finally:
        os.close(fd)


class FenceGuard:
    """The guard's loop around ``GuardState``: ``step()`` waits for datagrams or the
    deadline, then feeds or fences."""

    def __init__(
        self, sock: socket.socket, state: GuardState, destroyers: Sequence[Destroyer], log_path: Path,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
    ) -> None:
        self.sock = sock
        self.state = state
        self.destroyers = list(destroyers)
        self.log_path = log_path
        self.clock = clock
        self.wall = wall

    def step(self, max_wait: float | None = None) -> bool:
        """One iteration; True when it fenced."""
        wait = self.state.wait_s(self.clock())
        if max_wait is not None:
            wait = max_wait if wait is None else min(wait, max_wait)
        select.select([self.sock], [], [], wait)
        now = self.clock()
        last_feed, fence_after = self.state.last_feed, self.state.fence_after
        fence = False
        for data in self._drain():
            value = parse_feed(data)
            if value is None:
                log.warning("ignoring a malformed datagram: %r", data[:64])
                continue
            if not self.state.armed:
                log.info("armed: fencing after %g s without a feed", value)
            fence = self.state.feed(now, value) or fence
        fence = self.state.tick(now) or fence
        if fence:
            self.fence(now - last_feed if last_feed is not None else 0.0, fence_after)
        return fence

    def _drain(self) -> list[bytes]:
        datagrams = []
        while True:
            try:
                datagrams.append(self.sock.recv(256))
            except (BlockingIOError, InterruptedError):
                return datagrams

    def fence(self, silent_s: float, fence_after: float) -> dict[str, Any]:
        log.warning("no feed for %.1f s (fence_after %g s): destroying this node's VMs", silent_s, fence_after)
        wall = self.wall()
        record: dict[str, Any] = {"time": wall, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)), "silent_s": round(silent_s, 3), "fence_after": fence_after, "destroyed": [], "errors": []}
        for destroy in self.destroyers:
            try:
                outcome = destroy()
            except Exception as exc:  # noqa: BLE001 - a destroyer must not stop the others
                outcome = Outcome(errors=[f"{getattr(destroy, '__name__', type(destroy).__name__)}: {exc}"])
            record["destroyed"] += outcome.destroyed
            record["errors"] += outcome.errors
        for item in record["destroyed"]:
            log.warning("fenced %s (%s)", item["domain"], item["how"])
        for error in record["errors"]:
            log.error("fence: %s", error)
        try:
            append_fence_log(self.log_path, record)
        except OSError as exc:
            log.error("cannot write %s: %s", self.log_path, exc)
        return record


def serve(data_dir: str | Path) -> None:
    """``cloudd fence-guard``: run until SIGTERM/SIGINT."""
    from cloudd.config import NodeConfig

    config = NodeConfig.load(data_dir)
    uri = config.compute.uri
    if not uri.startswith("test:"):
        import cloudd.ops.libvirt_compute  # noqa: F401 - fail now, not when fencing
    data = Path(config.data_dir)
    sock_path = data / SOCKET_NAME
    sock = bind_socket(sock_path)
    guard = FenceGuard(sock, GuardState(config.timings.fence_after), [LibvirtDestroyer(uri), PidFileKiller(qemu_run_dirs(uri))], data / LOG_NAME)
    stop = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("fence guard on %s for %s (pid files in %s); unarmed until the first feed", sock_path, uri, ", ".join(map(str, qemu_run_dirs(uri))) or "nowhere")
    sd_notify("READY=1")
    try:
        while not stop:
            guard.step(max_wait=1.0)  # wake now and then to see a signal's flag
    finally:
        sock.close()
        sock_path.unlink(missing_ok=True)
        log.info("fence guard stopped")
