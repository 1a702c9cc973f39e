"""A ``drbd`` storage pool: each volume an LV on both storage nodes, joined by DRBD.

``ReplicatedVolumes`` is one node's side of such a pool and a ``VolumeBackend``: the
backing LV comes from ``lvm.LvmVolumes`` (grown by the room DRBD's internal metadata
takes, so the replicated device has the size asked for), the resource from
``drbd.DrbdVolumes``, and what an export serves is the DRBD device ``/dev/drbd<minor>``,
never the LV underneath. Which side is Primary is the state's decision
(``cloudd.commands.replication``); the storage agent calls ``make_primary`` /
``make_secondary`` to follow it. The resource of each volume (minor, port, both sides'
addresses and disks) is handed in with ``configure`` before the agent touches a volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloudd.ops.drbd import DrbdPeer, DrbdResource, DrbdStatus, DrbdVolumes
from cloudd.ops.lvm import LvmVolumes, lv_name
from cloudd.ops.storage import PoolCapacity, Runner, StorageError, VolumeInfo, run_command

MIB = 1 << 20


def metadata_bytes(size_bytes: int) -> int:
    """Room for DRBD's internal metadata behind ``size_bytes`` of data (one peer: a bitmap
    bit per 4 KiB, the activity log and the superblock), generously rounded up to 4 MiB."""
    needed = size_bytes // 32768 + MIB
    return -(-needed // (4 * MIB)) * (4 * MIB)


@dataclass(frozen=True)
class ReplicaSide:
    """One storage node of a replicated volume, as the state knows it."""

    node: str  # the host name DRBD's ``on`` section matches (``uname -n``)
    host: str  # the IP address it replicates over
    node_id: int


@dataclass(frozen=True)
class ReplicaLayout:
    minor: int
    port: int
    sides: tuple[ReplicaSide, ReplicaSide]


class ReplicatedVolumes:
    """This node's side of a ``drbd`` pool (``kind = "drbd"``)."""

    kind = "drbd"
    cow_from_images = False

    def __init__(self, vg: str, thin_pool: str | None = None, runner: Runner = run_command, config_dir: str | Path = "/etc/drbd.d") -> None:
        self.lvm = LvmVolumes(vg, thin_pool=thin_pool, runner=runner)
        self.drbd = DrbdVolumes(runner=runner, config_dir=config_dir)
        self.runner = runner
        self.layouts: dict[str, ReplicaLayout] = {}

    def configure(self, volume_id: str, layout: ReplicaLayout) -> None:
        self.layouts[volume_id] = layout

    def _resource(self, volume_id: str) -> DrbdResource:
        layout = self.layouts.get(volume_id)
        if layout is None:
            raise StorageError(f"volume {volume_id}: its DRBD layout is not known yet", transient=True)
        disk = f"/dev/{self.lvm.vg}/{lv_name(volume_id)}"  # the same volume group name on both nodes
        peers = tuple(DrbdPeer(side.node, side.host, side.node_id, disk) for side in layout.sides)
        return DrbdResource(volume_id, layout.minor, layout.port, (peers[0], peers[1]))

    def _device_info(self, volume_id: str, backing: VolumeInfo) -> VolumeInfo:
        resource = self._resource(volume_id)
        size = backing.size_bytes - metadata_bytes(backing.size_bytes)
        return VolumeInfo(volume_id=volume_id, path=resource.device, size_bytes=max(0, size), allocated_bytes=backing.allocated_bytes)

    # -- VolumeBackend

    def create(self, volume_id: str, size_bytes: int, source: str | None = None, initial_primary: bool = False) -> VolumeInfo:
        """Make this side: the backing LV, the config, fresh metadata, the resource up.
        ``initial_primary``: this side starts as Primary (``--force`` once: both sides are
        Inconsistent until the first sync, which this promotion starts from here) and
        receives the image's data, which DRBD then copies to the peer."""
        resource = self._resource(volume_id)
        fresh = self.lvm.info(volume_id) is None
        backing = self.lvm.create(volume_id, size_bytes + metadata_bytes(size_bytes))
        self.drbd.write_config(resource)
        if fresh:
            self.drbd.create_metadata(volume_id)
        self.drbd.up(volume_id)
        if initial_primary and fresh:
            self.drbd.primary(volume_id, force=True)
            if source is not None:
                self.runner(["qemu-img", "convert", "-n", "-O", "raw", source, resource.device])
        return self._device_info(volume_id, backing)

    def delete(self, volume_id: str) -> None:
        self.drbd.down(volume_id)
        self.drbd.remove_config(volume_id)
        self.lvm.delete(volume_id)

    def resize(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        """Grow this side's LV; the Primary then grows the device (``drbdadm resize`` waits
        for the peer's disk to be as large: an error until it is, tried again)."""
        backing = self.lvm.resize(volume_id, size_bytes + metadata_bytes(size_bytes))
        status = self.drbd.status(volume_id)
        if status is not None and status.role == "Primary":
            self.runner(["drbdadm", "resize", self._resource(volume_id).name])
        return self._device_info(volume_id, backing)

    def info(self, volume_id: str) -> VolumeInfo | None:
        backing = self.lvm.info(volume_id)
        return None if backing is None else self._device_info(volume_id, backing)

    def volumes(self) -> list[str]:
        return self.lvm.volumes()

    def capacity(self) -> PoolCapacity:
        return self.lvm.capacity()

    # -- roles

    def status(self, volume_id: str) -> DrbdStatus | None:
        return self.drbd.status(volume_id)

    def make_primary(self, volume_id: str) -> DrbdStatus:
        """Become Primary when the state says so: an UpToDate Secondary only, never over a
        connected Primary peer (``DrbdVolumes.promote_after_peer_loss``)."""
        return self.drbd.promote_after_peer_loss(volume_id)

    def make_secondary(self, volume_id: str, discard_my_data: bool = False) -> None:
        """Step down (the caller has removed the export first). ``discard_my_data``: this side
        was Primary while the other was promoted (it had been lost): reconnect throwing away
        what it wrote since, so the promoted side's data wins the resync."""
        self.drbd.secondary(volume_id)
        if discard_my_data:
            name = self._resource(volume_id).name
            self.runner(["drbdadm", "disconnect", name])
            self.runner(["drbdadm", "connect", "--discard-my-data", name])
