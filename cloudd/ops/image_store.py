"""A node's image files: uploads it received, copies it fetched, and their checks.

Uploaded images live in ``<data dir>/images/<id>.<format>`` on the nodes named in the
image's ``copies``; a transfer in progress writes ``<id>.part`` and renames it only once
its SHA-256 (and, for an upload, its content) has been checked, so a crash never leaves a
half-written image under its final name. Images registered by path have no ``copies``:
their file exists on every hypervisor already.

Keep ONE ``ImageStore`` per node (``NodeRuntime.images``): it serializes the transfers
of each image, and ``prune`` leaves alone the files of transfers it knows are running.

An uploaded file is checked with ``qemu-img info -f <format>`` (an argument list, never a
shell; under ``prlimit`` where present, with a timeout): the format must be the declared
one, and a qcow2 must not name a backing file or an external data file, which would let
a guest read any file of the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Callable

import httpx
import orjson

from cloudd.errors import CloudError
from cloudd.ops.compute import ComputeError
from cloudd.security import sign_node_request

if TYPE_CHECKING:
    from cloudd.env import Env

log = logging.getLogger(__name__)

Fetch = Callable[[str, str], AsyncIterator[bytes]]
"""``fetch(holder node, image id)``: the bytes of that node's copy, in chunks. Raises
``ComputeError`` (``transient`` when the holder cannot be reached)."""

MAX_VIRTUAL_SIZE = 64 << 40
ISO_MAGIC_OFFSET, ISO_MAGIC = 32769, b"CD001"
# what a file declared "raw" must not be: a guest would boot a container format's bytes
FOREIGN_MAGIC = {b"QFI\xfb": "qcow2", b"KDMV": "vmdk", b"vhdxfile": "vhdx", b"conectix": "vpc"}
INSPECT_LIMITS = ["--as=1073741824", "--cpu=30"]  # qemu-img on untrusted input: 1 GiB, 30 s of CPU


class ImageRefused(Exception):
    """The file is not an acceptable image; the message says why, for the user."""


class UploadTooLarge(Exception):
    """The body went past the allowed size (the partial file is gone)."""


class TransferBusy(Exception):
    """Another transfer of the same image is running on this node."""


@dataclass(frozen=True)
class Received:
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ImageFacts:
    virtual_size_bytes: int

    @property
    def virtual_size_gb(self) -> float:
        """GiB rounded up to 1/1000, so a disk of that size always holds the image."""
        return -(-self.virtual_size_bytes * 1000 // (1 << 30)) / 1000


def sha256_file(path: Path, block: int = 4 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


class NoSpace(ComputeError):
    """Taking the file would leave less than the reserve free on the node's disk."""


