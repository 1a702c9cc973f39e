"""The compute contract: what an agent asks of its host's hypervisor.

Every method is idempotent: asking for the state a domain already has does nothing, so
an agent that crashed halfway simply runs the same step again. Domains that cloudd
manages are named ``cloudd-<vm id>``; others on the host are never touched. Errors are
``ComputeError`` with a message for the VM's ``error`` field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, cast

DOMAIN_PREFIX = "cloudd-"


class ComputeError(Exception):
    """A hypervisor call failed; ``transient`` errors (lost connection, timeout) are retried."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class IscsiSource:
    """A disk that qemu reaches over iSCSI itself (no kernel initiator): LUN ``lun`` of
    ``target`` on ``host:port``, logging in as ``initiator`` with CHAP user ``chap_user``
    and the libvirt secret whose usage id is ``target`` (``ensure_secret``)."""

    host: str
    port: int
    target: str
    initiator: str
    chap_user: str
    lun: int = 1

    @property
    def url(self) -> str:
        return f"iscsi://{self.host}:{self.port}/{self.target}/{self.lun}"


@dataclass(frozen=True)
class DiskSpec:
    """One disk or CD-ROM. ``target`` (``vda``, ``sdb``…) identifies it on the domain;
    ``serial`` shows in the guest as ``/dev/disk/by-id/virtio-<serial>``."""

    path: str
    format: str = "qcow2"  # qcow2 | raw
    target: str = "vda"
    bus: str = "virtio"  # virtio (virtio-blk) | scsi (on the virtio-scsi controller)
    device: str = "disk"  # disk | cdrom
    readonly: bool = False
    serial: str | None = None
    boot_order: int | None = None  # the firmware tries devices in this order (None: never)
    size_gb: float | None = None  # the file's size (the agent grows it offline; not in the XML)
    iscsi: IscsiSource | None = None  # a network disk; ``path`` is then its iscsi:// URL


@dataclass(frozen=True)
class NicSpec:
    """One NIC: a tap named ``tap`` (libvirt creates it) in the Linux bridge ``bridge``,
    with the port's ``mac``; the node's network agent filters traffic by the tap's name."""

    mac: str
    bridge: str
    tap: str
    model: str = "virtio"


@dataclass(frozen=True)
class DomainSpec:
    """Everything needed to define one VM's domain."""

    vm_id: str
    name: str
    vcpus: int
    ram_mb: int
    disks: tuple[DiskSpec, ...] = ()
    domain_type: str = "kvm"  # "qemu" = TCG (software), for hosts without usable KVM
    vnc_listen: str = "127.0.0.1"
    vnc_password: str | None = None
    serial_log: str | None = None
    machine: str | None = None
    interfaces: tuple[NicSpec, ...] = field(default_factory=tuple)  # in the order the guest sees them
    cpu_model: str | None = None  # a named CPU model every node of the VM's group runs (None: the hypervisor's default)
    kernel: str | None = None  # direct kernel boot (test guests); None boots from the disk
    initrd: str | None = None
    cmdline: str | None = None

    @property
    def domain_name(self) -> str:
        return DOMAIN_PREFIX + self.vm_id

    @property
    def digest(self) -> str:
        """A short hash of the whole spec: stored in the domain's metadata, so an agent can
        tell whether the definition on the host is the one it would write now."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MigrationTarget:
    """Where a live migration goes: the target node's libvirt as the SOURCE's libvirtd
    reaches it (peer to peer), and where qemu sends the guest's memory."""

    node: str
    libvirt_uri: str  # e.g. qemu+tls://hv2.example/system (production), qemu+unix:///system?socket=… (tests)
    migrate_uri: str | None = None  # e.g. tcp://10.0.0.2 (the migration network); None: libvirt's default
    tunnelled: bool = False  # carry the memory stream inside libvirt's own (TLS) connection
    tls: bool = False  # qemu's native TLS for the memory stream


@dataclass(frozen=True)
class LiveOptions:
    bandwidth_mib_s: int | None = None  # None: unlimited
    max_downtime_ms: int | None = None  # None: libvirt's default (300 ms)
    copy_disks: tuple[str, ...] = ()  # targets of node-local disks to copy along (e.g. swap on local storage)
    # the VM directory is shared in a way libvirt cannot recognise (it knows NFS, GlusterFS,
    # Ceph…): migrate anyway instead of refusing as "unsafe"
    unsafe: bool = False


@dataclass(frozen=True)
class MigrationProgress:
    """A running (or just finished) live migration job, as libvirt reports it."""

    elapsed_s: float = 0.0
    data_total: int = 0  # bytes: memory (and disks being copied)
    data_processed: int = 0
    data_remaining: int = 0
    memory_dirty_rate: int = 0  # pages per second
    iteration: int = 0  # memory passes so far

    @property
    def percent(self) -> int:
        if self.data_total <= 0:
            return 0
        return max(0, min(99, int(100 * (self.data_total - self.data_remaining) / self.data_total)))


@dataclass(frozen=True)
class MigrationResult:
    downtime_ms: float | None  # the guest's pause at the switch-over, when libvirt measured it
    elapsed_s: float
    data_bytes: int = 0


