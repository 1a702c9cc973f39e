"""What a VM looks like on its node: its files and its domain definition.

Per VM, under ``<vm_dir>/<vm id>/``: ``disk.qcow2`` (the OS disk, a copy-on-write
overlay of its image), ``disk-<disk id>.qcow2`` (extra disks), ``seed.iso`` (the
NoCloud cloud-init seed) and ``serial.log``; the swap disk lives in ``swap_dir`` (the
node's local fast storage). Devices the guest sees:

| target | bus         | what                                   | guest by-id serial |
|--------|-------------|----------------------------------------|--------------------|
| vda    | virtio-blk  | OS disk                                | root               |
| vdb    | virtio-blk  | swap (when the VM has some)            | swap               |
| vdc…   | virtio-blk  | extra disks and iSCSI volumes, in the  | the disk or        |
|        |             | order they came (volumes once exported | volume id          |
|        |             | to this node; qemu's own initiator)    |                    |
| sda    | virtio-scsi | cloud-init seed (CD-ROM, label cidata) |                    |
| sdb    | virtio-scsi | the user's ISO (CD-ROM, hot-pluggable) |                    |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from cloudd.ops.cloudinit import SeedData
from cloudd.ops.compute import DiskSpec, DomainSpec, IscsiSource

SEED_TARGET = "sda"
ISO_TARGET = "sdb"
SWAP_TARGET = "vdb"


def hot_pluggable(target: str) -> bool:
    """Extra disks and the ISO come and go while a guest runs; the OS disk, swap and seed
    change only in the definition (a moved file takes effect at the next start)."""
    return target == ISO_TARGET or (target.startswith("vd") and target not in ("vda", SWAP_TARGET))


@dataclass(frozen=True)
class VmLayout:
    vm_dir: Path
    swap_dir: Path

    def dir(self, vm_id: str) -> Path:
        return self.vm_dir / vm_id

    def root_disk(self, vm_id: str) -> Path:
        return self.dir(vm_id) / "disk.qcow2"

    def extra_disk(self, vm_id: str, disk_id: str) -> Path:
        return self.dir(vm_id) / f"disk-{disk_id}.qcow2"

    def swap_disk(self, vm_id: str) -> Path:
        return self.swap_dir / f"{vm_id}-swap.qcow2"

    def seed(self, vm_id: str) -> Path:
        return self.dir(vm_id) / "seed.iso"

    def serial_log(self, vm_id: str) -> Path:
        return self.dir(vm_id) / "serial.log"

    def disks(self, vm: dict[str, Any], iso_path: str | None, firmware_boot: bool = True, volumes: Mapping[str, IscsiSource] | None = None) -> tuple[DiskSpec, ...]:
        vm_id = vm["id"]
        disks = [DiskSpec(str(self.root_disk(vm_id)), target="vda", serial="root", boot_order=1 if firmware_boot else None, size_gb=vm["disk_gb"])]
        if vm.get("swap_mb"):
            disks.append(DiskSpec(str(self.swap_disk(vm_id)), target=SWAP_TARGET, serial="swap"))
        for extra in vm.get("disks", ()):
            disks.append(DiskSpec(str(self.extra_disk(vm_id, extra["id"])), target=extra["target"], serial=extra["id"]))
        for ref in vm.get("volumes", ()):
            source = (volumes or {}).get(ref["id"])
            if source is not None:  # only once exported to this node
                disks.append(DiskSpec(source.url, format="raw", target=ref["target"], serial=ref["id"], iscsi=source))
        disks.append(DiskSpec(str(self.seed(vm_id)), format="raw", target=SEED_TARGET, bus="scsi", device="cdrom"))
        if iso_path:  # booted when the OS disk is blank: an installer
            disks.append(DiskSpec(iso_path, format="raw", target=ISO_TARGET, bus="scsi", device="cdrom", boot_order=2 if firmware_boot else None))
        return tuple(disks)

    def spec(self, vm: dict[str, Any], boot: dict[str, str], iso_path: str | None, volumes: Mapping[str, IscsiSource] | None = None, **host: Any) -> DomainSpec:
        """The domain of ``vm``; ``boot`` holds kernel/initrd/cmdline for direct kernel boot,
        ``host`` the node's settings (domain_type, vnc_listen)."""
        return DomainSpec(
            vm_id=vm["id"],
            name=vm["name"],
            vcpus=vm["vcpus"],
            ram_mb=vm["ram_mb"],
            disks=self.disks(vm, iso_path, firmware_boot=not boot, volumes=volumes),
            vnc_password=vm.get("vnc_password"),
            serial_log=str(self.serial_log(vm["id"])),
            cpu_model=vm.get("cpu_model"),
            **host,
            **boot,
        )


def seed_data(vm: dict[str, Any]) -> SeedData:
    return SeedData(
        instance_id=vm["id"],
        hostname=vm["name"],
        ssh_keys=tuple(vm.get("ssh_keys") or ()),
        user_data=vm.get("user_data"),
        swap_device="/dev/disk/by-id/virtio-swap" if vm.get("swap_mb") else None,
    )
