"""The compute contract: what an agent asks of its host's hypervisor.

Every method is idempotent: asking for the state a domain already has does nothing, so
an agent that crashed halfway simply runs the same step again. Domains that cloudd
manages are named ``cloudd-<vm id>``; others on the host are never touched. Errors are
``ComputeError`` with a message for the VM's ``error`` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

DOMAIN_PREFIX = "cloudd-"


class ComputeError(Exception):
    """A hypervisor call failed; ``transient`` errors (lost connection, timeout) are retried."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str = "qcow2"  # qcow2 | raw
    target: str = "vda"
    bus: str = "virtio"
    device: str = "disk"  # disk | cdrom
    readonly: bool = False


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
    interfaces: tuple[str, ...] = field(default_factory=tuple)  # bridge names (network issue)
    kernel: str | None = None  # direct kernel boot (test guests); None boots from the disk
    initrd: str | None = None
    cmdline: str | None = None

    @property
    def domain_name(self) -> str:
        return DOMAIN_PREFIX + self.vm_id


@dataclass(frozen=True)
class DomainInfo:
    vm_id: str
    power: str  # running | shut_off | paused | crashed
    vnc_port: int | None = None


class ComputeDriver(Protocol):
    """One host's hypervisor. Implementations: ``LibvirtCompute``, ``FakeCompute``."""

    def domains(self) -> dict[str, DomainInfo]:
        """cloudd's domains on this host by VM id (absent VMs are simply missing)."""

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

    def reboot(self, vm_id: str) -> None:
        """Ask the guest to reboot (ACPI)."""

    def undefine(self, vm_id: str) -> None:
        """Remove the definition (forcing it off first); no-op when absent."""

    def usage(self, vm_id: str) -> dict[str, float]:
        """Counters of a running domain: ``cpu_time_s`` (cumulative), ``ram_used_mb``,
        ``disk_read_bytes``, ``disk_write_bytes`` (cumulative, all disks). Empty when off."""