@dataclass(frozen=True)
class DomainInfo:
    vm_id: str
    power: str  # running | shut_off | paused | crashed
    vnc_port: int | None = None
    digest: str | None = None  # DomainSpec.digest of the persistent definition
    live_disks: dict[str, str] = field(default_factory=dict)  # target -> source path, while running
    live_nics: dict[str, str] = field(default_factory=dict)  # MAC -> tap, while running


class ComputeDriver(Protocol):
    """One host's hypervisor. Implementations: ``LibvirtCompute``, ``FakeCompute``."""

    def domains(self) -> dict[str, DomainInfo]:
        """cloudd's domains on this host by VM id (absent VMs are simply missing)."""

    def watch(self, on_change: Callable[[str | None], None]) -> None:
        """Call ``on_change(vm_id)`` (from another thread) when one of cloudd's domains
        changes state or loses a device, and ``on_change(None)`` when the connection to
        the hypervisor closes. Only a hint to look sooner: the agent still polls."""

    def define(self, spec: DomainSpec) -> None:
        """Create or update the domain definition (takes effect at next start if running)."""

    def start(self, vm_id: str) -> None:
        """Power on; no-op when running. ComputeError when undefined."""

    def shutdown(self, vm_id: str) -> None:
        """Press the ACPI power button; no-op when off. The guest may ignore it."""

    def destroy(self, vm_id: str) -> None:
        """Force off at once; no-op when off or absent."""

    def reset(self, vm_id: str) -> None:
        """Hard reset a running domain."""

    @property
    def secrets_supported(self) -> bool:
        """False: no secret store that qemu can use (an embedded libvirt)."""

    def ensure_secret(self, usage_id: str, value: str) -> None:
        """Store a CHAP password as the hypervisor's secret of iSCSI usage ``usage_id``
        (idempotent; a hypervisor without a secret store may ignore it)."""

    def reboot(self, vm_id: str) -> None:
        """Ask the guest to reboot (ACPI)."""

    @property
    def hotplug(self) -> bool:
        """Whether disks can be attached to and detached from a running domain (libvirt's
        test driver cannot: there a changed definition waits for the next start)."""

    def attach_live(self, vm_id: str, disk: DiskSpec) -> None:
        """Hot-plug ``disk`` into the running domain; no-op when its target is there already.
        Only the live domain changes: ``define`` keeps the persistent definition."""

    def detach_live(self, vm_id: str, target: str) -> None:
        """Hot-unplug the disk at ``target``; no-op when absent. A virtio-blk unplug needs
        the guest's consent and completes later: the next ``domains()`` tells."""

    def attach_nic_live(self, vm_id: str, nic: NicSpec) -> None:
        """Hot-plug ``nic`` into the running domain; no-op when its MAC is there already."""

    def detach_nic_live(self, vm_id: str, mac: str) -> None:
        """Hot-unplug the NIC with ``mac``; no-op when absent (completes when the guest lets go)."""

    def undefine(self, vm_id: str) -> None:
        """Remove the definition (forcing it off first); no-op when absent."""

    def usage(self, vm_id: str) -> dict[str, float]:
        """Counters of a running domain: ``cpu_time_s`` (cumulative), ``ram_used_mb``,
        ``disk_read_bytes``, ``disk_write_bytes`` (cumulative, all disks). Empty when off."""

    # --- live migration (peer to peer; see MigrationTarget) ---

    @property
    def live_migration(self) -> bool:
        """False: this hypervisor cannot live-migrate (libvirt's test driver)."""

    def migrate_live(self, vm_id: str, target: MigrationTarget, target_spec: DomainSpec, options: LiveOptions) -> MigrationResult:
        """Blocking, for as long as the migration runs (call it from a thread of its own).
        Moves the running domain to ``target``: the definition there is the live one (same
        ABI) with the node-specific parts of ``target_spec`` (bridges, taps, disk sources
        and iSCSI initiator, serial log, VNC listen address, VNC password). On success the
        domain runs on the target, is defined (persistent) there and is undefined here. On
        failure or ``abort_migration`` raises ComputeError and the domain keeps running
        here (libvirt resumes it)."""

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        """The running migration job of the domain; None when none runs."""

    def abort_migration(self, vm_id: str) -> None:
        """Cancel the domain's running migration job (``migrate_live`` then raises); no-op
        when none runs."""

    def cpu_models(self) -> list[str]:
        """The named CPU models this host can run guests with, as the hypervisor reports
        them usable for the node's domain type (empty when it cannot tell)."""


def spec_to_dict(spec: DomainSpec) -> dict[str, object]:
    """A DomainSpec as JSON-able data (a live migration's target publishes its own)."""
    import dataclasses

    return dataclasses.asdict(spec)


def spec_from_dict(data: dict[str, object]) -> DomainSpec:
    """The inverse of ``spec_to_dict``; raises ComputeError on malformed data."""
    try:
        fields = dict(data)
        disks = []
        for d in cast(Iterable[Any], fields.pop("disks", ()) or ()):
            disk = dict(d)
            iscsi = disk.pop("iscsi", None)
            disks.append(DiskSpec(**disk, iscsi=IscsiSource(**iscsi) if iscsi else None))
        nics = tuple(NicSpec(**dict(n)) for n in cast(Iterable[Any], fields.pop("interfaces", ()) or ()))
        return DomainSpec(**fields, disks=tuple(disks), interfaces=nics)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ComputeError(f"a malformed domain spec: {exc}") from None
