"""The storage node's agent: makes its pools' volumes and exports match the state.

Each pass reads the volumes of the pools on this node and, for each one: creates, grows
or deletes it in its pool's backend, and offers it over iSCSI to exactly the initiators
the state names (``export_initiators``: the node of the VM it is attached to; none when
detached). Reports go back only when something changed, capacity and export counters
every ``report_every_s``. CHAP credentials derive from the cluster secret and the volume
id (``chap_credentials``), so the hypervisor that logs in computes the same ones and no
secret is ever stored in the replicated state.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from cloudd.env import Env, try_propose
from cloudd.ops.storage import ExportBackend, ExportSpec, ExportStats, StorageError, VolumeBackend, VolumeInfo, volume_target

log = logging.getLogger(__name__)
GIB = 1 << 30


def chap_credentials(cluster_secret: str, volume_id: str) -> tuple[str, str]:
    """The CHAP user and password of a volume's export (the same on every node)."""
    digest = hmac.new(cluster_secret.encode(), f"chap\n{volume_id}".encode(), hashlib.sha256).digest()
    return f"v-{volume_id}"[:64], base64.urlsafe_b64encode(digest).decode().rstrip("=")[:32]


class ImagePaths(Protocol):
    async def local_path(self, image: dict[str, Any]) -> str:
        """A local file of the image (fetched from a holder first when needed)."""


@dataclass
class StorageView:
    """What the agent needs of the state, read at once under the replica's lock."""

    pools: dict[str, dict[str, Any]]
    volumes: dict[str, dict[str, Any]]
    initiators: dict[str, list[str]]  # volume id -> who may log in now
    images: dict[str, dict[str, Any]]


@dataclass
class ExportCounters:
    """Adds up each session's counters; a session that ends keeps counting in ``base``."""

    base: tuple[int, int, int, int] = (0, 0, 0, 0)
    sessions: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def update(self, stats: ExportStats) -> dict[str, int]:
        for sid, last in self.sessions.items():
            if sid not in stats.per_session:
                self.base = tuple(a + b for a, b in zip(self.base, last))  # type: ignore[assignment]
        self.sessions = dict(stats.per_session)
        total = [sum(x) for x in zip(self.base, *self.sessions.values())]
        return dict(zip(("read_bytes", "read_ops", "write_bytes", "write_ops"), total))


