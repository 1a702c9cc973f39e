"""Volumes as sparse raw files in one directory: the embedded default, also usable on NFS.

Raw because every iSCSI target serves raw block data (tgt and LIO's fileio read the file
as the disk). A volume made from an image is a full (sparse) copy converted by qemu-img:
raw files have no copy-on-write, so ``cow_from_images`` is False. Files are created under
a temporary name and renamed, so a crash never leaves a half-made volume.
"""

from __future__ import annotations

import os
from pathlib import Path

from cloudd.ops.storage import PoolCapacity, Runner, StorageError, VolumeInfo, check_volume_id, run_command

SUFFIX = ".raw"


class FileVolumes:
    kind = "file"
    cow_from_images = False

    def __init__(self, directory: str | Path, runner: Runner = run_command, qemu_img: str = "qemu-img") -> None:
        self.dir = Path(directory)
        self.runner = runner
        self.qemu_img = qemu_img

    def path(self, volume_id: str) -> Path:
        return self.dir / f"{check_volume_id(volume_id)}{SUFFIX}"

    def create(self, volume_id: str, size_bytes: int, source: str | None = None) -> VolumeInfo:
        path = self.path(volume_id)
        if path.exists():
            return self._info(volume_id, path)
        if size_bytes <= 0:
            raise StorageError("a volume needs a size above 0")
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        tmp.unlink(missing_ok=True)
        try:
            if source is None:
                with open(tmp, "wb") as f:
                    f.truncate(size_bytes)  # sparse: takes no space until written
            else:
                # -S 4k keeps zeroes sparse; the image's format is probed by qemu-img itself
                self.runner([self.qemu_img, "convert", "-q", "-S", "4k", "-O", "raw", source, str(tmp)])
                if os.path.getsize(tmp) < size_bytes:
                    with open(tmp, "r+b") as f:
                        f.truncate(size_bytes)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"creating volume {volume_id}: {exc.strerror or exc}") from None
        except StorageError:
            tmp.unlink(missing_ok=True)
            raise
        return self._info(volume_id, path)

    def delete(self, volume_id: str) -> None:
        self.path(volume_id).unlink(missing_ok=True)

    def resize(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        path = self.path(volume_id)
        if not path.exists():
            raise StorageError(f"volume {volume_id} does not exist")
        if path.stat().st_size < size_bytes:
            with open(path, "r+b") as f:
                f.truncate(size_bytes)
        return self._info(volume_id, path)

    def info(self, volume_id: str) -> VolumeInfo | None:
        path = self.path(volume_id)
        return self._info(volume_id, path) if path.exists() else None

    def volumes(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name[: -len(SUFFIX)] for p in self.dir.glob(f"*{SUFFIX}") if p.is_file())

    def capacity(self) -> PoolCapacity:
        self.dir.mkdir(parents=True, exist_ok=True)
        fs = os.statvfs(self.dir)
        return PoolCapacity(total_bytes=fs.f_blocks * fs.f_frsize, free_bytes=fs.f_bavail * fs.f_frsize)

    @staticmethod
    def _info(volume_id: str, path: Path) -> VolumeInfo:
        st = path.stat()
        return VolumeInfo(volume_id, str(path), st.st_size, st.st_blocks * 512)
