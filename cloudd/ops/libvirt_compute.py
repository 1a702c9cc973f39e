"""The compute contract on libvirt (``qemu:///system`` in production; ``test:///default``,
``qemu:///embed?root=…`` in tests and the quick start).

One connection per driver, reopened when libvirtd went away. The agent calls these
methods through ``asyncio.to_thread`` with a timeout, so a stuck libvirtd cannot freeze
it; a call that times out is retried on the next reconcile.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse
import xml.etree.ElementTree as ET
from typing import Any, Callable, TypeVar

import libvirt

from cloudd.ops.compute import (
    DOMAIN_PREFIX, ComputeError, DiskSpec, DomainInfo, DomainSpec, LiveOptions, MigrationProgress, MigrationResult, MigrationTarget, NicSpec,
)
from cloudd.ops.domain_xml import digest_of, disk_xml, domain_xml, interface_xml, migratable_xml

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
LOCK_WAIT_S = 10.0  # below the reconciler's call timeout
CONNECTION_LOST = {libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN}
TRANSIENT = CONNECTION_LOST | {libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_OPERATION_TIMEOUT}
GONE_MEANWHILE = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID}  # domain left / job or domain ended
JOB_STATS_WAIT_S = 2.0  # the job-completed event (with the downtime) may trail migrateToURI3's return


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
    def __init__(self, uri: str, vnc_range: tuple[int, int] = (5900, 6899), domain_type: str = "kvm") -> None:
        self.uri = uri
        self.domain_type = domain_type  # the node's <domain type> (kvm, qemu = TCG, test): what cpu_models() asks about
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._on_change: Callable[[str | None], None] | None = None
        self._callbacks: list[int] = []
        self._close_callback = False
        self.embed_root: Path | None = None
        ensure_event_loop()  # domain events, keepalive; the embedded driver needs it too
        if uri.startswith("qemu:///embed"):
            prepare_embed_root(uri, vnc_range)
            self.embed_root = Path(parse_qs(urlparse(uri).query)["root"][0])

    def watch(self, on_change: Callable[[str | None], None]) -> None:
        with self._lock:
            self._on_change = on_change
            if self._conn is not None:
                self._arm(self._conn)

    def _notify(self, domain_name: str | None) -> None:
        callback = self._on_change
        if callback is None:
            return
        if domain_name is None:
            callback(None)
        elif domain_name.startswith(DOMAIN_PREFIX):
            callback(domain_name[len(DOMAIN_PREFIX):])

    def _arm(self, conn: libvirt.virConnect) -> None:
        """Subscribe to this connection's events (again after every reconnect)."""
        if self._on_change is None:
            return
        if self._callbacks:
            return  # armed already
        try:
            self._callbacks.append(conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lambda _c, dom, _e, _d, _o: self._notify(dom.name()), None))
            self._callbacks.append(conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, lambda _c, dom, _dev, _o: self._notify(dom.name()), None))
        except libvirt.libvirtError as exc:
            log.info("libvirt at %s offers no domain events (%s): polling only", self.uri, exc.get_error_message())
        if urlparse(self.uri).path == "/system" or "+" in urlparse(self.uri).scheme:  # a daemon at the other end
            try:
                conn.registerCloseCallback(lambda _c, _reason, _o: self._notify(None), None)
                self._close_callback = True
                conn.setKeepAlive(5, 3)  # a hung libvirtd is noticed within ~20 s
            except libvirt.libvirtError as exc:
                log.info("libvirt keepalive unavailable: %s", exc.get_error_message())

    def _drop(self) -> None:
        """Forget the connection; its callbacks hold references to it, so undo them and
        close it, or every reconnect would leak one (best effort: it may be dead)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for callback_id in self._callbacks:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass
        self._callbacks = []
        if self._close_callback:
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
            self._close_callback = False
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    def _connection(self) -> libvirt.virConnect:
        if self._conn is not None:
            try:
                if self._conn.isAlive():
                    return self._conn
            except libvirt.libvirtError:
                pass
            log.warning("libvirt connection to %s lost: reconnecting", self.uri)
            self._drop()
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise ComputeError(f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}", transient=True) from None
        self._arm(self._conn)
        return self._conn

    def _run(self, what: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        # a hung libvirtd blocks the call that holds the lock (libvirt.open() has no timeout,
        # not even with keepalive): give up waiting rather than pile up threads behind it
        if not self._lock.acquire(timeout=LOCK_WAIT_S):
            raise ComputeError(f"{what}: libvirt at {self.uri} is still busy with an earlier call", transient=True)
        try:
            conn = self._connection()
            try:
                return fn(conn)
            except libvirt.libvirtError as exc:
                transient = exc.get_error_code() in TRANSIENT
                # a system error (a missing bridge, say) comes with the same codes as a
                # lost connection: reconnect only when it is lost (reopening an embedded
                # libvirt that still lives fails: "Too many drivers")
                if exc.get_error_code() in CONNECTION_LOST and not _alive(conn):
                    self._drop()
                raise ComputeError(f"{what}: {exc.get_error_message()}", transient=transient) from None
        finally:
            self._lock.release()

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
                try:
                    out[name[len(DOMAIN_PREFIX):]] = self._info(dom, name[len(DOMAIN_PREFIX):])
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished while listing
                        raise
            return out

        return self._run("listing domains", read)

    @staticmethod
    def _info(dom: libvirt.virDomain, vm_id: str) -> DomainInfo:
        power = POWER.get(dom.state()[0], "shut_off")
        digest = digest_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) if dom.isPersistent() else None
        if power not in ("running", "paused"):
            return DomainInfo(vm_id, power, None, digest)
        try:
            live = ET.fromstring(dom.XMLDesc(0))
        except ET.ParseError:
            return DomainInfo(vm_id, power, None, digest)
        graphics = live.find("./devices/graphics[@type='vnc']")
        port = graphics.get("port") if graphics is not None else None
        disks = {}
        for disk in live.findall("./devices/disk"):
            target, source = disk.find("target"), disk.find("source")
            if target is not None and target.get("dev"):
                disks[str(target.get("dev"))] = source_path(source)
        nics = {}
        for nic in live.findall("./devices/interface"):
            mac, target = nic.find("mac"), nic.find("target")
            if mac is not None and mac.get("address"):
                nics[str(mac.get("address")).lower()] = str(target.get("dev")) if target is not None else ""
        vnc = int(port) if port and port.isdigit() and int(port) > 0 else None
        return DomainInfo(vm_id, power, vnc if power == "running" else None, digest, disks, nics)

    @property
    def secrets_supported(self) -> bool:
        return self.embed_root is None

    def ensure_secret(self, usage_id: str, value: str) -> None:
        if self.embed_root is not None:
            # libvirt 9.0's embedded qemu driver fetches secrets from virtsecretd, and with an
            # embedded secret driver open it fails ("No current identity to elevate"): no
            # CHAP password reaches qemu, so no iSCSI volume can be attached here
            raise ComputeError("an embedded libvirt cannot hand CHAP passwords to qemu: iSCSI volumes need libvirtd (or virtsecretd) on this node")

        def go(conn: libvirt.virConnect) -> None:
            try:
                secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage_id)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                    return  # libvirt's test driver has no secret store (and starts no qemu)
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                    raise
                secret = conn.secretDefineXML(secret_xml(usage_id))
            secret.setValue(value.encode())  # private: it cannot be read back to compare

        self._run(f"storing the iSCSI secret of {usage_id}", go)

    def define(self, spec: DomainSpec) -> None:
        def go(conn: libvirt.virConnect) -> None:
            try:
                conn.defineXML(domain_xml(spec))
            except libvirt.libvirtError as exc:
                # a domain of that name destroyed behind our back is still being torn down
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and "being removed" in (exc.get_error_message() or ""):
                    raise ComputeError(f"defining {spec.domain_name}: {exc.get_error_message()}", transient=True) from None
                raise

        self._run(f"defining {spec.domain_name}", go)

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

    @property
    def hotplug(self) -> bool:
        return not self.uri.startswith("test:")

    def attach_live(self, vm_id: str, disk: DiskSpec) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._need(conn, vm_id)
            if not dom.isActive() or self._live_target(dom, disk.target) is not None:
                return
            dom.attachDeviceFlags(disk_xml(disk), libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._run(f"attaching {disk.target} to {DOMAIN_PREFIX}{vm_id}", go)

    def detach_live(self, vm_id: str, target: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._need(conn, vm_id)
            element = self._live_target(dom, target) if dom.isActive() else None
            if element is None:
                return
            alias = element.find("alias")
            if alias is not None and alias.get("name"):
                # asks the guest and returns at once: the DEVICE_REMOVED event (or the next
                # domains()) tells when it is gone
                dom.detachDeviceAlias(alias.get("name"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
            else:
                dom.detachDeviceFlags(ET.tostring(element, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._run(f"detaching {target} from {DOMAIN_PREFIX}{vm_id}", go)

    def attach_nic_live(self, vm_id: str, nic: NicSpec) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._need(conn, vm_id)
            if not dom.isActive() or self._live_nic(dom, nic.mac) is not None:
                return
            dom.attachDeviceFlags(interface_xml(nic), libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._run(f"attaching the NIC {nic.mac} to {DOMAIN_PREFIX}{vm_id}", go)

    def detach_nic_live(self, vm_id: str, mac: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._need(conn, vm_id)
            element = self._live_nic(dom, mac) if dom.isActive() else None
            if element is not None:
                dom.detachDeviceFlags(ET.tostring(element, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)

        self._run(f"detaching the NIC {mac} from {DOMAIN_PREFIX}{vm_id}", go)

    @staticmethod
    def _live_nic(dom: libvirt.virDomain, mac: str) -> ET.Element | None:
        for nic in ET.fromstring(dom.XMLDesc(0)).findall("./devices/interface"):
            element = nic.find("mac")
            if element is not None and str(element.get("address", "")).lower() == mac.lower():
                return nic
        return None

    @staticmethod
    def _live_target(dom: libvirt.virDomain, target: str) -> ET.Element | None:
        for disk in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
            t = disk.find("target")
            if t is not None and t.get("dev") == target:
                return disk
        return None

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

    # --- live migration (peer to peer: this libvirtd talks to the target's itself) ---

    @property
    def live_migration(self) -> bool:
        """qemu domains can move live; libvirt's test driver cannot."""
        return urlparse(self.uri).scheme.split("+")[0] == "qemu"

    def migrate_live(self, vm_id: str, target: MigrationTarget, target_spec: DomainSpec, options: LiveOptions) -> MigrationResult:
        """See ComputeDriver.migrate_live. Runs on a libvirt connection of its own, so the
        shared one (and its lock) stays free while it blocks: domains(),
        migration_progress() and abort_migration() answer from other threads meanwhile."""
        what = f"live-migrating {DOMAIN_PREFIX}{vm_id} to {target.node}"
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise ComputeError(f"{what}: cannot connect to libvirt at {self.uri}: {exc.get_error_message()}", transient=True) from None
        try:
            return self._migrate(conn, vm_id, target, target_spec, options, what)
        except libvirt.libvirtError as exc:
            # the target's errors reach us through this libvirtd: only a lost connection
            # to it makes the failure transient (and then domains() tells how it ended)
            raise ComputeError(f"{what}: {exc.get_error_message()}", transient=not _alive(conn)) from None
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _migrate(self, conn: libvirt.virConnect, vm_id: str, target: MigrationTarget, target_spec: DomainSpec, options: LiveOptions, what: str) -> MigrationResult:
        dom = self._domain(conn, vm_id)
        if dom is None or not dom.isActive():
            raise ComputeError(f"{what}: the domain is not {'running' if dom is not None else 'defined'} here")
        xml = migratable_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE), target_spec)
        params, flags = migration_call(target, options, xml)
        if options.max_downtime_ms is not None:
            # no migrateToURI3 parameter in libvirt 9.0; qemu keeps it for this job
            dom.migrateSetMaxDowntime(options.max_downtime_ms)
        completed = _JobCompleted()
        callback = completed.register(conn, dom)
        try:
            started = time.monotonic()
            dom.migrateToURI3(target.libvirt_uri, params, flags)
            elapsed = time.monotonic() - started
            stats = completed.wait(JOB_STATS_WAIT_S) if callback is not None else {}
        finally:
            if callback is not None:
                try:
                    conn.domainEventDeregisterAny(callback)
                except libvirt.libvirtError:
                    pass
        downtime = stats.get("downtime")
        return MigrationResult(float(downtime) if downtime is not None else None, elapsed, int(stats.get("data_processed", 0)))

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        def read(conn: libvirt.virConnect) -> MigrationProgress | None:
            dom = self._domain(conn, vm_id)
            try:
                return progress_of(dom.jobStats()) if dom is not None and dom.isActive() else None
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in GONE_MEANWHILE:
                    return None  # the migration ended (the domain left) while we asked
                raise

        return self._run(f"reading the migration of {DOMAIN_PREFIX}{vm_id}", read)

    def abort_migration(self, vm_id: str) -> None:
        def go(conn: libvirt.virConnect) -> None:
            dom = self._domain(conn, vm_id)
            try:
                if dom is None or not dom.isActive() or progress_of(dom.jobStats()) is None:
                    return  # no migration runs (and another job is not ours to cancel)
                dom.abortJob()  # migrate_live then raises "operation aborted"
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in GONE_MEANWHILE:
                    raise

        self._run(f"aborting the migration of {DOMAIN_PREFIX}{vm_id}", go)

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

    def cpu_models(self) -> list[str]:
        """The named CPU models libvirt reports usable for this node's domain type (its
        domain capabilities; empty for libvirt's test driver, or when it cannot tell)."""
        if self.uri.startswith("test:") or self.domain_type == "test":
            return []

        def read(conn: libvirt.virConnect) -> list[str]:
            try:
                caps = conn.getDomainCapabilities(None, None, None, self.domain_type, 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
                    return []
                raise
            return usable_cpu_models(caps)

        return self._run(f"reading the CPU models of {self.domain_type} guests", read)


def source_path(source: ET.Element | None) -> str:
    """A live disk's source as DiskSpec.path says it: a file, or an iscsi:// URL."""
    if source is None:
        return ""
    if source.get("protocol") == "iscsi":
        host = source.find("host")
        where = f"{host.get('name')}:{host.get('port', '3260')}" if host is not None else ""
        return f"iscsi://{where}/{source.get('name', '')}"
    return source.get("file") or ""


def usable_cpu_models(domcaps_xml: str) -> list[str]:
    """The models of a domain capabilities document's ``<cpu><mode name='custom'>`` that are
    ``usable='yes'``, in libvirt's order ([] when custom models are unsupported, or the
    document says nothing of them)."""
    try:
        root = ET.fromstring(domcaps_xml)
    except ET.ParseError:
        return []
    mode = root.find("./cpu/mode[@name='custom']")
    if mode is None or mode.get("supported") != "yes":
        return []
    return [str(model.text).strip() for model in mode.findall("model") if model.get("usable") == "yes" and (model.text or "").strip()]


def secret_xml(usage_id: str) -> str:
    secret = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
    usage = ET.SubElement(secret, "usage", {"type": "iscsi"})
    ET.SubElement(usage, "target").text = usage_id
    return ET.tostring(secret, encoding="unicode")


# --- live migration --------------------------------------------------------------------

MIGRATION_FLAGS = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
MIGRATION_OUT = getattr(libvirt, "VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT", 5)


def migration_call(target: MigrationTarget, options: LiveOptions, xml: str) -> tuple[dict[str, Any], int]:
    """``migrateToURI3``'s typed parameters and flags: live, peer to peer (the source
    libvirtd opens ``target.libvirt_uri`` itself), defined on the target and undefined
    here once the guest runs there; ``xml`` (``migratable_xml``) is both its live and its
    persistent definition on the target."""
    flags = MIGRATION_FLAGS
    params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: xml, libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: xml}
    if target.tunnelled:
        flags |= libvirt.VIR_MIGRATE_TUNNELLED  # memory inside libvirt's connection: no migrate_uri
    elif target.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = target.migrate_uri
    if target.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if options.bandwidth_mib_s:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(options.bandwidth_mib_s)
    if options.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE  # the admin vouches the VM directory is shared
    if options.copy_disks:
        # qemu mirrors them over NBD into files the target made beforehand (same size)
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(options.copy_disks)
    return params, flags


