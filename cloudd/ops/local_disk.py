"""A VM's node-local disk files (qcow2), created with qemu-img; never a shell string.

``ensure`` is idempotent (an existing disk is kept) and atomic (created under a temporary
name, then renamed), so an agent that crashes halfway leaves no half-made disk behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from cloudd.ops.compute import ComputeError


class LocalDisks:
    def __init__(self, qemu_img: str = "qemu-img") -> None:
        self.qemu_img = qemu_img

    def ensure(self, path: Path, size_gb: float, backing: str | None = None, backing_format: str | None = None) -> None:
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".creating")
        args = [self.qemu_img, "create", "-q", "-f", "qcow2"]
        if backing:
            args += ["-b", backing, "-F", backing_format or "qcow2"]
        args += [str(tmp), f"{max(1, int(size_gb * 1024))}M"]
        try:
            self._run(args, f"creating disk {path.name}")
        except ComputeError:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)

    def virtual_size(self, path: Path) -> int:
        """The disk's size as its guest sees it, in bytes."""
        out = self._run([self.qemu_img, "info", "--output=json", "-U", str(path)], f"reading disk {path.name}")
        try:
            return int(json.loads(out)["virtual-size"])
        except (ValueError, KeyError, TypeError):
            raise ComputeError(f"qemu-img info gave no size for {path.name}") from None

    def grow(self, path: Path, size_gb: float) -> bool:
        """Grow a disk that is not in use to ``size_gb`` (never shrinks); True if it grew."""
        want = max(1, int(size_gb * 1024)) << 20
        if self.virtual_size(path) >= want:
            return False
        self._run([self.qemu_img, "resize", "-q", str(path), str(want)], f"growing disk {path.name}")
        return True

    def _run(self, args: list[str], what: str) -> str:
        try:
            done = subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise ComputeError(f"{self.qemu_img} is not installed on this node") from None
        except subprocess.CalledProcessError as exc:
            raise ComputeError(f"{what}: {exc.stderr.strip()[:300]}") from None
        except subprocess.TimeoutExpired:
            raise ComputeError(f"{what} timed out", transient=True) from None
        return done.stdout

    def remove(self, path: Path) -> None:
        """Delete one disk file; no-op when it is gone."""
        path.unlink(missing_ok=True)

    def list(self, directory: Path, pattern: str) -> list[Path]:
        return sorted(directory.glob(pattern)) if directory.is_dir() else []

    def remove_all(self, vm_dir: Path) -> None:
        """Remove the VM's directory (disks, serial log); nothing else."""
        if vm_dir.is_dir():
            shutil.rmtree(vm_dir)
