"""The compute contract on libvirt (``qemu:///system`` in production; ``test:///default``,
``qemu:///embed?root=…`` in tests and the quick start).

One connection per driver, reopened when libvirtd went away. The agent calls these
methods through ``asyncio.to_thread`` with a timeout, so a stuck libvirtd cannot freeze
it; a call that times out is retried on the next reconcile.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse
import xml.etree.ElementTree as ET
from typing import Any, Callable, TypeVar

import libvirt

from cloudd.ops.compute import DOMAIN_PREFIX, ComputeError, DomainInfo, DomainSpec
from cloudd.ops.domain_xml import domain_xml

log = logging.getLogger(__name__)
T = TypeVar("T")

POWER = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down, still on
    libvirt.VIR_DOMAIN_SHUTOFF: "shut_off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
    libvirt.VIR_DOMAIN_NOSTATE: "shut_off",
}
TRANSIENT = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_INTERNAL_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
}


def _silence_libvirt_stderr(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; we log them ourselves."""


libvirt.registerErrorHandler(_silence_libvirt_stderr, None)


_event_loop_started = False
_event_loop_lock = threading.Lock()


def ensure_event_loop() -> None:
    """libvirt's default event loop, run in a daemon thread (needed by the embedded
    driver, and for domain events). Registered once per process, before any open()."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


EMBED_QEMU_CONF = """# written by cloudd for its embedded libvirt root
stdio_handler = "file"
user = "root"
group = "root"
remote_display_port_min = {vnc_min}
remote_display_port_max = {vnc_max}
"""


def prepare_embed_root(uri: str, vnc_range: tuple[int, int] = (5900, 6899)) -> None:
    """Write ``<root>/etc/qemu.conf`` for ``qemu:///embed?root=<root>`` if it is missing.

    No virtlogd in embed mode (``stdio_handler = file``); qemu runs as root because this
    machine's ``/dev/kvm`` is root-only, which otherwise makes libvirt re-probe qemu on
    every call (see shared/MACHINE-NOTES.md).
    """
    root = parse_qs(urlparse(uri).query).get("root", [None])[0]
    if not root:
        raise ComputeError(f"{uri}: the embedded driver needs ?root=<dir>")
    conf = Path(root) / "etc" / "qemu.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(EMBED_QEMU_CONF.format(vnc_min=vnc_range[0], vnc_max=vnc_range[1]))


class LibvirtCompute:
    def __init__(self, uri: str, vnc_range: tuple[int, int] = (5900, 6899)) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self.embed_root: Path | None = None
        if uri.startswith("qemu:///embed"):
            prepare_embed_root(uri, vnc_range)
            ensure_event_loop()
            self.embed_root = Path(parse_qs(urlparse(uri).query)["root"][0])

    def _connection(self) -> libvirt.virConnect:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            log.warning("libvirt connection to %s lost: reconnecting", self.uri)
            self._conn = None
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise ComputeError(f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}", transient=True) from None
        return self._conn

    def _run(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        with self._lock:
            conn = self._connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                transient = exc.get_error_code() in TRANSIENT
                if transient:
                    self._conn = None
                raise ComputeError(f"{what}: {exc.get_error_message()}", transient=transient) from None

    def _domain(self, conn: libvirt.virConnect, vm_id: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(DOMAIN_PREFIX + vm_id)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _need(self, conn: libvirt.virConnect, vm_id: str) -> libvirt.virDomain:
        dom = self._domain(conn, vm_id)
        if dom is None:
            raise ComputeError(f"domain {DOMAIN_PREFIX}{vm_id} is not defined")
        return dom

    def domains(self) -> dict[str, DomainInfo]:
        def read(conn: libvirt.virConnect) -> dict[str, DomainInfo]:
            out = {}
            for dom in conn.listAllDomains():
                name = dom.name()
                if not name.startswith(DOMAIN_PREFIX):
                    continue
                state = dom.state()[0]
                power = POWER.get(state, "shut_off")
                out[name[len(DOMAIN_PREFIX):]] = DomainInfo(name[len(DOMAIN_PREFIX):], power, self._vnc_port(dom) if power == "running" else None)
            return out

        return self._run("listing domains", read)

    @staticmethod
    def _vnc_port(dom: libvirt.virDomain) -> int | None:
        try:
            graphics = ET.fromstring(dom.XMLDesc(0)).find("./devices/graphics[@type='vnc']")
        except (libvirt.libvirtError, ET.ParseError):
            return None
        port = graphics.get("port") if graphics is not None else None
        return int(port) if port and port.isdigit() and int(port) > 0 else None

    def define(self, spec: DomainSpec) -> None:
        self._run(f"defining {spec.domain_name}", lambda conn: conn.defineXML(domain_xml(spec)))

    def start(self, vm_id: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._need(conn, vm_id)
            if not dom.isActive():
                dom.create()

        self._run(f"starting {DOMAIN_PREFIX}{vm_id}", go)

    def shutdown(self, vm_id: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._need(conn, vm_id)
            if dom.isActive():
                dom.shutdown()

        self._run(f"shutting down {DOMAIN_PREFIX}{vm_id}", go)

    def destroy(self, vm_id: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._domain(conn, vm_id)
            if dom is not None and dom.isActive():
                dom.destroy()

        self._run(f"destroying {DOMAIN_PREFIX}{vm_id}", go)

    def reset(self, vm_id: str) -> None:
        self._run(f"resetting {DOMAIN_PREFIX}{vm_id}", lambda conn: self._need(conn, vm_id).reset(0))

    def reboot(self, vm_id: str) -> None:
        self._run(f"rebooting {DOMAIN_PREFIX}{vm_id}", lambda conn: self._need(conn, vm_id).reboot(0))

    def usage(self, vm_id: str) -> dict[str, float]:
        def read(conn: libvirt.virConnect) -> dict[str, float]:
            dom = self._domain(conn, vm_id)
            if dom is None or not dom.isActive():
                return {}
            _state, _max_kb, mem_kb, _vcpus, cpu_ns = dom.info()
            out = {"cpu_time_s": cpu_ns / 1e9, "ram_used_mb": float(mem_kb // 1024)}
            read_bytes = write_bytes = 0
            try:
                for disk in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk/target"):
                    stats = dom.blockStats(disk.get("dev"))
                    read_bytes += stats[1]
                    write_bytes += stats[3]
                out.update(disk_read_bytes=float(read_bytes), disk_write_bytes=float(write_bytes))
            except (libvirt.libvirtError, ET.ParseError):
                pass  # e.g. the test driver has no block statistics
            return out

        return self._run(f"reading usage of {DOMAIN_PREFIX}{vm_id}", read)

    def undefine(self, vm_id: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._domain(conn, vm_id)
            if dom is None:
                return
            if dom.isActive():
                dom.destroy()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError:
                dom.undefine()

        self._run(f"undefining {DOMAIN_PREFIX}{vm_id}", go)
        if self.embed_root is not None:  # our own libvirt: its per-domain log goes too
            (self.embed_root / "log" / "qemu" / f"{DOMAIN_PREFIX}{vm_id}.log").unlink(missing_ok=True)