def progress_of(stats: dict[str, Any]) -> MigrationProgress | None:
    """A running outgoing migration from ``jobStats()`` (None for no job, or another one)."""
    if stats.get("type") not in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED):
        return None
    if stats.get("operation", MIGRATION_OUT) != MIGRATION_OUT:
        return None
    return MigrationProgress(
        elapsed_s=stats.get("time_elapsed", 0) / 1000.0,
        data_total=int(stats.get("data_total", 0)),
        data_processed=int(stats.get("data_processed", 0)),
        data_remaining=int(stats.get("data_remaining", 0)),
        memory_dirty_rate=int(stats.get("memory_dirty_rate", 0)),
        iteration=int(stats.get("memory_iteration", 0)),
    )


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


class _JobCompleted:
    """Catches a domain's job-completed event: the finished job's statistics, downtime
    included. It is the only way to them once UNDEFINE_SOURCE removed the domain here
    (``jobStats(COMPLETED)`` needs the domain)."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}
        self._done = threading.Event()

    def register(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> int | None:
        try:
            return int(conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_event, None))
        except libvirt.libvirtError as exc:
            log.info("no job-completed events (%s): no downtime measured", exc.get_error_message())
            return None

    def _on_event(self, _conn: libvirt.virConnect, _dom: libvirt.virDomain, params: dict[str, Any], _opaque: Any) -> None:
        self.stats = dict(params)
        self._done.set()

    def wait(self, timeout: float) -> dict[str, Any]:
        self._done.wait(timeout)
        return self.stats
