"""A hypervisor's side of migrations (see ``cloudd.model.migration`` for the steps).

Written as ``step(env)``, run in the reconcile loop before the VM pass. Per VM migrating
from or to this node it takes the step the state asks of this node, and reports it by a
command. The long steps (copying files, libvirt's live migration) run in the background
and are looked at on every pass, so one slow migration never holds up the other VMs. A
step interrupted by a crash is taken again (a copy starts over; a live migration that
libvirt no longer runs is reported failed when the guest still runs here, and landed by
the target when it runs there). The VMs that moved (or did not come) leave leftovers:
this node removes its copy and says so.

Nothing runs while the node's lease is stale: its replica may be old, and the self-fence
(``VmReconciler.self_fence``) owns the host then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudd.env import Env, try_propose
from cloudd.network_agent import NetworkView
from cloudd.ops.compute import ComputeError, DomainSpec, LiveOptions, MigrationResult, MigrationTarget, spec_from_dict, spec_to_dict
from cloudd.ops.vm_files import VmFileFetch, movable_files
from cloudd.reconcile import VmReconciler
from cloudd.vm_layout import SWAP_TARGET

log = logging.getLogger(__name__)
MiB = 1 << 20
ACPI_REPEAT_S = 10.0


@dataclass
class Moving:
    """What this node remembers of one migration between passes (not replicated)."""

    migration: str
    job: asyncio.Future[Any] | None = None
    shutdown_since: float | None = None
    pressed_at: float | None = None  # the last ACPI power button press
    abort_sent: bool = False
    copied: int = 0
    total: int = 0
    reported: tuple[int, float] = (-1, float("-inf"))  # (percent, when) of the last progress report
    arrived_at: float | None = None  # the target first saw the live-migrated guest running here


@dataclass
class MigrationAgent:
    reconciler: VmReconciler
    files: VmFileFetch | None = None  # None: this node cannot fetch files (no copies)
    progress_every_s: float = 2.0
    # the target of a live migration reports it landed only when the source has not within
    # this long (the source measured the downtime; its cloudd may be gone or restarted)
    landed_grace_s: float = 10.0
    moving: dict[str, Moving] = field(default_factory=dict)
    threads: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="migration"))

    @property
    def driver(self) -> Any:
        return self.reconciler.driver

    def swap_is_local(self) -> bool:
        settings = self.reconciler.settings
        return bool(settings.swap_dir) and Path(settings.swap_dir) != Path(settings.vm_dir)

    async def step(self, env: Env) -> None:
        lease = self.reconciler.lease
        if lease is not None and (not lease.ever_renewed or lease.stale_for(env.monotonic()) >= self.reconciler.fence_after):
            return
        me = env.node_name
        self.reconciler.node = me
        vms = env.moving(me)
        for vm_id, vm in sorted(vms.items()):
            mig = vm.get("migration")
            try:
                if mig is not None and me == mig["source"]:
                    await self._source(env, vm, mig)
                elif mig is not None and me == mig["target"]:
                    await self._target(env, vm, mig)
                elif me in (vm.get("leftovers") or {}) and vm["node"] != me:
                    await self._clean(env, vm)
            except ComputeError as exc:
                log.warning("VM %s: migration step: %s%s", vm["name"], exc, " (will retry)" if exc.transient else "")
        for vm_id in list(self.moving):
            mig = (vms.get(vm_id) or {}).get("migration")
            if mig is None or mig["id"] != self.moving[vm_id].migration:
                self._forget(vm_id)

    def _memory(self, vm: dict[str, Any], mig: dict[str, Any]) -> Moving:
        memory = self.moving.get(vm["id"])
        if memory is None or memory.migration != mig["id"]:
            if memory is not None:
                self._forget(vm["id"])
            memory = self.moving[vm["id"]] = Moving(mig["id"])
        return memory

    def _forget(self, vm_id: str) -> None:
        memory = self.moving.pop(vm_id, None)
        if memory is not None and memory.job is not None and not memory.job.done() and isinstance(memory.job, asyncio.Task):
            memory.job.cancel()  # a copy of a migration that ended (cancelled, failed over)

    async def _step(self, env: Env, vm: dict[str, Any], mig: dict[str, Any], phase: str, **extra: Any) -> bool:
        args = {"id": vm["id"], "migration": mig["id"], "node": env.node_name, "phase": phase, **extra}
        return await try_propose(env, "vm.migration_step", args, f"VM {vm['name']}: migration {phase}") is not None

    async def _progress(self, env: Env, vm: dict[str, Any], mig: dict[str, Any], memory: Moving, percent: int, message: str) -> None:
        now = env.monotonic()
        last_percent, last_at = memory.reported
        if percent == last_percent or now - last_at < self.progress_every_s:
            return
        memory.reported = (percent, now)
        args = {"id": vm["id"], "migration": mig["id"], "node": env.node_name, "percent": percent, "message": message[:300]}
        await try_propose(env, "vm.migration_progress", args, f"VM {vm['name']}: migration progress")

    # --- the source ---

    async def _source(self, env: Env, vm: dict[str, Any], mig: dict[str, Any]) -> None:
        memory = self._memory(vm, mig)
        if mig["mode"] == "offline":
            if mig["phase"] == "stopping":
                await self._stop_and_undefine(env, vm, mig, memory)
            return
        if mig["phase"] == "migrating":
            await self._migrate_live(env, vm, mig, memory)

    async def _stop_and_undefine(self, env: Env, vm: dict[str, Any], mig: dict[str, Any], memory: Moving) -> None:
        """Shut the guest down (ACPI, forced off after the node's timeout), then undefine the
        domain but keep its files: from now on no node has the VM defined."""
        call = self.reconciler._call
        seen = (await call(self.driver.domains)).get(vm["id"])
        if seen is not None and seen.power in ("running", "paused"):
            now = env.monotonic()
            if memory.shutdown_since is None:
                memory.shutdown_since = now
                log.info("VM %s: shutting down to move it to %s", vm["name"], mig["target"])
                await call(self.driver.shutdown, vm["id"])
            elif now - memory.shutdown_since >= self.reconciler.settings.shutdown_timeout_s:
                log.info("VM %s ignored the ACPI shutdown for %.0fs: forcing it off to move it", vm["name"], now - memory.shutdown_since)
                await call(self.driver.destroy, vm["id"])
            elif now - (memory.pressed_at or memory.shutdown_since) >= ACPI_REPEAT_S:
                # a guest still booting (no ACPI daemon yet) misses the first press
                memory.pressed_at = now
                await call(self.driver.shutdown, vm["id"])
            return
        if seen is not None:
            await call(self.driver.undefine, vm["id"])
        await self._step(env, vm, mig, "copying")

    def _target_of(self, env: Env, node: str) -> MigrationTarget:
        compute = (env.state().nodes.get(node) or {}).get("compute") or {}
        if not compute.get("migration_uri"):
            raise ComputeError(f"node {node} has not said how its libvirt is reached")
        return MigrationTarget(node, compute["migration_uri"], compute.get("migrate_uri") or None, bool(compute.get("tunnelled")), bool(compute.get("tls")))

    async def _migrate_live(self, env: Env, vm: dict[str, Any], mig: dict[str, Any], memory: Moving) -> None:
        call = self.reconciler._call
        vm_id = vm["id"]
        if memory.job is None:
            progress = await call(self.driver.migration_progress, vm_id)
            seen = (await call(self.driver.domains)).get(vm_id)
            if progress is not None:
                # libvirt still runs a migration this process did not start (cloudd
                # restarted during it): watch it end
                if mig.get("cancel") and not memory.abort_sent:
                    memory.abort_sent = True
                    await call(self.driver.abort_migration, vm_id)
                await self._progress(env, vm, mig, memory, progress.percent, _live_message(progress))
                return
            if seen is None:
                # libvirt undefines the source's domain only once the guest runs on the
                # target (UNDEFINE_SOURCE): it left this node
                await self._step(env, vm, mig, "landed")
                return
            if seen.power not in ("running", "paused"):
                # still defined here but off (fenced, crashed) and no job: it never left
                await self._step(env, vm, mig, "failed", reason=f"the guest is {seen.power} on {mig['source']}: the migration did not happen")
                return
            if mig.get("started") or mig.get("cancel"):
                # started before (by this node's previous process) and no longer running in
                # libvirt, or cancelled before it began: the guest is still here
                reason = mig.get("cancel_reason") if mig.get("cancel") else "the migration was interrupted (cloudd restarted on the source); the VM still runs here"
                await self._step(env, vm, mig, "failed", reason=reason or "cancelled")
                return
            target = self._target_of(env, mig["target"])
            spec = spec_from_dict(mig["target_spec"])
            spec = DomainSpec(**{**spec.__dict__, "vnc_password": vm.get("vnc_password")})
            options = LiveOptions(
                bandwidth_mib_s=mig.get("bandwidth_mib_s"),
                max_downtime_ms=mig.get("max_downtime_ms"),
                copy_disks=(SWAP_TARGET,) if vm.get("swap_mb") and self.swap_is_local() else (),
                unsafe=self.reconciler.settings.migration_unsafe,
            )
            started = {"id": vm_id, "migration": mig["id"], "node": env.node_name, "percent": 0, "message": "starting", "started": True}
            if await try_propose(env, "vm.migration_progress", started, f"VM {vm['name']}: migration start") is None:
                return  # not recorded: do not start what a restart could not tell apart
            log.info("VM %s: live migration to %s (%s)", vm["name"], mig["target"], target.libvirt_uri)
            loop = asyncio.get_running_loop()
            memory.job = loop.run_in_executor(self.threads, self.driver.migrate_live, vm_id, target, spec, options)
            await asyncio.wait({memory.job}, timeout=0.05)
        if not memory.job.done():
            if mig.get("cancel") and not memory.abort_sent:
                memory.abort_sent = True
                log.info("VM %s: cancelling its live migration (%s)", vm["name"], mig.get("cancel_reason"))
                await call(self.driver.abort_migration, vm_id)
            progress = await call(self.driver.migration_progress, vm_id)
            if progress is not None:
                await self._progress(env, vm, mig, memory, progress.percent, _live_message(progress))
            return
        job, memory.job = memory.job, None
        try:
            result: MigrationResult = job.result()
        except ComputeError as exc:
            seen = (await call(self.driver.domains)).get(vm_id)
            if seen is not None and seen.power in ("running", "paused"):
                log.warning("VM %s: live migration to %s failed: %s", vm["name"], mig["target"], exc)
                await self._step(env, vm, mig, "failed", reason=(mig.get("cancel_reason") if mig.get("cancel") else None) or f"libvirt: {exc}"[:500])
            else:
                log.warning("VM %s: live migration reported %s, and the VM no longer runs here: the target tells", vm["name"], exc)
            return
        log.info("VM %s: live-migrated to %s in %.1fs (downtime %s ms)", vm["name"], mig["target"], result.elapsed_s, result.downtime_ms)
        extra = {"downtime_ms": result.downtime_ms} if result.downtime_ms is not None else {}
        await self._step(env, vm, mig, "landed", **extra)

    # --- the target ---

    async def _target(self, env: Env, vm: dict[str, Any], mig: dict[str, Any]) -> None:
        memory = self._memory(vm, mig)
        if mig["mode"] == "offline":
            if mig["phase"] == "copying":
                await self._receive(env, vm, mig, memory)
            return
        if mig["phase"] == "preparing":
            await self._prepare_live(env, vm, mig)
        elif mig["phase"] == "migrating":
            seen = (await self.reconciler._call(self.driver.domains)).get(vm["id"])
            if seen is not None and seen.power == "running":
                # libvirt resumes the guest here only once the source stopped it for good.
                # The source reports it itself, with the downtime it measured, a moment
                # later; this node tells only when the source's cloudd does not
                now = env.monotonic()
                if memory.arrived_at is None:
                    memory.arrived_at = now
                source_status = (env.state().nodes.get(mig["source"]) or {}).get("status")
                if source_status not in ("up", "maintenance") or now - memory.arrived_at >= self.landed_grace_s:
                    await self._step(env, vm, mig, "landed")

    async def _receive(self, env: Env, vm: dict[str, Any], mig: dict[str, Any], memory: Moving) -> None:
        """Copy the VM's files from the source (in the background), then report the switch."""
        if not mig["copy"] or self.reconciler.disks is None:
            await self._make_files(env, vm)
            await self._step(env, vm, mig, "switched")
            return
        if memory.job is None:
            if self.files is None:
                raise ComputeError("this node cannot fetch files from other nodes")
            memory.job = asyncio.ensure_future(self._copy(env, vm, mig, memory))
            await asyncio.wait({memory.job}, timeout=0.05)
        if not memory.job.done():
            if memory.total:
                await self._progress(env, vm, mig, memory, min(99, 100 * memory.copied // memory.total), f"{memory.copied / MiB:.0f} of {memory.total / MiB:.0f} MiB")
            return
        job, memory.job = memory.job, None
        try:
            job.result()
        except ComputeError as exc:
            if exc.transient:
                raise
            await self._step(env, vm, mig, "failed", reason=f"copying the disks to {mig['target']}: {exc}"[:500])
            return
        await self._make_files(env, vm)
        log.info("VM %s: its disks are here (%.1f MiB): switching it over", vm["name"], memory.copied / MiB)
        await self._step(env, vm, mig, "switched")

    async def _copy(self, env: Env, vm: dict[str, Any], mig: dict[str, Any], memory: Moving) -> None:
        assert self.files is not None
        layout, vm_id = self.reconciler.layout, vm["id"]
        final = layout.dir(vm_id)
        done_marker = final / f".migrated-{mig['id']}"
        if done_marker.exists():
            return  # copied before a restart
        listing = dict(await self.files.list(mig["source"], vm_id))
        wanted = [name for name in movable_files(vm) if name in listing]
        memory.total, memory.copied = sum(listing[n] for n in wanted), 0
        staging = layout.vm_dir / f".incoming-{vm_id}"
        await asyncio.to_thread(shutil.rmtree, staging, True)
        staging.mkdir(parents=True)
        for name in wanted:
            await self.files.fetch(mig["source"], vm_id, name, staging / name, lambda n: setattr(memory, "copied", memory.copied + n))
        image = env.images().get(vm.get("image") or "")
        if image is not None and image["format"] in ("qcow2", "raw") and (staging / "disk.qcow2").exists():
            backing = await self.reconciler.fetches.ready(image, wait_s=600.0)
            await self.reconciler._call(rebase, self.reconciler.disks.qemu_img, staging / "disk.qcow2", backing, image["format"])  # type: ignore[union-attr]
        (staging / done_marker.name).touch()
        if final.exists():
            await asyncio.to_thread(shutil.rmtree, final)  # an earlier, abandoned copy
        os.replace(staging, final)

    async def _make_files(self, env: Env, vm: dict[str, Any]) -> None:
        """The files the target makes itself: a new swap disk, the cloud-init seed."""
        await self.reconciler.ensure_files(vm, env.images(), offline=False)

    async def _prepare_live(self, env: Env, vm: dict[str, Any], mig: dict[str, Any]) -> None:
        """Files, CHAP secrets, and the VM's volumes exported here too; then publish the
        domain this node would define (the source builds the migrated definition from it)."""
        links = env.volume_links(env.node_name)
        waiting = self.reconciler.volumes_not_here(vm, links)
        if waiting:
            log.info("VM %s: waiting for volumes %s to be exported here before it migrates", vm["name"], ", ".join(waiting))
            return
        await self._make_files(env, vm)
        spec = self.reconciler.spec(vm, env.images(), links, env.network_view(env.node_name))
        await self.reconciler.ensure_secrets(spec)
        published = spec_to_dict(DomainSpec(**{**spec.__dict__, "vnc_password": None}))
        await self._step(env, vm, mig, "migrating", target_spec=published)

    # --- leftovers ---

    async def _clean(self, env: Env, vm: dict[str, Any]) -> None:
        """Remove this node's copy of a VM that is elsewhere now: its domain (a stale one
        is destroyed), its node-local files, its swap here."""
        call = self.reconciler._call
        entry = (vm.get("leftovers") or {})[env.node_name]
        if vm["id"] in await call(self.driver.domains):
            log.info("VM %s is on %s: removing its old domain here", vm["name"], vm["node"])
            await call(self.driver.undefine, vm["id"])
        disks, layout = self.reconciler.disks, self.reconciler.layout
        if disks is not None:
            if entry.get("files"):
                await call(disks.remove_all, layout.dir(vm["id"]))
                await asyncio.to_thread(shutil.rmtree, layout.vm_dir / f".incoming-{vm['id']}", True)
            if entry.get("files") or self.swap_is_local():
                await call(disks.remove, layout.swap_disk(vm["id"]))
        await try_propose(env, "vm.leftovers_cleaned", {"id": vm["id"], "node": env.node_name}, f"VM {vm['name']}: leftovers")


def _live_message(progress: Any) -> str:
    return f"{(progress.data_total - progress.data_remaining) / MiB:.0f} of {progress.data_total / MiB:.0f} MiB, pass {progress.iteration}"


def rebase(qemu_img: str, disk: Path, backing: str, backing_format: str) -> None:
    """Point a copied overlay at this node's copy of its image (same content, so an unsafe
    rebase, which rewrites only the header, is exact)."""
    import subprocess

    try:
        subprocess.run([qemu_img, "rebase", "-q", "-u", "-F", backing_format, "-b", backing, str(disk)], check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        raise ComputeError(f"rebasing {disk.name} onto {backing}: {exc.stderr.strip()[:300]}") from None
    except subprocess.TimeoutExpired:
        raise ComputeError(f"rebasing {disk.name} timed out", transient=True) from None
