"""The storage contracts: volumes in a pool, and their iSCSI exports.

A storage node's agent asks a ``VolumeBackend`` for the block devices (or raw files) of
volumes, and an ``ExportBackend`` to offer each one as an iSCSI target to the hypervisor
that runs the volume's VM. Every method is idempotent (asking for what already exists
does nothing) and raises ``StorageError`` (``transient=True`` when retrying may help).

Implementations: ``file_volumes.FileVolumes`` (raw files in a directory, the embedded
default, also on shared NFS), ``lvm.LvmVolumes`` (logical volumes), ``drbd`` (a DRBD
resource per volume between two storage nodes, on top of LVM); ``tgt.TgtExports``
(userspace target, works everywhere) and ``lio.LioExports`` (the kernel's LIO through
rtslib-fb); ``fake_storage`` for the simulator and unit tests.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Protocol

IQN_RE = re.compile(r"^iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[A-Za-z0-9._:-]+)?$")
VOLUME_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")  # also goes into IQNs: lowercase, no "_" (RFC 3720)
IQN_PREFIX = "iqn.2026-11.io.cloudd"


class StorageError(Exception):
    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def check_volume_id(volume_id: str) -> str:
    """Volume ids become file names, LV names and target names: refuse anything else."""
    if not VOLUME_ID_RE.fullmatch(volume_id):
        raise StorageError(f"invalid volume id {volume_id!r}")
    return volume_id


def node_initiator(node: str) -> str:
    """The iSCSI initiator name a hypervisor's qemu logs in with."""
    return f"{IQN_PREFIX}:node:{node}"


def volume_target(volume_id: str) -> str:
    """The iSCSI target name of a volume's export."""
    return f"{IQN_PREFIX}:volume:{check_volume_id(volume_id)}"


@dataclass(frozen=True)
class VolumeInfo:
    volume_id: str
    path: str  # what an export serves: a block device or a raw file
    size_bytes: int
    allocated_bytes: int  # what it takes in the pool now (thin/sparse volumes take less)


@dataclass(frozen=True)
class PoolCapacity:
    total_bytes: int
    free_bytes: int


class VolumeBackend(Protocol):
    kind: str  # "file", "lvm", "drbd"
    cow_from_images: bool  # True when create(source=…) shares blocks with the image

    def create(self, volume_id: str, size_bytes: int, source: str | None = None) -> VolumeInfo:
        """Make the volume (blank, or a copy of the raw/qcow2 image file ``source``, grown to
        ``size_bytes``). An existing volume is returned as it is."""

    def delete(self, volume_id: str) -> None:
        """Remove the volume and its data; nothing when it is gone."""

    def resize(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Grow an unused volume (the caller refuses shrinking unless forced)."""

    def info(self, volume_id: str) -> VolumeInfo | None: ...

    def volumes(self) -> list[str]:
        """The ids of every volume in the pool."""

    def capacity(self) -> PoolCapacity: ...


@dataclass(frozen=True)
class ExportSpec:
    """One volume offered as LUN 1 of its own target, to ``initiators`` only, with CHAP."""

    target: str  # iqn
    path: str
    initiators: tuple[str, ...]
    chap_user: str
    chap_password: str


@dataclass(frozen=True)
class ExportState:
    target: str
    path: str | None
    initiators: tuple[str, ...]
    chap_users: tuple[str, ...]
    sessions: int = 0


@dataclass
class ExportStats:
    """Cumulative counters of one export (the agent adds up sessions that went away)."""

    read_bytes: int = 0
    read_ops: int = 0
    write_bytes: int = 0
    write_ops: int = 0
    per_session: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


class ExportBackend(Protocol):
    kind: str  # "tgt", "lio"
    portal: str  # host:port initiators connect to

    def ensure(self, spec: ExportSpec) -> None:
        """Make the target match ``spec``: LUN, ACL and CHAP account (idempotent)."""

    def set_initiators(self, target: str, initiators: tuple[str, ...]) -> None:
        """Switch who may log in, adding the new ones before removing the old ones'
        access, so the switch is one step for a fenced node: once this returns, the
        removed initiators' new logins fail and their sessions are closed."""

    def remove(self, target: str) -> None:
        """Delete the target (closing its sessions); nothing when it is gone."""

    def exports(self) -> dict[str, ExportState]: ...

    def stats(self, target: str) -> ExportStats:
        """Counters of the sessions open now (per session id)."""


Runner = Callable[[list[str]], str]


def run_command(args: list[str], timeout: float = 120.0) -> str:
    """Run a tool (never through a shell); its stdout, or StorageError with its stderr."""
    try:
        done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise StorageError(f"{args[0]} is not installed on this node") from None
    except subprocess.CalledProcessError as exc:
        raise StorageError(f"{' '.join(args[:3])}…: {(exc.stderr or exc.stdout).strip()[:300]}") from None
    except subprocess.TimeoutExpired:
        raise StorageError(f"{' '.join(args[:3])}… timed out", transient=True) from None
    return done.stdout