class ImageStore:
    MAX_UPLOADS = 4  # at once on one node

    def __init__(self, data_dir: str | Path, fetch: Fetch, *, node_name: str = "", qemu_img: str = "qemu-img",
                 inspect_timeout_s: float = 60.0, write_block: int = 4 << 20, reserve_bytes: int = 2 << 30) -> None:
        self.dir = Path(data_dir) / "images"
        self.fetch = fetch
        self.node_name = node_name
        self.qemu_img = qemu_img
        self.inspect_timeout_s = inspect_timeout_s
        self.write_block = write_block
        self.reserve_bytes = reserve_bytes  # kept free for the Raft journal, snapshots and VM disks
        self.uploads = 0
        self.unreported: set[str] = set()  # fetched copies not yet recorded with image.copied
        self._verified: dict[str, str] = {}  # image id -> sha256 of the local file, checked
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def for_node(cls, data_dir: str | Path, node_name: str, secret: str, api_addr_of: Callable[[str], str | None]) -> "ImageStore":
        """The production store: fetches copies from other nodes with node-signed GETs."""
        return cls(data_dir, NodeFetch(node_name, secret, api_addr_of), node_name=node_name)

    # --- names ---

    def file_path(self, image: dict[str, Any]) -> Path:
        return self.dir / f"{image['id']}.{image['format']}"

    def part_path(self, image_id: str) -> Path:
        return self.dir / f"{image_id}.part"

    def busy(self, image_id: str) -> bool:
        lock = self._locks.get(image_id)
        return lock is not None and lock.locked()

    @asynccontextmanager
    async def _exclusive(self, image_id: str, wait: bool) -> AsyncIterator[None]:
        lock = self._locks.setdefault(image_id, asyncio.Lock())
        if not wait and lock.locked():
            raise TransferBusy(f"a transfer of image {image_id} is already running on this node")
        async with lock:
            yield

    # --- receiving a file (an upload or a copy) ---

    async def receive(self, image_id: str, chunks: AsyncIterable[bytes], max_bytes: int) -> Received:
        """Write ``chunks`` to ``<id>.part``, hashing on the way; the part file is removed
        on any failure (``UploadTooLarge`` past ``max_bytes``, the source's own errors)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.check_space(0)
        part = self.part_path(image_id)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        f = await asyncio.to_thread(open, part, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(f"the file is larger than {max_bytes} bytes")
                buffer += chunk
                if len(buffer) >= self.write_block:
                    self.check_space(len(buffer))
                    await asyncio.to_thread(_write, f, digest, bytes(buffer))
                    buffer.clear()
            await asyncio.to_thread(_write, f, digest, bytes(buffer), True)
        except BaseException:
            await asyncio.to_thread(f.close)
            part.unlink(missing_ok=True)
            raise
        await asyncio.to_thread(f.close)
        return Received(part, size, digest.hexdigest())

    async def inspect(self, path: Path, fmt: str) -> ImageFacts:
        """Check an untrusted file against its declared format; ``ImageRefused`` says why not."""
        if fmt == "iso":
            return await asyncio.to_thread(_inspect_iso, path)
        if fmt == "raw":
            head = await asyncio.to_thread(_head, path, 8)
            for magic, name in FOREIGN_MAGIC.items():
                if head.startswith(magic):
                    raise ImageRefused(f"the file is a {name} image, not raw" + ("; upload it as qcow2" if name == "qcow2" else ""))
        info = await self._qemu_img_info(path, fmt)
        if info.get("format") != fmt:
            raise ImageRefused(f"the file is {info.get('format')}, not {fmt}")
        if "backing-filename" in info or "full-backing-filename" in info:
            raise ImageRefused("a qcow2 image with a backing file is not accepted: flatten it first (qemu-img convert -O qcow2 in out)")
        specific = (info.get("format-specific") or {}).get("data") or {}
        if specific.get("data-file") is not None:
            raise ImageRefused("a qcow2 image with an external data file is not accepted: convert it first (qemu-img convert -O qcow2 in out)")
        if info.get("encrypted") or specific.get("encrypt"):
            raise ImageRefused("encrypted images are not accepted")
        if specific.get("corrupt"):
            raise ImageRefused("the qcow2 image is marked corrupt")
        size = info.get("virtual-size")
        if not isinstance(size, int) or not 0 < size <= MAX_VIRTUAL_SIZE:
            raise ImageRefused(f"the virtual size {size!r} is not between 1 byte and 64 TiB")
        return ImageFacts(size)

    async def _qemu_img_info(self, path: Path, fmt: str) -> dict[str, Any]:
        qemu_img = shutil.which(self.qemu_img)
        if qemu_img is None:  # the node's problem, not the file's
            raise ComputeError(f"{self.qemu_img} is not installed on this node")
        args = [qemu_img, "info", "--output=json", "-f", fmt, str(path)]
        prlimit = shutil.which("prlimit")
        if prlimit:
            args = [prlimit, *INSPECT_LIMITS, "--", *args]
        try:
            proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError:
            raise ComputeError(f"{self.qemu_img} is not installed on this node") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.inspect_timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise ComputeError("inspecting the image took too long (the node may be busy)", transient=True) from None
        if proc.returncode in (126, 127):  # prlimit could not run qemu-img
            raise ComputeError(f"{self.qemu_img} could not be run on this node")
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise ImageRefused(f"qemu-img cannot read the file as {fmt}: " + (message[-1][:300] if message else f"exit status {proc.returncode}"))
        try:
            info = orjson.loads(out)
        except orjson.JSONDecodeError:
            raise ImageRefused("qemu-img gave no readable description of the file") from None
        if not isinstance(info, dict):
            raise ImageRefused("qemu-img gave no readable description of the file")
        return info

    def _install(self, image: dict[str, Any], received: Received) -> Path:
        final = self.file_path(image)
        os.replace(received.path, final)
        self._verified[image["id"]] = received.sha256
        return final

    def check_space(self, more_bytes: int) -> None:
        """Raise NoSpace when writing ``more_bytes`` would eat into the reserve."""
        self.dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.dir).free
        if free - more_bytes < self.reserve_bytes:
            raise NoSpace(f"this node keeps {self.reserve_bytes >> 20} MiB free and has {free >> 20} MiB: no room for the file")

    async def accept_upload(self, image: dict[str, Any], chunks: AsyncIterable[bytes], max_bytes: int) -> tuple[Received, ImageFacts]:
        """Receive, check and install an uploaded file under its final name.

        Raises ``TransferBusy`` (this image, or ``MAX_UPLOADS`` others, are being
        uploaded here), ``UploadTooLarge``, ``NoSpace``, ``ImageRefused`` or the source's
        own errors (a client that went away); nothing is left behind when it raises.
        """
        if self.uploads >= self.MAX_UPLOADS:
            raise TransferBusy(f"{self.uploads} uploads are running on this node")
        self.uploads += 1
        try:
            return await self._accept(image, chunks, max_bytes)
        finally:
            self.uploads -= 1

    async def _accept(self, image: dict[str, Any], chunks: AsyncIterable[bytes], max_bytes: int) -> tuple[Received, ImageFacts]:
        async with self._exclusive(image["id"], wait=False):
            received = await self.receive(image["id"], chunks, max_bytes)
            try:
                facts = await self.inspect(received.path, image["format"])
            except BaseException:
                received.path.unlink(missing_ok=True)
                raise
            self._install(image, received)
            return received, facts

    # --- the contract of the VM agent ---

    def path_of(self, image: dict[str, Any]) -> str:
        """Where ``image``'s file is (or will be, once fetched) on this node; no I/O."""
        return str(image["path"]) if "copies" not in image else str(self.file_path(image))

    async def local_path(self, image: dict[str, Any]) -> str:
        """The path of ``image``'s file on this node, fetching a copy first if needed.

        Images registered by path: ``image["path"]``. Uploaded images: the local copy
        (its SHA-256 verified once per process), else one fetched from a node in
        ``copies``, verified, then installed; the id then joins ``unreported`` until
        ``report_copies`` records it. Raises ``ComputeError``, ``transient`` when the
        image is still uploading or no holder could be reached.
        """
        if "copies" not in image:
            return str(image["path"])
        if image.get("state") != "ready":
            raise ComputeError(f"image {image['name']} is {image.get('state')}, not ready", transient=image.get("state") == "uploading")
        async with self._exclusive(image["id"], wait=True):
            final = self.file_path(image)
            if final.is_file():
                if self._verified.get(image["id"]) == image["sha256"]:
                    return str(final)
                if await asyncio.to_thread(sha256_file, final) == image["sha256"]:
                    self._verified[image["id"]] = image["sha256"]
                    return str(final)
                log.warning("image %s: the local copy does not match its SHA-256; fetching it again", image["id"])
                final.unlink(missing_ok=True)
            await self._fetch_copy(image)
            return str(final)

    async def _fetch_copy(self, image: dict[str, Any]) -> None:
        holders = [n for n in image["copies"] if n != self.node_name]
        random.shuffle(holders)
        if not holders:
            raise ComputeError(f"image {image['name']}: no other node holds a copy")
        problems, transient = [], False
        for holder in holders:
            try:
                received = await self.receive(image["id"], self.fetch(holder, image["id"]), image["size_bytes"])
            except ComputeError as exc:
                problems.append(f"{holder}: {exc}")
                transient = transient or exc.transient
                continue
            except UploadTooLarge:
                problems.append(f"{holder}: the copy is larger than the image")
                continue
            except OSError as exc:
                raise ComputeError(f"image {image['name']}: cannot store a copy on this node: {exc.strerror or exc}", transient=True) from None
            if received.sha256 != image["sha256"] or received.size_bytes != image["size_bytes"]:
                received.path.unlink(missing_ok=True)
                problems.append(f"{holder}: the copy does not match the image's SHA-256")
                continue
            self._install(image, received)
            self.unreported.add(image["id"])
            log.info("image %s: fetched a copy from %s", image["id"], holder)
            return
        raise ComputeError(f"image {image['name']}: could not fetch a copy (" + "; ".join(problems) + ")", transient=transient)

    async def report_copies(self, env: Env) -> None:
        """Record the copies fetched since the last call (``image.copied``); a refused
        report (the image was deleted meanwhile) is dropped, an uncommitted one kept."""
        for image_id in sorted(self.unreported):
            try:
                outcome = await env.propose("image.copied", {"id": image_id, "node": env.node_name})
            except CloudError as exc:
                log.warning("image %s: copy not recorded yet: %s", image_id, exc.message)
                continue
            self.unreported.discard(image_id)
            if "error" in outcome:
                log.info("image %s: copy not recorded: %s", image_id, outcome["error"]["message"])

    async def ensure_local(self, env: Env, image: dict[str, Any]) -> str:
        """``local_path``, then ``report_copies``: what an agent calls before using an image."""
        path = await self.local_path(image)
        if self.unreported:
            await self.report_copies(env)
        return path

    # --- removal ---

    def remove(self, image_id: str) -> None:
        """Delete this node's files of an image: its copy, and a partial file unless a
        transfer is writing it (that transfer's own failure path removes it)."""
        for suffix in ("qcow2", "raw", "iso") if self.busy(image_id) else ("qcow2", "raw", "iso", "part"):
            (self.dir / f"{image_id}.{suffix}").unlink(missing_ok=True)
        self._verified.pop(image_id, None)
        self.unreported.discard(image_id)
        if not self.busy(image_id):
            self._locks.pop(image_id, None)

    async def prune(self, images: dict[str, dict[str, Any]]) -> list[str]:
        """Delete local files no image needs: images gone from the state or refused, and
        partial files of transfers not running. ``images``: a fresh copy of the state's
        images (an older one could name a file of an image created since). Returns the
        names removed."""
        if not self.dir.is_dir():
            return []
        removed = []
        for entry in sorted(self.dir.iterdir()):
            image_id, dot, suffix = entry.name.partition(".")
            if not dot or suffix not in ("qcow2", "raw", "iso", "part") or self.busy(image_id) or not entry.is_file():
                continue
            image = images.get(image_id)
            keep = image is not None and "copies" in image and suffix == image["format"] and image.get("state") in ("uploading", "ready")
            if keep:
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
            if suffix != "part":
                self._verified.pop(image_id, None)
                self.unreported.discard(image_id)
        for image_id in [i for i in self._locks if i not in images and not self.busy(i)]:
            del self._locks[image_id]
        if removed:
            log.info("removed image files no image needs: %s", ", ".join(removed))
        return removed


