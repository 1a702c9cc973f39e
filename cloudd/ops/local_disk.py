"""A VM's node-local disk files (qcow2), created with qemu-img; never a shell string.

``ensure`` is idempotent (an existing disk is kept) and atomic (created under a temporary
name, then renamed), so an agent that crashes halfway leaves no half-made disk behind.
"""

from __future__ import annotations

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
            subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise ComputeError(f"{self.qemu_img} is not installed on this node") from None
        except subprocess.CalledProcessError as exc:
            tmp.unlink(missing_ok=True)
            raise ComputeError(f"creating disk {path.name}: {exc.stderr.strip()[:300]}") from None
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise ComputeError(f"creating disk {path.name} timed out", transient=True) from None
        os.replace(tmp, path)

    def remove(self, path: Path) -> None:
        """Delete one disk file; no-op when it is gone."""
        path.unlink(missing_ok=True)

    def list(self, directory: Path, pattern: str) -> list[Path]:
        return sorted(directory.glob(pattern)) if directory.is_dir() else []

    def remove_all(self, vm_dir: Path) -> None:
        """Remove the VM's directory (disks, serial log); nothing else."""
        if vm_dir.is_dir():
            shutil.rmtree(vm_dir)
