"""Volumes as LVM logical volumes (``kind = "lvm"``), thick in a volume group or thin in a pool.

Every volume is the LV ``cloudd-<volume_id>`` tagged ``cloudd``. All tools run through the
injected ``runner`` with argument lists, never a shell; names are checked before they reach
an argument list. Sizes are asked for and read back in bytes (``--units b --nosuffix``); LVM
rounds sizes up to whole extents, so a volume may come out slightly bigger than asked for.

Copies that take more than one step (image copy, thin snapshot then grow) carry the extra tag
``cloudd_incomplete`` until the last step succeeds: a ``create`` that finds a volume with
that tag (a crash or a failed copy) removes it and starts again instead of returning it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

from cloudd.ops.storage import PoolCapacity, Runner, StorageError, VolumeInfo, check_volume_id, run_command

VG_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,62}$")
LV_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}$")
LV_PREFIX = "cloudd-"
TAG = "cloudd"
INCOMPLETE_TAG = "cloudd_incomplete"
LV_FIELDS = "lv_name,vg_name,lv_size,data_percent,lv_tags,lv_path,pool_lv"
VG_FIELDS = "vg_name,vg_size,vg_free"
REPORT_ARGS = ["--reportformat", "json", "--units", "b", "--nosuffix"]
NOT_FOUND = "Failed to find logical volume"  # lvs/lvremove on a missing LV (exit 5)


def check_lvm_name(name: str, what: str = "volume group") -> str:
    """VG and pool names go into argument lists: refuse option look-alikes, paths and odd characters."""
    if not VG_NAME_RE.fullmatch(name) or name in (".", "..") or "--" in name:
        raise StorageError(f"invalid {what} name {name!r}")
    return name


def lv_name(volume_id: str) -> str:
    return LV_PREFIX + check_volume_id(volume_id)


def lvm_unavailable_reason(
    search_path: str | None = None, dm_control: str = "/dev/mapper/control", proc_misc: str = "/proc/misc"
) -> str | None:
    """Why LVM volumes cannot work on this host, or None. ``search_path`` is where to look for
    the ``lvm`` binary (PATH when None); the other paths let tests simulate a host."""
    if shutil.which("lvm", path=search_path) is None:
        return "the lvm tools are not installed (apt install lvm2)"
    try:
        with open(proc_misc, encoding="utf-8") as misc:
            has_dm = any(line.split()[-1:] == ["device-mapper"] for line in misc)
    except OSError:
        has_dm = False
    if not has_dm or not os.path.exists(dm_control):
        return "this kernel has no device-mapper (no device-mapper in /proc/misc or no /dev/mapper/control)"
    return None


def _number(value: Any) -> float:
    """A report value: a string in ``json`` format, a number in ``json_std``; empty means 0."""
    if value in ("", None):
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StorageError(f"unexpected number {value!r} in an LVM report") from None


def _tags(value: Any) -> set[str]:
    if isinstance(value, list):  # json_std
        return {str(tag) for tag in value}
    return {tag for tag in str(value or "").split(",") if tag}


def parse_report(text: str, kind: str) -> list[dict[str, Any]]:
    """The rows of an ``lvs``/``vgs --reportformat json`` report (``kind`` is "lv" or "vg")."""
    try:
        document = json.loads(text)
        return [row for section in document["report"] for row in section.get(kind, [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StorageError(f"unreadable LVM {kind} report: {text[:200]!r}") from None


def _allocated(row: dict[str, Any]) -> int:
    size = int(_number(row["lv_size"]))
    if row.get("data_percent") in ("", None):
        return size  # thick: every extent is taken
    return int(size * _number(row["data_percent"]) / 100)


class LvmVolumes:
    """``VolumeBackend`` over the volume group ``vg``, thin when ``thin_pool`` names a pool of it.

    Thin volumes made from an image LV of the same pool are copy-on-write snapshots
    (``cow_from_images``); everything else is copied with ``qemu-img convert``.
    """

    kind = "lvm"

    def __init__(self, vg: str, thin_pool: str | None = None, runner: Runner = run_command, qemu_img: str = "qemu-img") -> None:
        self.vg = check_lvm_name(vg)
        self.thin_pool = check_lvm_name(thin_pool, "thin pool") if thin_pool is not None else None
        self.cow_from_images = thin_pool is not None
        self.runner = runner
        self.qemu_img = qemu_img

    def create(self, volume_id: str, size_bytes: int, source: str | None = None) -> VolumeInfo:
        name = lv_name(volume_id)
        _check_size(size_bytes)
        existing = self._row(name)
        if existing is not None and INCOMPLETE_TAG not in _tags(existing.get("lv_tags")):
            return self._info(volume_id, existing)
        if existing is not None:
            self._remove(name)
        if source is None:
            self.runner(self._lvcreate(name, size_bytes))
        else:
            self._create_from(name, size_bytes, _check_source(source))
        return self._require(volume_id)

    def delete(self, volume_id: str) -> None:
        self._remove(lv_name(volume_id))

    def resize(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        _check_size(size_bytes)
        current = self._require(volume_id)
        if size_bytes <= current.size_bytes:
            return current  # shrinking is never done here
        self.runner(["lvextend", "-L", f"{size_bytes}b", f"{self.vg}/{lv_name(volume_id)}"])
        return self._require(volume_id)

    def info(self, volume_id: str) -> VolumeInfo | None:
        row = self._row(lv_name(volume_id))
        return None if row is None else self._info(volume_id, row)

    def volumes(self) -> list[str]:
        rows = parse_report(self.runner(["lvs", *REPORT_ARGS, "-o", LV_FIELDS, self.vg]), "lv")
        names = [row["lv_name"] for row in rows if TAG in _tags(row.get("lv_tags"))]
        return sorted(name[len(LV_PREFIX):] for name in names if name.startswith(LV_PREFIX))

    def capacity(self) -> PoolCapacity:
        if self.thin_pool is not None:
            pool = self._row(self.thin_pool)
            if pool is None:
                raise StorageError(f"thin pool {self.vg}/{self.thin_pool} not found")
            total = int(_number(pool["lv_size"]))
            return PoolCapacity(total_bytes=total, free_bytes=max(0, total - _allocated(pool)))
        rows = parse_report(self.runner(["vgs", *REPORT_ARGS, "-o", VG_FIELDS, self.vg]), "vg")
        if not rows:
            raise StorageError(f"volume group {self.vg} not found")
        return PoolCapacity(total_bytes=int(_number(rows[0]["vg_size"])), free_bytes=int(_number(rows[0]["vg_free"])))

    # -- steps

    def _lvcreate(self, name: str, size_bytes: int, *tags: str) -> list[str]:
        args = ["lvcreate", "-y", "--wipesignatures", "y", "-n", name]
        if self.thin_pool is not None:
            args += ["-V", f"{size_bytes}b", "--thinpool", self.thin_pool]
        else:
            args += ["-L", f"{size_bytes}b"]
        for tag in (TAG, *tags):
            args += ["--addtag", tag]
        return [*args, self.vg]

    def _create_from(self, name: str, size_bytes: int, source: str) -> None:
        origin = self._same_pool_origin(source)
        try:
            if origin is not None:
                self._snapshot(name, size_bytes, origin)
            else:
                self._copy(name, size_bytes, source)
        except StorageError:
            self._remove(name)  # a half-made copy must not pass for a volume
            raise
        self.runner(["lvchange", "--deltag", INCOMPLETE_TAG, f"{self.vg}/{name}"])

    def _same_pool_origin(self, source: str) -> dict[str, Any] | None:
        """The image LV's report row when ``source`` is ``/dev/<vg>/<lv>`` in our thin pool."""
        prefix = f"/dev/{self.vg}/"
        if self.thin_pool is None or not source.startswith(prefix):
            return None
        origin = source[len(prefix):]
        if not LV_NAME_RE.fullmatch(origin):
            return None
        row = self._row(origin)
        return row if row is not None and row.get("pool_lv") == self.thin_pool else None

    def _snapshot(self, name: str, size_bytes: int, origin: dict[str, Any]) -> None:
        self.runner([
            "lvcreate", "-y", "-s", "--setactivationskip", "n", "-n", name,
            "--addtag", TAG, "--addtag", INCOMPLETE_TAG, f"{self.vg}/{origin['lv_name']}",
        ])
        if size_bytes > int(_number(origin["lv_size"])):
            self.runner(["lvextend", "-L", f"{size_bytes}b", f"{self.vg}/{name}"])

    def _copy(self, name: str, size_bytes: int, source: str) -> None:
        image = self._image_info(source)
        self.runner(self._lvcreate(name, max(size_bytes, image[1]), INCOMPLETE_TAG))
        args = [self.qemu_img, "convert", "-n", "-f", image[0], "-O", "raw"]
        if self.thin_pool is not None:
            args.append("--target-is-zero")  # a new thin LV reads as zeros: leave its holes unallocated
        self.runner([*args, source, f"/dev/{self.vg}/{name}"])

    def _image_info(self, source: str) -> tuple[str, int]:
        """(format, virtual size) of an image; only raw and qcow2 are accepted."""
        text = self.runner([self.qemu_img, "info", "--output", "json", source])
        try:
            details = json.loads(text)
            image_format, size = str(details["format"]), int(details["virtual-size"])
        except (ValueError, KeyError, TypeError):
            raise StorageError(f"qemu-img info gave no format/size for {source}") from None
        if image_format not in ("raw", "qcow2"):
            raise StorageError(f"image {source} is {image_format}, not raw or qcow2")
        return image_format, size

    def _remove(self, name: str) -> None:
        try:
            self.runner(["lvremove", "-f", f"{self.vg}/{name}"])
        except StorageError as exc:
            if not _is_not_found(exc):
                raise

    def _row(self, name: str) -> dict[str, Any] | None:
        try:
            text = self.runner(["lvs", *REPORT_ARGS, "-o", LV_FIELDS, f"{self.vg}/{name}"])
        except StorageError as exc:
            if _is_not_found(exc):
                return None
            raise
        rows = [row for row in parse_report(text, "lv") if row.get("lv_name") == name]
        return rows[0] if rows else None

    def _require(self, volume_id: str) -> VolumeInfo:
        found = self.info(volume_id)
        if found is None:
            raise StorageError(f"volume {volume_id} not found in {self.vg}")
        return found

    def _info(self, volume_id: str, row: dict[str, Any]) -> VolumeInfo:
        path = str(row.get("lv_path") or f"/dev/{self.vg}/{row['lv_name']}")
        return VolumeInfo(volume_id=volume_id, path=path, size_bytes=int(_number(row["lv_size"])), allocated_bytes=_allocated(row))


def _is_not_found(exc: StorageError) -> bool:
    return NOT_FOUND in str(exc)


def _check_size(size_bytes: int) -> None:
    if not isinstance(size_bytes, int) or size_bytes <= 0:
        raise StorageError(f"invalid size {size_bytes!r}")


def _check_source(source: str) -> str:
    """An image path becomes a qemu-img argument: an absolute path only (no options, no
    ``json:``/``nbd:`` pseudo-filenames, no control characters)."""
    if not source.startswith("/") or any(ord(char) < 32 for char in source) or len(source) > 4096:
        raise StorageError(f"invalid image path {source!r}")
    return source