@dataclass
class StorageReconciler:
    node: str
    make_backend: Callable[[dict[str, Any]], VolumeBackend]
    exports: ExportBackend | None
    cluster_secret: str = field(repr=False)
    images: ImagePaths | None = None
    report_every_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    backends: dict[str, tuple[str, VolumeBackend]] = field(default_factory=dict)
    reported: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    counters: dict[str, ExportCounters] = field(default_factory=dict)
    last_periodic: float = float("-inf")

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=600)

    def backend(self, pool: dict[str, Any]) -> VolumeBackend:
        key = repr((pool["backend"], sorted(pool["config"].items())))
        cached = self.backends.get(pool["name"])
        if cached is None or cached[0] != key:
            self.backends[pool["name"]] = cached = (key, self.make_backend(pool))
        return cached[1]

    async def step(self, env: Env) -> None:
        view = env.storage_view(self.node)
        periodic = self.clock() - self.last_periodic >= self.report_every_s
        if periodic:
            self.last_periodic = self.clock()
        for pool in view.pools.values():
            await self._pool(env, pool, periodic)
        try:
            current = await self._call(self.exports.exports) if self.exports else {}
        except StorageError as exc:
            log.warning("cannot read the iSCSI target: %s", exc)
            current = None
        for volume in sorted(view.volumes.values(), key=lambda v: v["id"]):
            pool = view.pools.get(volume["pool"])
            if pool is None:
                continue
            try:
                await self._volume(env, view, pool, volume, current, periodic)
            except StorageError as exc:
                if exc.transient:
                    log.warning("volume %s: %s (will retry)", volume["name"], exc)
                    continue
                log.error("volume %s: %s", volume["name"], exc)
                await self._report(env, volume, None, [], error=str(exc))

    async def _pool(self, env: Env, pool: dict[str, Any], periodic: bool) -> None:
        try:
            capacity = await self._call(self.backend(pool).capacity)
            args = {"name": pool["name"], "node": self.node, "total_bytes": capacity.total_bytes, "free_bytes": capacity.free_bytes, "error": None}
        except StorageError as exc:
            args = {"name": pool["name"], "node": self.node, "total_bytes": 0, "free_bytes": 0, "error": str(exc)}
        seen = pool.get("capacity") or {}
        changed = pool.get("error") != args["error"] or not seen or abs(seen.get("free_bytes", 0) - args["free_bytes"]) > max(GIB, args["total_bytes"] // 100)
        if changed or periodic:
            await try_propose(env, "storage_pool.report", args, f"storage pool {pool['name']}")

    async def _volume(self, env: Env, view: StorageView, pool: dict[str, Any], volume: dict[str, Any], current: dict[str, Any] | None, periodic: bool) -> None:
        backend = self.backend(pool)
        vid, target = volume["id"], volume_target(volume["id"])
        if volume["state"] == "deleting":
            if self.exports is not None and current is not None and target in current:
                await self._call(self.exports.remove, target)
            await self._call(backend.delete, vid)
            self.counters.pop(vid, None)
            await self._report(env, volume, None, [])
            return
        size = int(volume["size_gb"] * GIB)
        if volume["state"] == "creating":
            source = None
            if volume.get("image"):
                image = view.images.get(volume["image"])
                if image is None or self.images is None:
                    raise StorageError(f"image {volume['image']} is not available on {self.node}")
                source = await self.images.local_path(image)
            info = await self._call(backend.create, vid, size, source)
            if info.size_bytes < size:
                info = await self._call(backend.resize, vid, size)
        elif volume["state"] == "resizing":
            if self.exports is not None and current is not None and target in current:
                await self._call(self.exports.remove, target)  # targets read a LUN's size once
                current.pop(target, None)
            info = await self._resize(backend, vid, size)
        else:
            info = await self._call(backend.info, vid)
            if info is None:
                await self._report(env, volume, None, [], error=f"volume {vid} is missing from pool {pool['name']} on {self.node}")
                return
        exported = await self._export(volume, info, view.initiators.get(vid, []), current)
        usage = None
        if periodic and exported and self.exports is not None:
            stats = await self._call(self.exports.stats, target)
            usage = self.counters.setdefault(vid, ExportCounters()).update(stats)
        await self._report(env, volume, info, exported, usage=usage)

    async def _resize(self, backend: VolumeBackend, vid: str, size: int) -> VolumeInfo:
        info = await self._call(backend.info, vid)
        if info is None:
            raise StorageError(f"volume {vid} is missing")
        if info.size_bytes < size:
            return await self._call(backend.resize, vid, size)
        if info.size_bytes > size:  # a forced shrink
            shrink = getattr(backend, "shrink", None)
            if shrink is None:
                raise StorageError(f"a {backend.kind} pool cannot shrink volumes")
            return await self._call(shrink, vid, size)
        return info

    async def _export(self, volume: dict[str, Any], info: VolumeInfo, initiators: list[str], current: dict[str, Any] | None) -> list[str]:
        """Offer the volume to ``initiators`` only (no export at all when there are none)."""
        if self.exports is None or current is None:
            return []
        target = volume_target(volume["id"])
        have = current.get(target)
        if not initiators:
            if have is not None:
                await self._call(self.exports.remove, target)
            return []
        user, password = chap_credentials(self.cluster_secret, volume["id"])
        if have is None or have.path != info.path or set(have.initiators) != set(initiators) or user not in have.chap_users:
            await self._call(self.exports.ensure, ExportSpec(target, info.path, tuple(initiators), user, password))
        return sorted(initiators)

    async def _report(self, env: Env, volume: dict[str, Any], info: VolumeInfo | None, exported: list[str], error: str | None = None, usage: dict[str, int] | None = None) -> None:
        args: dict[str, Any] = {
            "id": volume["id"],
            "node": self.node,
            "present": info is not None,
            "size_bytes": info.size_bytes if info else None,
            "allocated_bytes": info.allocated_bytes if info else None,
            "exported_to": exported,
            "error": error,
        }
        key = (args["present"], args["size_bytes"], args["exported_to"], error)
        if usage is not None:
            args["usage"] = usage
        elif self.reported.get(volume["id"]) == key:
            return
        if await try_propose(env, "volume.report", args, f"volume {volume['id']}"):
            self.reported[volume["id"]] = key