def _write(f: Any, digest: Any, data: bytes, last: bool = False) -> None:
    f.write(data)
    digest.update(data)
    if last:
        f.flush()
        os.fsync(f.fileno())


def _head(path: Path, size: int, offset: int = 0) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _inspect_iso(path: Path) -> ImageFacts:
    if _head(path, len(ISO_MAGIC), ISO_MAGIC_OFFSET) != ISO_MAGIC:
        raise ImageRefused("the file is not an ISO 9660 image (no CD001 signature at offset 32769)")
    return ImageFacts(path.stat().st_size)


class NodeFetch:
    """Fetch an image from another node's ``GET /api/v1/images/{id}/file``, signed as this
    node (a fresh, single-use ``X-Cloudd-Node`` signature per request)."""

    def __init__(self, node_name: str, secret: str, api_addr_of: Callable[[str], str | None], timeout_s: float = 30.0) -> None:
        self.node_name = node_name
        self.secret = secret
        self.api_addr_of = api_addr_of
        self.timeout_s = timeout_s

    async def __call__(self, holder: str, image_id: str) -> AsyncIterator[bytes]:
        addr = self.api_addr_of(holder)
        if addr is None:
            raise ComputeError(f"node {holder} is not a member of the cluster")
        path = f"/api/v1/images/{image_id}/file"
        header = sign_node_request(self.secret, self.node_name, "GET", path, b"")
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client, client.stream("GET", f"http://{addr}{path}", headers={"X-Cloudd-Node": header}) as reply:
                if reply.status_code != 200:
                    raise ComputeError(f"node {holder} answered {reply.status_code}: {_error_message(await reply.aread())}", transient=reply.status_code >= 500)
                async for chunk in reply.aiter_bytes(1 << 20):
                    yield chunk
        except httpx.HTTPError as exc:
            raise ComputeError(f"node {holder} could not be reached: {exc.__class__.__name__}", transient=True) from None


def _error_message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["message"])[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
