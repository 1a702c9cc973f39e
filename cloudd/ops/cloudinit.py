"""A VM's NoCloud cloud-init seed: a small ISO 9660 image labelled ``cidata``.

Cloud images look at first boot for a volume with that label and read ``meta-data``,
``user-data`` and, when present, ``network-config`` from it. ``write_seed`` is idempotent
(an image with the same files is kept) and atomic (written under a temporary name, then
renamed), so an agent that crashes halfway leaves either the old image or the new one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from cloudd.ops.compute import ComputeError

SEED_LABEL = "cidata"
MAX_SEED_BYTES = 1024 * 1024

# Rock Ridge (Linux) and Joliet (Windows) carry the real names; the plain ISO 9660
# level-1 name is only a fallback, and it cannot hold a '-'.
_ISO9660_NAMES = {"meta-data": "/METADATA.;1", "user-data": "/USERDATA.;1", "network-config": "/NETCONF.;1"}


@dataclass(frozen=True)
class SeedData:
    """What a VM learns about itself at first boot; every field may come from the user."""

    instance_id: str
    hostname: str
    ssh_keys: tuple[str, ...] = ()
    user_data: str | None = None  # any cloud-init format, passed on verbatim
    network_config: str | None = None  # network-config v1/v2 YAML
    swap_device: str | None = None  # a blank disk to format and use as swap (generated user data only)


def meta_data(seed: SeedData) -> str:
    """The ``meta-data`` file; ssh keys go in ``public-keys`` even when user data is given."""
    lines = [f"instance-id: {_quote(seed.instance_id)}", f"local-hostname: {_quote(seed.hostname)}"]
    if seed.ssh_keys:
        lines.append("public-keys:")
        lines += [f"  - {_quote(key)}" for key in seed.ssh_keys]
    return "\n".join(lines) + "\n"


def user_data(seed: SeedData) -> str:
    """The user's own user data verbatim, else a minimal ``#cloud-config``."""
    if seed.user_data is not None:
        return seed.user_data
    lines = ["#cloud-config", f"hostname: {_quote(seed.hostname)}"]
    if seed.ssh_keys:
        lines.append("ssh_authorized_keys:")
        lines += [f"  - {_quote(key)}" for key in seed.ssh_keys]
    if seed.swap_device:
        device = _quote(seed.swap_device)
        # format it once (a disk that already holds a filesystem or swap is left alone),
        # then let the mounts module add it to fstab and turn it on
        lines += [
            "bootcmd:",
            f"  - [sh, -c, 'blkid \"$1\" >/dev/null || mkswap \"$1\"', swap, {device}]",
            "mounts:",
            f"  - [{device}, none, swap, sw, \"0\", \"0\"]",
        ]
    return "\n".join(lines) + "\n"


def write_seed(path: Path, seed: SeedData) -> bool:
    """Write the seed image at ``path``; False when an image with the same files is already there.

    Raises ComputeError when the files exceed ``MAX_SEED_BYTES`` or the write fails; no
    temporary file is left behind, and an existing image is then unchanged.
    """
    files = _seed_files(seed)
    size = sum(len(content) for content in files.values())
    if size > MAX_SEED_BYTES:
        raise ComputeError(f"cloud-init seed is {size} bytes; the limit is {MAX_SEED_BYTES}")
    if _read_seed_files(path) == files:
        return False
    image = _seed_image(files)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace_atomically(path, image)
    except OSError as exc:
        raise ComputeError(f"writing cloud-init seed {path}: {exc.strerror or exc}") from None
    return True


def _quote(value: str) -> str:
    """``value`` as a YAML double-quoted scalar that cannot end early or span lines.

    A JSON string is valid YAML; non-ASCII and DEL are escaped too, because YAML treats
    some of them as line breaks or refuses them raw, and reads JSON's surrogate pairs
    as two separate characters.
    """
    escaped = json.dumps(value, ensure_ascii=False).replace("\x7f", "\\x7f")
    return escaped.encode("ascii", "backslashreplace").decode("ascii")


def _seed_files(seed: SeedData) -> dict[str, bytes]:
    files = {"meta-data": meta_data(seed).encode(), "user-data": user_data(seed).encode()}
    if seed.network_config is not None:
        files["network-config"] = seed.network_config.encode()
    return files


MIN_SEED_BYTES = 256 << 10


def _seed_image(files: dict[str, bytes]) -> bytes:
    """The ISO image holding ``files``; not byte-for-byte reproducible (pycdlib stamps the time)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=SEED_LABEL, app_ident_str="cloudd", joliet=3, rock_ridge="1.09")
    for name, content in files.items():
        iso.add_fp(io.BytesIO(content), len(content), _ISO9660_NAMES[name], rr_name=name, joliet_path=f"/{name}")
    image = io.BytesIO()
    iso.write_fp(image)
    iso.close()
    # zero padding past the volume's end: some probers (busybox's findfs/blkid, as in small
    # rescue images) read 68 KiB at once and skip a device that is smaller
    return image.getvalue().ljust(MIN_SEED_BYTES, b"\0")


def _read_seed_files(path: Path) -> dict[str, bytes] | None:
    """The files of the seed image at ``path`` by Rock Ridge name; None when absent or unreadable."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, PyCdlibException):
        return None
    try:
        files = {}
        for record in iso.list_children(rr_path="/"):
            if record.is_file() and record.rock_ridge is not None:
                name = record.rock_ridge.name().decode()
                content = io.BytesIO()
                iso.get_file_from_iso_fp(content, rr_path=f"/{name}")
                files[name] = content.getvalue()
        return files
    except (OSError, PyCdlibException, UnicodeDecodeError):
        return None
    finally:
        iso.close()


def _replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # qemu runs as another user
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
