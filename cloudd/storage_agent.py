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
import functools
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from cloudd.env import Env, try_propose
from cloudd.ops.storage import ExportBackend, ExportSpec, ExportStats, StorageError, VolumeBackend, VolumeInfo, volume_target

if TYPE_CHECKING:
    from cloudd.ops.drbd_pool import ReplicaLayout
    from cloudd.reconcile import LeaseClock

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
    replication: dict[str, tuple[str, str]] = field(default_factory=dict)  # node -> (host name, address)


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
    replicas: "ReplicaKeeper" = field(default_factory=lambda: ReplicaKeeper())
    # the node's lease (noted by its agent): stale for fence_after, this node stops serving
    # the replicated volumes it is Primary of, as the leader may promote their secondaries
    lease: "LeaseClock | None" = None
    fence_after: float = 0.0
    fenced: bool = False

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
        if self.lease is not None and self.lease.stale_for(self.clock()) >= self.fence_after:
            await self._fence(view)
            return
        if self.fenced:
            log.warning("lease renewed: serving replicated volumes again as the state says")
            self.fenced = False
        periodic = self.clock() - self.last_periodic >= self.report_every_s
        if periodic:
            self.last_periodic = self.clock()
        for pool in view.pools.values():
            if pool["node"] == self.node:  # a drbd pool's peer keeps copies; the pool's node reports
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

    async def _fence(self, view: StorageView) -> None:
        """Stop serving every replicated volume this side is Primary of (export removed, then
        Secondary) without asking the cluster: it cannot be asked."""
        if not self.fenced:
            log.error("lease not renewed for %.0fs: fencing this node's DRBD primaries", self.fence_after)
            self.fenced = True
        for volume in sorted(view.volumes.values(), key=lambda v: v["id"]):
            pool = view.pools.get(volume["pool"])
            if not volume.get("replica") or pool is None:
                continue
            backend = self.backend(pool)
            try:
                status = await self._call(backend.status, volume["id"])  # type: ignore[attr-defined]
                if status is None or status.role != "Primary":
                    continue
                if self.exports is not None:
                    await self._call(self.exports.remove, volume_target(volume["id"]))
                await self._call(backend.make_secondary, volume["id"])  # type: ignore[attr-defined]
                log.error("volume %s: fenced (export removed, Secondary)", volume["name"])
            except StorageError as exc:
                log.error("volume %s: cannot fence: %s", volume["name"], exc)

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
        if volume.get("replica"):
            await self.replicas.step(self, env, view, backend, volume, current)
            if volume["node"] != self.node:
                return  # the secondary: no export, no volume report
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


def layout_of(replica: dict[str, Any], addresses: dict[str, tuple[str, str]]) -> "ReplicaLayout":
    """The DRBD resource of a replicated volume, from the state (node ids by name order)."""
    from cloudd.ops.drbd_pool import ReplicaLayout, ReplicaSide

    sides = []
    for node_id, name in enumerate(sorted(replica["nodes"])):
        if name not in addresses or not addresses[name][1]:
            raise StorageError(f"storage node {name} has no replication address yet", transient=True)
        hostname, address = addresses[name]
        sides.append(ReplicaSide(hostname, address, node_id))
    return ReplicaLayout(replica["minor"], replica["port"], (sides[0], sides[1]))


@dataclass
class ReplicaKeeper:
    """This node's side of the replicated volumes: made, grown and removed with the volume,
    Primary exactly while the state names this node (``volume.promote`` moves it), each
    side's DRBD status reported when it changes."""

    reported: dict[str, tuple[str | None, ...]] = field(default_factory=dict)

    async def step(self, agent: StorageReconciler, env: Env, view: StorageView, backend: VolumeBackend, volume: dict[str, Any], current: dict[str, Any] | None) -> None:
        from cloudd.ops.drbd_pool import ReplicatedVolumes

        if not isinstance(backend, ReplicatedVolumes):
            raise StorageError(f"volume {volume['name']} is replicated but its pool is {backend.kind}")
        vid, replica, me = volume["id"], volume["replica"], agent.node
        backend.configure(vid, layout_of(replica, view.replication))
        primary = replica["primary"] == me
        size = int(volume["size_gb"] * GIB)
        if volume["state"] == "deleting":
            if not primary:  # the primary removes its side with the volume (StorageReconciler._volume)
                await agent._call(backend.delete, vid)
                await self._report(env, vid, me, ("Deleted", "Diskless", "DUnknown", "StandAlone"))
            return
        if volume["state"] == "creating":
            source = None
            if primary and volume.get("image"):
                image = view.images.get(volume["image"])
                if image is None or agent.images is None:
                    raise StorageError(f"image {volume['image']} is not available on {me}")
                source = await agent.images.local_path(image)
            first = primary and replica.get("promoted") is None
            await agent._call(functools.partial(backend.create, vid, size, source, initial_primary=first))
        elif volume["state"] == "resizing" and not primary:
            await agent._call(backend.resize, vid, size)  # the primary grows in StorageReconciler._resize
        status = await agent._call(backend.status, vid)
        if status is None:  # not up (the host restarted): bring it up as it was
            await agent._call(backend.drbd.up, vid)
            status = await agent._call(backend.status, vid)
        error = None
        if status is not None:
            lost_and_back = (replica.get("promoted") or {}).get("from") == me
            if primary and status.role != "Primary":
                log.warning("volume %s: becoming Primary here, as the state says", volume["name"])
                try:
                    await agent._call(backend.make_primary, vid)
                except StorageError as exc:
                    log.error("volume %s: %s", volume["name"], exc)
                    error = str(exc)[:500]
            elif not primary and status.role == "Primary":
                target = volume_target(vid)
                if agent.exports is not None and current is not None and target in current:
                    await agent._call(agent.exports.remove, target)
                log.warning("volume %s: stepping down to Secondary (%s is its primary)", volume["name"], replica["primary"])
                await agent._call(backend.make_secondary, vid, lost_and_back)
            elif not primary and lost_and_back and status.connection_state == "StandAlone":
                await agent._call(backend.make_secondary, vid, True)  # split brain after the promotion: the promoted side wins
            status = await agent._call(backend.status, vid) or status
            await self._report(env, vid, me, (status.role, status.disk_state, status.peer_disk_state, status.connection_state), error)
        if error is not None:
            raise StorageError(error, transient=True)  # no export from a side that is not Primary

    async def _report(self, env: Env, vid: str, node: str, seen: tuple[str, str, str, str], error: str | None = None) -> None:
        if self.reported.get(vid) == (*seen, error):
            return
        args = {"id": vid, "node": node, "role": seen[0], "disk_state": seen[1], "peer_disk_state": seen[2], "connection_state": seen[3], "error": error}
        if await try_propose(env, "volume.replica_report", args, f"volume {vid}'s replica"):
            self.reported[vid] = (*seen, error)
