"""ImageStore: checking uploads with the real qemu-img, fetching copies, pruning."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, TypeVar

import pytest

from cloudd.ops.compute import ComputeError
from cloudd.ops.image_store import (
    ImageRefused,
    ImageStore,
    TransferBusy,
    UploadTooLarge,
)
from tests.factories import PW_HASH, admit, initialized
from tests.fake_env import FakeEnv

T = TypeVar("T")
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def chunks_of(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, timeout=30)


def fake_iso(size: int = 40_000) -> bytes:
    data = bytearray(size)
    data[32769:32774] = b"CD001"
    return bytes(data)


class Holders:
    """A fake fetch: what each node would serve, and which nodes are unreachable."""

    def __init__(self, files: dict[str, bytes], down: tuple[str, ...] = ()) -> None:
        self.files = files
        self.down = down
        self.asked: list[str] = []

    async def __call__(self, holder: str, image_id: str) -> AsyncIterator[bytes]:
        self.asked.append(holder)
        if holder in self.down:
            raise ComputeError(f"node {holder} could not be reached", transient=True)
        async for chunk in chunks_of(self.files[holder]):
            yield chunk


def uploaded(data: bytes, image_id: str = "img1", fmt: str = "qcow2", copies: tuple[str, ...] = ("n1",)) -> dict[str, Any]:
    return {
        "id": image_id, "name": f"name-{image_id}", "format": fmt, "state": "ready", "copies": list(copies),
        "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
    }


def store_at(tmp_path: Path, fetch: Any = None, node: str = "n2") -> ImageStore:
    return ImageStore(tmp_path / "data", fetch or Holders({}), node_name=node)


def accept(store: ImageStore, data: bytes, fmt: str, max_bytes: int = 1 << 30, image_id: str = "up1") -> Any:
    image = {"id": image_id, "name": image_id, "format": fmt, "state": "uploading", "copies": []}
    return run(store.accept_upload(image, chunks_of(data), max_bytes))


# --- checking uploads ---


@needs_qemu_img
def test_a_plain_qcow2_is_accepted_with_its_virtual_size_and_hash(tmp_path: Path) -> None:
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "100M")
    data = (tmp_path / "a.qcow2").read_bytes()
    store = store_at(tmp_path)
    received, facts = accept(store, data, "qcow2")
    assert facts.virtual_size_bytes == 100 << 20 and facts.virtual_size_gb == 0.098
    assert received.sha256 == hashlib.sha256(data).hexdigest() and received.size_bytes == len(data)
    assert sorted(p.name for p in store.dir.iterdir()) == ["up1.qcow2"]


@needs_qemu_img
@pytest.mark.parametrize(
    "options, words",
    [
        (["-b", "{base}", "-F", "qcow2"], "backing file"),
        (["-o", "data_file={tmp}/external.raw"], "external data file"),
    ],
)
def test_a_qcow2_pointing_at_another_file_is_refused_and_nothing_remains(tmp_path: Path, options: list[str], words: str) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    bad = tmp_path / "bad.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", *[o.format(base=base, tmp=tmp_path) for o in options], str(bad), "16M")
    store = store_at(tmp_path)
    with pytest.raises(ImageRefused, match=words):
        accept(store, bad.read_bytes(), "qcow2")
    assert list(store.dir.iterdir()) == []


@needs_qemu_img
def test_a_raw_image_is_accepted_but_a_qcow2_declared_raw_or_raw_declared_qcow2_is_not(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    _, facts = accept(store, b"\x01" * 65536, "raw")
    assert facts.virtual_size_bytes == 65536
    qemu_img("create", "-q", "-f", "qcow2", str(tmp_path / "a.qcow2"), "16M")
    with pytest.raises(ImageRefused, match="qcow2 image, not raw"):
        accept(store, (tmp_path / "a.qcow2").read_bytes(), "raw", image_id="up2")
    with pytest.raises(ImageRefused, match="not in qcow2 format"):
        accept(store, b"\x01" * 65536, "qcow2", image_id="up3")
    with pytest.raises(ImageRefused, match="virtual size"):
        accept(store, b"", "raw", image_id="up4")
    assert sorted(p.name for p in store.dir.iterdir()) == ["up1.raw"]


def test_an_iso_needs_the_iso9660_signature(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    _, facts = accept(store, fake_iso(), "iso")
    assert facts.virtual_size_bytes == 40_000
    with pytest.raises(ImageRefused, match="CD001"):
        accept(store, bytes(40_000), "iso", image_id="up2")
    with pytest.raises(ImageRefused, match="CD001"):
        accept(store, b"short", "iso", image_id="up3")
    assert sorted(p.name for p in store.dir.iterdir()) == ["up1.iso"]


def test_a_body_past_the_limit_is_refused_and_removed(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    with pytest.raises(UploadTooLarge):
        accept(store, fake_iso(), "iso", max_bytes=39_999)
    assert list(store.dir.iterdir()) == []


def test_one_transfer_per_image_at_a_time(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    image = {"id": "up1", "name": "up1", "format": "iso", "state": "uploading", "copies": []}

    async def both() -> None:
        release = asyncio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield fake_iso()[:100]
            await release.wait()
            yield fake_iso()[100:]

        first = asyncio.create_task(store.accept_upload(image, slow(), 1 << 20))
        await asyncio.sleep(0.01)
        assert store.busy("up1")
        with pytest.raises(TransferBusy):
            await store.accept_upload(image, chunks_of(fake_iso()), 1 << 20)
        assert store.part_path("up1").exists()
        release.set()
        await first

    run(both())
    assert sorted(p.name for p in store.dir.iterdir()) == ["up1.iso"]


# --- local copies ---


def test_images_registered_by_path_are_used_where_they_are(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    assert run(store.local_path({"id": "p", "name": "p", "format": "qcow2", "path": "/srv/p.qcow2"})) == "/srv/p.qcow2"


def test_a_missing_copy_is_fetched_verified_and_reported_once(tmp_path: Path) -> None:
    data = fake_iso()
    holders = Holders({"n1": data})
    store = store_at(tmp_path, holders)
    image = uploaded(data, fmt="iso")
    path = run(store.local_path(image))
    assert path == str(store.dir / "img1.iso") and Path(path).read_bytes() == data
    assert run(store.local_path(image)) == path and holders.asked == ["n1"]
    assert store.unreported == {"img1"}

    replica = initialized()
    admit(replica, "n2", 2)
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    replica.ok("image.create", {"id": "img1", "name": "x", "owner": "bob", "public": False, "format": "iso"})
    replica.ok("image.upload_done", {"id": "img1", "node": "n1", "size_bytes": len(data), "virtual_size_gb": 0.001, "sha256": image["sha256"]})
    env = FakeEnv(replica, node_name="n2")
    run(store.report_copies(env))
    assert replica.state.images["img1"]["copies"] == ["n1", "n2"] and store.unreported == set()


def test_a_local_copy_is_verified_once_and_fetched_again_when_corrupt(tmp_path: Path) -> None:
    data = fake_iso()
    holders = Holders({"n1": data})
    store = store_at(tmp_path, holders)
    image = uploaded(data, fmt="iso")
    store.dir.mkdir(parents=True)
    (store.dir / "img1.iso").write_bytes(data)
    assert run(store.local_path(image)) == str(store.dir / "img1.iso") and holders.asked == []
    (store.dir / "img1.iso").write_bytes(b"tampered")
    assert run(store.local_path(image)) == str(store.dir / "img1.iso") and holders.asked == []  # verified once per process

    fresh = store_at(tmp_path, holders)  # a restarted node checks again
    assert Path(run(fresh.local_path(image))).read_bytes() == data and holders.asked == ["n1"]


def test_an_unreachable_holder_is_skipped_and_a_wrong_copy_refused(tmp_path: Path) -> None:
    data = fake_iso()
    holders = Holders({"n1": b"not it" * 10, "n3": data}, down=("n4",))
    store = store_at(tmp_path, holders)
    image = uploaded(data, fmt="iso", copies=("n1", "n3", "n4"))
    assert Path(run(store.local_path(image))).read_bytes() == data
    assert "n3" in holders.asked

    nobody = store_at(tmp_path / "other", Holders({"n1": b"x" * 10}, down=("n4",)))
    with pytest.raises(ComputeError, match="does not match") as failed:
        run(nobody.local_path(uploaded(data, fmt="iso", copies=("n1", "n4"))))
    assert failed.value.transient  # n4 may come back
    assert list(nobody.dir.iterdir()) == []


def test_an_image_not_ready_or_held_only_here_is_an_error(tmp_path: Path) -> None:
    store = store_at(tmp_path, node="n1")
    with pytest.raises(ComputeError, match="uploading") as waiting:
        run(store.local_path({**uploaded(b"x"), "state": "uploading"}))
    assert waiting.value.transient
    with pytest.raises(ComputeError, match="no other node") as lost:
        run(store.local_path(uploaded(b"x", copies=("n1",))))
    assert not lost.value.transient


def test_prune_keeps_what_images_need_and_removes_the_rest(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.dir.mkdir(parents=True)
    for name in ("keep.qcow2", "gone.qcow2", "gone.part", "stale.part", "failed.raw", "up.iso", "notes.txt", "README"):
        (store.dir / name).write_bytes(b"x")
    images = {
        "keep": {"id": "keep", "format": "qcow2", "state": "ready", "copies": ["n2"]},
        "stale": {"id": "stale", "format": "qcow2", "state": "ready", "copies": ["n1"]},
        "failed": {"id": "failed", "format": "raw", "state": "error", "copies": []},
        "up": {"id": "up", "format": "iso", "state": "uploading", "copies": []},
    }
    removed = run(store.prune(images))
    assert sorted(removed) == ["failed.raw", "gone.part", "gone.qcow2", "stale.part"]
    assert sorted(p.name for p in store.dir.iterdir()) == ["README", "keep.qcow2", "notes.txt", "up.iso"]
    store.remove("keep")
    assert not (store.dir / "keep.qcow2").exists()


def test_an_upload_that_would_eat_into_the_reserve_is_refused_and_removed(tmp_path: Path) -> None:
    from cloudd.ops.image_store import NoSpace

    store = store_at(tmp_path)
    store.reserve_bytes = shutil.disk_usage(tmp_path).free + (1 << 40)  # more than the disk has
    with pytest.raises(NoSpace):
        accept(store, fake_iso(), "iso")
    assert list(store.dir.iterdir()) == []


def test_a_node_without_qemu_img_is_a_node_error_not_a_refused_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "data", Holders({}), node_name="n2", qemu_img="no-such-qemu-img")
    with pytest.raises(ComputeError) as info:
        accept(store, b"\0" * 4096, "raw")
    assert not isinstance(info.value, ImageRefused) and "not installed" in str(info.value)
    assert list(store.dir.iterdir()) == []


def test_at_most_a_few_uploads_run_at_once_on_a_node(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.uploads = ImageStore.MAX_UPLOADS
    with pytest.raises(TransferBusy):
        accept(store, fake_iso(), "iso")
