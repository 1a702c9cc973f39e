"""The node agent's VM reconcile loop: make this host match the VMs assigned to it.

Written as ``step(env)``. Per VM it compares the desired state in the replica with what
the hypervisor shows and takes ONE idempotent step towards it, then reports what it
sees (``vm.report``) whenever that changed. A step interrupted by a crash is simply
taken again by the next loop. Drift (a domain destroyed, started or undefined behind
cloudd's back) is repaired towards the desired state, or only reported when the node's
``drift`` policy is ``report``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from cloudd.env import Env, try_propose
from cloudd.logging_setup import TRAIL, request_scope
from cloudd.ops.cloudinit import write_seed
from cloudd.ops.compute import ComputeDriver, ComputeError, DomainInfo, DomainSpec, IscsiSource
from cloudd.ops.local_disk import LocalDisks
from cloudd.network_agent import NetworkView, nic_specs
from cloudd.ops.storage import node_initiator, volume_target
from cloudd.storage_agent import chap_credentials
from cloudd.vm_layout import VmLayout, hot_pluggable, seed_data

log = logging.getLogger(__name__)
T = TypeVar("T")
# hypervisor calls that change a guest: logged (with the request id that asked for it)
LOGGED_ACTIONS = frozenset({"define", "start", "shutdown", "destroy", "undefine", "reset", "reboot"})


@dataclass
class ReconcileSettings:
    domain_type: str = "kvm"
    vnc_listen: str = "127.0.0.1"
    shutdown_timeout_s: float = 60.0
    call_timeout_s: float = 30.0
    drift: str = "repair"  # or "report"
    vm_dir: str = "/var/lib/cloudd/vms"
    swap_dir: str = ""  # the node's local fast storage; "" = vm_dir
    usage_interval_s: float = 30.0
    unplug_retry_s: float = 60.0
    net_prefix: str = "cd"  # device names of this node's bridges and taps (see cloudd.ops.network)
    migration_unsafe: bool = False  # see ComputeSettings.migration_unsafe


@dataclass
class LeaseClock:
    """When this node last committed a lease renewal (its own monotonic clock): the agent
    notes it, the reconciler self-fences when it is older than ``fence_after``.

    A fresh clock has never been renewed: the replica it reads may be stale (the node may
    have booted cut off from the majority, its VMs already re-homed), so nothing is
    started until a renewal commits, and without one for ``fence_after`` after the start,
    the node fences itself as if its lease had expired."""

    renewed_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    def renewed(self, now: float) -> None:
        self.renewed_at = now

    @property
    def ever_renewed(self) -> bool:
        return self.renewed_at is not None

    def stale_for(self, now: float) -> float:
        return now - (self.renewed_at if self.renewed_at is not None else self.started_at)


@dataclass
class VmMemory:
    """What this agent remembers about a VM between steps (not replicated)."""

    shutdown_since: float | None = None
    action_done: int = 0
    usage_at: float | None = None  # when usage was last sampled (monotonic)
    cpu_time_s: float | None = None
    unplug_asked: dict[str, float] = field(default_factory=dict)  # target -> when (monotonic)
    device_error: str | None = None  # the last device update's failure, reported apart from `error`


class ImageSource(Protocol):
    def path_of(self, image: dict[str, Any]) -> str:
        """Where the image's file is (or will be, once fetched) on this node; no I/O."""

    async def local_path(self, image: dict[str, Any]) -> str:
        """A path on this node where the image's file can be read (fetching it if needed)."""


class ImagesByPath:
    """Images registered by a path that exists on every hypervisor."""

    def path_of(self, image: dict[str, Any]) -> str:
        return str(image["path"])

    async def local_path(self, image: dict[str, Any]) -> str:
        return str(image["path"])


class ImageNotLocal(ComputeError):
    """An image file is still on its way to this node."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


@dataclass
class ImageFetches:
    """Image files made local in the background: a multi-GB fetch or checksum must not
    hold up the agent's pass over the other VMs."""

    source: ImageSource
    running: dict[str, asyncio.Task[str]] = field(default_factory=dict)

    async def ready(self, image: dict[str, Any], wait_s: float = 1.0) -> str:
        """The local path once the file is here (waiting up to ``wait_s``); raises a
        transient ComputeError while it is still being fetched, and the fetch's own error
        once it failed (the next call retries)."""
        task = self.running.get(image["id"])
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = self.running[image["id"]] = asyncio.ensure_future(self.source.local_path(image))
        await asyncio.wait({task}, timeout=wait_s)
        if not task.done():
            raise ImageNotLocal(f"image {image['name']} is being fetched to this node")
        del self.running[image["id"]]
        return task.result()


@dataclass
class VmReconciler:
    driver: ComputeDriver
    settings: ReconcileSettings = field(default_factory=ReconcileSettings)
    memory: dict[str, VmMemory] = field(default_factory=dict)
    disks: LocalDisks | None = None  # None: the hypervisor needs no files (libvirt's test driver)
    image_source: ImageSource = field(default_factory=ImagesByPath)
    cluster_secret: str = field(default="", repr=False)  # CHAP passwords of volumes derive from it
    node: str = ""  # this node's name (set from the Env at each pass)
    lease: LeaseClock | None = None  # None: never self-fence (tests of other things)
    fence_after: float = 10.0
    fenced: bool = False  # the VMs here were destroyed for a stale lease
    fetches: ImageFetches = field(init=False)
    threads: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.fetches = ImageFetches(self.image_source)
        self.threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hypervisor")

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking hypervisor or disk call in the agent's own threads, with a timeout
        (a hung libvirtd then holds up only these threads, not the API's)."""
        loop = asyncio.get_running_loop()
        name = getattr(fn, "__name__", "")
        if name in LOGGED_ACTIONS and args:
            log.info("VM %s: %s", getattr(args[0], "name", args[0]), name)
        try:
            return await asyncio.wait_for(loop.run_in_executor(self.threads, functools.partial(fn, *args)), self.settings.call_timeout_s)
        except asyncio.TimeoutError:
            raise ComputeError(f"hypervisor call {getattr(fn, '__name__', fn)} timed out", transient=True) from None

    @property
    def layout(self) -> VmLayout:
        return VmLayout(Path(self.settings.vm_dir), Path(self.settings.swap_dir or self.settings.vm_dir))

    def volume_sources(self, vm: dict[str, Any], links: dict[str, dict[str, Any]]) -> dict[str, IscsiSource]:
        """The VM's volumes that are exported to this node now, as iSCSI sources."""
        out: dict[str, IscsiSource] = {}
        if not self.driver.secrets_supported:
            return out  # see volumes_blocked
        me = node_initiator(self.node)
        for ref in vm.get("volumes", ()):
            link = links.get(ref["id"])
            if not link or not link["portal"] or me not in link["exported_to"] or not self.cluster_secret:
                continue
            host, port = link["portal"].rsplit(":", 1)
            user, _ = chap_credentials(self.cluster_secret, ref["id"])
            out[ref["id"]] = IscsiSource(host.strip("[]"), int(port), volume_target(ref["id"]), me, user)
        return out

    def volumes_not_here(self, vm: dict[str, Any], links: dict[str, dict[str, Any]]) -> list[str]:
        """The VM's volumes not (yet) exported to this node."""
        me = node_initiator(self.node)
        return [ref["id"] for ref in vm.get("volumes", ()) if me not in (links.get(ref["id"]) or {}).get("exported_to", [])]

    def volumes_blocked(self, vm: dict[str, Any], links: dict[str, dict[str, Any]]) -> str | None:
        """Why the VM's volumes exported here cannot be attached (None: they can)."""
        me = node_initiator(self.node)
        waiting = [ref["id"] for ref in vm.get("volumes", ()) if me in (links.get(ref["id"]) or {}).get("exported_to", [])]
        if waiting and not self.driver.secrets_supported:
            return f"volumes {', '.join(waiting)} cannot be attached: this node's libvirt cannot hand CHAP passwords to qemu (an embedded libvirt; run libvirtd)"
        return None

    def spec(
        self, vm: dict[str, Any], images: dict[str, dict[str, Any]], links: dict[str, dict[str, Any]] | None = None, nets: NetworkView | None = None
    ) -> DomainSpec:
        """The domain this VM should have now (no I/O: ``ensure_files`` makes its files)."""
        image = images.get(vm.get("image") or "")
        boot: dict[str, str] = {}
        if image is not None and image["format"] == "kernel":
            boot = {"kernel": f"{image['path']}/vmlinuz", "initrd": f"{image['path']}/initrd.img", "cmdline": "console=ttyS0"}
        iso_path = None
        if vm.get("iso"):
            iso = images.get(vm["iso"])
            if iso is None:
                raise ComputeError(f"ISO image {vm['iso']} is gone")
            iso_path = self.image_source.path_of(iso)
        volumes = self.volume_sources(vm, links or {})
        nics = nic_specs(nets, vm["id"], self.settings.net_prefix) if nets is not None else ()
        return self.layout.spec(vm, boot, iso_path, volumes, domain_type=self.settings.domain_type, vnc_listen=self.settings.vnc_listen, interfaces=nics)

    async def ensure_files(self, vm: dict[str, Any], images: dict[str, dict[str, Any]], offline: bool = True) -> None:
        """Create every file the VM's domain refers to (each step idempotent); while the
        domain is ``offline``, grow an OS disk that a resize made bigger."""
        if self.disks is None:
            return
        layout, vm_id = self.layout, vm["id"]
        image = images.get(vm.get("image") or "")
        backing = backing_format = None
        root = layout.root_disk(vm_id)
        existed = root.exists()
        if image is not None and image["format"] in ("qcow2", "raw") and not existed:
            backing, backing_format = await self.fetches.ready(image), image["format"]
        if vm.get("iso") and vm["iso"] in images:
            await self.fetches.ready(images[vm["iso"]])
        await self._call(self.disks.ensure, root, vm["disk_gb"], backing, backing_format)
        if existed and offline and await self._call(self.disks.grow, root, vm["disk_gb"]):
            log.info("VM %s: OS disk grown to %g GB", vm["name"], vm["disk_gb"])
        if vm.get("swap_mb"):
            await self._call(self.disks.ensure, layout.swap_disk(vm_id), vm["swap_mb"] / 1024)
        for extra in vm.get("disks", ()):
            await self._call(self.disks.ensure, layout.extra_disk(vm_id, extra["id"]), extra["size_gb"])
        await self._call(write_seed, layout.seed(vm_id), seed_data(vm))

    async def ensure_secrets(self, spec: DomainSpec) -> None:
        """The CHAP passwords of the VM's iSCSI volumes, as the hypervisor's secrets."""
        for disk in spec.disks:
            if disk.iscsi is not None and disk.serial:
                await self._call(self.driver.ensure_secret, disk.iscsi.target, chap_credentials(self.cluster_secret, disk.serial)[1])

    async def remove_files(self, vm_id: str) -> None:
        if self.disks is not None:
            await self._call(self.disks.remove_all, self.layout.dir(vm_id))
            await self._call(self.disks.remove, self.layout.swap_disk(vm_id))

    async def remove_stale_disks(self, spec: DomainSpec, seen: DomainInfo) -> None:
        """Delete extra-disk files the VM no longer has (once no longer plugged in)."""
        if self.disks is None:
            return
        keep = {d.path for d in spec.disks} | set(seen.live_disks.values())
        for path in await self._call(self.disks.list, self.layout.dir(spec.vm_id), "disk-*.qcow2"):
            if str(path) not in keep:
                log.info("VM %s: removing the disk file %s it no longer has", spec.name, path.name)
                await self._call(self.disks.remove, path)

    async def self_fence(self, env: Env) -> bool:
        """Failover safety, the node's side: when this node could not renew its lease for
        ``fence_after``, the leader may soon restart its HA VMs elsewhere, so every
        cloudd domain here is destroyed first, and nothing is started until a renewal
        commits again. True while fenced."""
        if self.lease is None:
            return False
        stale = self.lease.stale_for(env.monotonic())
        if stale < self.fence_after:
            if self.fenced:
                log.warning("lease renewed again: VMs here are managed again")
            self.fenced = False
            return False
        try:
            actual = await self._call(self.driver.domains)
            running = sorted(vm_id for vm_id, seen in actual.items() if seen.power in ("running", "paused"))
            for vm_id in running:
                await self._call(self.driver.destroy, vm_id)
        except ComputeError as exc:
            log.error("self-fence: %s (the fence guard is the next line of defence)", exc)
            return True
        if running or not self.fenced:
            log.error("self-fence: no lease renewal for %.1fs (fence_after %.1fs): destroyed %d VMs (%s)", stale, self.fence_after, len(running), ", ".join(running))
        self.fenced = True
        return True

    async def remove_strangers(self, env: Env, actual: dict[str, DomainInfo], mine: dict[str, dict[str, Any]]) -> None:
        """A domain here whose VM the state assigns to another node is a stale copy (this
        node was lost and its VMs re-homed): destroy and undefine it, never start it."""
        state = env.state()
        for vm_id in sorted(set(actual) - set(mine)):
            vm = state.vms.get(vm_id)
            if vm is None or not vm.get("node") or vm["node"] == self.node:
                continue  # unknown here: left alone
            if (vm.get("migration") or {}).get("target") == self.node:
                continue  # arriving here (a live migration's incoming domain)
            log.error("VM %s runs on %s now: removing the stale copy here", vm_id, vm["node"])
            try:
                await self._call(self.driver.undefine, vm_id)
            except ComputeError as exc:
                log.error("VM %s: removing the stale copy: %s", vm_id, exc)

    async def step(self, env: Env) -> None:
        """One pass over this node's VMs."""
        self.node = env.node_name
        if await self.self_fence(env):
            return
        if self.lease is not None and not self.lease.ever_renewed:
            return  # no lease yet: this replica may be stale, start nothing
        mine = env.vms_on(env.node_name)
        images = env.images() if mine else {}
        links = env.volume_links(env.node_name) if mine else {}
        nets = env.network_view(env.node_name) if mine else NetworkView()
        try:
            actual = await self._call(self.driver.domains)
        except ComputeError as exc:
            log.warning("cannot read the hypervisor: %s", exc)
            return
        for vm_id, vm in sorted(mine.items()):
            if vm.get("migration"):
                continue  # the migration agent takes its steps
            # this VM's log lines carry the id of the request that last changed it
            with request_scope(TRAIL.of(vm_id), vm=vm_id):
                await self._pass_one(env, vm, actual.get(vm_id), images, links, nets)
        for vm_id in list(self.memory):
            if vm_id not in mine:
                del self.memory[vm_id]
        await self.remove_strangers(env, actual, mine)

    async def _pass_one(
        self, env: Env, vm: dict[str, Any], seen: DomainInfo | None, images: dict[str, dict[str, Any]], links: dict[str, dict[str, Any]], nets: NetworkView
    ) -> None:
        vm_id = vm["id"]
        memory = self.memory.setdefault(vm_id, VmMemory())
        error = None
        try:
            await self._converge(env, vm, seen, memory, images, links, nets)
        except ComputeError as exc:
            if exc.transient:
                log.warning("VM %s: %s (will retry)", vm["name"], exc)
                return
            error = str(exc)
            log.error("VM %s: %s", vm["name"], error)
        try:
            seen = (await self._call(self.driver.domains)).get(vm_id)
        except ComputeError:
            return
        await self._report(env, vm, seen, memory, error)

    async def _converge(
        self,
        env: Env,
        vm: dict[str, Any],
        seen: DomainInfo | None,
        memory: VmMemory,
        images: dict[str, dict[str, Any]],
        links: dict[str, dict[str, Any]],
        nets: NetworkView,
    ) -> None:
        vm_id, state, desired = vm["id"], vm["state"], vm["desired"]
        if state == "deleting":
            if seen is not None:
                await self._call(self.driver.undefine, vm_id)
            await self.remove_files(vm_id)
            return
        if state in ("pending", "migrating", "error") and seen is None:
            return
        repair = self.settings.drift == "repair" or state in ("creating", "starting", "stopping")
        spec = self.spec(vm, images, links, nets)
        if seen is None:
            if state != "creating":
                log.warning("VM %s: its domain vanished behind cloudd's back", vm["name"])
            if not repair:
                return
            waiting = self.volumes_not_here(vm, links)
            if waiting and vm["desired"]["power"] == "running":
                # a re-homed (or new) VM starts once its volumes are exported to this node:
                # the storage side switches the ACL first (storage fencing)
                log.info("VM %s: waiting for volumes %s to be exported here", vm["name"], ", ".join(waiting))
                return
            await self.ensure_files(vm, images)
            await self.ensure_secrets(spec)
            await self._call(self.driver.define, spec)
            seen = DomainInfo(vm_id, "shut_off", digest=spec.digest)
        else:
            memory.device_error = await self._update_devices(vm, images, spec, seen, memory) or self.volumes_blocked(vm, links)
        running = seen.power in ("running", "paused")
        if desired["power"] == "running":
            memory.shutdown_since = None
            if not running and (repair or state != "running") and state != "error":
                if self.lease is not None and self.lease.stale_for(env.monotonic()) >= self.fence_after:
                    return  # the lease ran out during this pass: start nothing (the self-fence follows)
                if state == "running":
                    log.warning("VM %s: found off behind cloudd's back; starting it again", vm["name"])
                await self._call(self.driver.start, vm_id)
                return
            if running and desired["action"] and desired["action_seq"] > memory.action_done:
                await self._call(self.driver.reset if desired["action"] == "reset" else self.driver.reboot, vm_id)
                memory.action_done = desired["action_seq"]
            return
        # desired stopped
        if not running:
            memory.shutdown_since = None
            return
        if state == "stopped" and not repair:
            return
        if desired["stop_mode"] == "force":
            await self._call(self.driver.destroy, vm_id)
            return
        now = env.monotonic()
        if memory.shutdown_since is None:
            memory.shutdown_since = now
            await self._call(self.driver.shutdown, vm_id)
        elif now - memory.shutdown_since >= self.settings.shutdown_timeout_s:
            log.info("VM %s ignored the ACPI shutdown for %.0fs: forcing it off", vm["name"], now - memory.shutdown_since)
            await self._call(self.driver.destroy, vm_id)
            memory.shutdown_since = None

    async def _update_devices(self, vm: dict[str, Any], images: dict[str, dict[str, Any]], spec: DomainSpec, seen: DomainInfo, memory: VmMemory) -> str | None:
        """Bring an existing domain's devices up to date: files, the persistent definition,
        hot-plug into a running guest, files of removed disks. Never blocks the power
        steps: a failure is returned (and reported) instead of raised, unless the
        hypervisor itself is unreachable."""
        try:
            if seen.digest != spec.digest:
                await self.ensure_files(vm, images, offline=seen.power not in ("running", "paused"))
                await self.ensure_secrets(spec)
                await self._call(self.driver.define, spec)  # the next start; live changes below
            if seen.power == "running" and self.driver.hotplug:
                await self._hotplug(spec, seen, memory)
            await self.remove_stale_disks(spec, seen)
        except ImageNotLocal as exc:
            return str(exc)
        except ComputeError as exc:
            if exc.transient:
                raise
            log.warning("VM %s: devices not updated: %s", vm["name"], exc)
            return str(exc)
        return None

    async def _hotplug(self, spec: DomainSpec, seen: DomainInfo, memory: VmMemory) -> None:
        """Make the running guest's hot-pluggable disks match the spec: unplug what went,
        plug what came (a changed ISO is unplugged in this pass, the new one plugged in a
        later one). An unplug waits for the guest: it is asked again only every
        ``unplug_retry_s``, never every pass."""
        wanted = {d.target: d for d in spec.disks if hot_pluggable(d.target)}
        now = time.monotonic()
        for target in list(memory.unplug_asked):
            if (target[4:] not in seen.live_nics) if target.startswith("nic:") else (target not in seen.live_disks):
                del memory.unplug_asked[target]  # gone
        for target, path in sorted(seen.live_disks.items()):
            if not hot_pluggable(target) or (target in wanted and (not path or path == wanted[target].path)):
                continue
            asked = memory.unplug_asked.get(target)
            if asked is not None and now - asked < self.settings.unplug_retry_s:
                continue
            if asked is not None:
                log.warning("VM %s: the guest has not released %s for %.0fs; asking again", spec.name, target, now - asked)
            log.info("VM %s: unplugging %s", spec.name, target)
            memory.unplug_asked[target] = now
            await self._call(self.driver.detach_live, spec.vm_id, target)
        for target, disk in sorted(wanted.items()):
            if target not in seen.live_disks:
                log.info("VM %s: plugging in %s (%s)", spec.name, target, Path(disk.path).name)
                await self._call(self.driver.attach_live, spec.vm_id, disk)
        nics = {nic.mac: nic for nic in spec.interfaces}
        for mac in sorted(set(seen.live_nics) - set(nics)):
            key = f"nic:{mac}"
            asked = memory.unplug_asked.get(key)
            if asked is not None and now - asked < self.settings.unplug_retry_s:
                continue
            log.info("VM %s: unplugging the NIC %s", spec.name, mac)
            memory.unplug_asked[key] = now
            await self._call(self.driver.detach_nic_live, spec.vm_id, mac)
        for mac, nic in sorted(nics.items()):
            memory.unplug_asked.pop(f"nic:{mac}", None)
            if mac not in seen.live_nics:
                log.info("VM %s: plugging in the NIC %s on %s", spec.name, mac, nic.bridge)
                await self._call(self.driver.attach_nic_live, spec.vm_id, nic)

    async def _report(self, env: Env, vm: dict[str, Any], seen: DomainInfo | None, memory: VmMemory, error: str | None) -> None:
        power = seen.power if seen else "absent"
        vnc = seen.vnc_port if seen else None
        disks = sorted(seen.live_disks) if seen else []
        nics = sorted(seen.live_nics) if seen else []
        observed = vm.get("observed") or {}
        was = (observed.get("power"), observed.get("error"), observed.get("vnc_port"), observed.get("disks", []), observed.get("nics", []), observed.get("device_error"))
        news = was != (power, error, vnc, disks, nics, memory.device_error)
        acknowledges = vm["desired"]["action"] is not None and memory.action_done >= vm["desired"]["action_seq"]
        usage = await self._sample_usage(env, vm, power, memory)
        if not (news or acknowledges or error or usage or would_move(vm, power)):
            return
        args: dict[str, Any] = {
            "id": vm["id"], "node": env.node_name, "power": power, "error": error, "vnc_port": vnc, "disks": disks, "nics": nics, "device_error": memory.device_error,
        }
        if usage:
            args["usage"] = usage
        if memory.action_done:
            args["action_seq"] = memory.action_done
        await try_propose(env, "vm.report", args, f"VM {vm['name']}: report")


    async def _sample_usage(self, env: Env, vm: dict[str, Any], power: str, memory: VmMemory) -> dict[str, float] | None:
        """Every ``usage_interval_s`` for a running VM: CPU % (of one core) since the last
        sample, RAM and disk counters. None between samples (the Raft log is no time series)."""
        now = env.monotonic()
        if power != "running":
            memory.usage_at = memory.cpu_time_s = None
            return None
        if memory.usage_at is not None and now - memory.usage_at < self.settings.usage_interval_s:
            return None
        try:
            counters = await self._call(self.driver.usage, vm["id"])
        except ComputeError:
            return None
        if not counters:
            return None
        first = memory.usage_at is None
        cpu_pct = 0.0
        if not first and memory.cpu_time_s is not None and now > memory.usage_at:  # type: ignore[operator]
            cpu_pct = max(0.0, (counters["cpu_time_s"] - memory.cpu_time_s) / (now - memory.usage_at) * 100)  # type: ignore[operator]
        memory.usage_at, memory.cpu_time_s = now, counters["cpu_time_s"]
        if first:
            return None  # the first sample only sets the baseline
        usage = {"cpu_pct": round(cpu_pct, 1), "ram_used_mb": counters.get("ram_used_mb", 0.0)}
        for key in ("disk_read_bytes", "disk_write_bytes"):
            if key in counters:
                usage[key] = counters[key]
        return usage


def would_move(vm: dict[str, Any], power: str) -> bool:
    """Whether reporting ``power`` would advance the VM's lifecycle state."""
    state, off = vm["state"], power in ("shut_off", "crashed")
    return (
        (state == "creating" and (power == "running" or (off and vm["desired"]["power"] == "stopped")))
        or (state in ("starting", "stopped") and power == "running")
        or (state in ("stopping", "running") and off)
        or (state == "deleting" and power == "absent")
        # an HA VM that waited for room while this node was lost: a report says "back"
        or (bool(vm.get("failover_waiting")) and power != "absent")
    )
