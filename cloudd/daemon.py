"""``cloudd serve``: Raft, the HTTP server, the agent and the manager in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import uvicorn

from cloudd.agent import Agent
from cloudd.config import NodeConfig, read_secret
from cloudd.manager import Manager
from cloudd.migration_agent import MigrationAgent
from cloudd.ops.compute import ComputeError
from cloudd.ops.vm_files import VmFileFetch
from cloudd.ops.libvirt_compute import LibvirtCompute
from cloudd.ops.file_volumes import FileVolumes
from cloudd.ops.local_disk import LocalDisks
from cloudd.ops.storage import ExportBackend, StorageError, VolumeBackend
from cloudd.ops.tgt import TgtDaemon, TgtExports, free_control_port
from cloudd.raft.node import ReplicatedState
from cloudd.reconcile import ImageSource, ImagesByPath, LeaseClock, ReconcileSettings, VmReconciler
from cloudd.raft.tuning import RaftTuning
from cloudd.runtime import NodeRuntime
from cloudd.fence_guard import FenceFeeder
from cloudd.logging_setup import TRAIL, set_node
from cloudd.systemd import Notifier
from cloudd.network_agent import NetworkAgent
from cloudd.ops.network import NetworkDrivers
from cloudd.storage_agent import StorageReconciler
from cloudd.web.app import create_app

log = logging.getLogger("cloudd")

PID_FILE = "cloudd.pid"


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after serving, which would kill us before Raft shuts down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def open_replica(config: NodeConfig, secret: str) -> ReplicatedState:
    return ReplicatedState(
        node_name=config.name,
        self_addr=config.raft_addr if config.membership == "voter" else None,
        partners=config.peers,
        secret=secret,
        journal_file=config.journal_file,
        snapshot_file=config.snapshot_file,
        tuning=RaftTuning(compaction_entries=config.raft.compaction_entries, compaction_seconds=config.raft.compaction_seconds),
    )


async def _every(interval: float, step, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:  # type: ignore[no-untyped-def]
    """Run ``step`` every ``interval`` seconds, or at once when ``wake`` is set."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            await step()
        except Exception:
            log.exception("periodic task %s failed", getattr(step, "__qualname__", step))
        waiters = [asyncio.ensure_future(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.ensure_future(wake.wait()))
        done, pending = await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()
        if wake is not None and wake.is_set():
            await asyncio.sleep(0.05)  # let a burst of commands land: one step for all of them


def wake_on_vm_commands(raft: ReplicatedState, loop: asyncio.AbstractEventLoop, events: list[asyncio.Event]) -> None:
    """Wake the manager and the VM reconciler as soon as a VM command applies, instead
    of at their next period (a wake-up is only a hint: a missed one costs a period)."""

    def hook(_index: int, command: bytes, _outcome: object) -> None:
        if command.startswith((b'{"op":"vm.', b'{"op":"volume.')) and not command.startswith((b'{"op":"vm.report"', b'{"op":"volume.report"')):
            for event in events:
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # loop closed at shutdown
                    pass

    raft.apply_hooks.append(hook)


def wake_on_domain_events(reconciler: VmReconciler, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
    """A domain that changed behind cloudd's back (or a lost hypervisor connection) wakes
    the reconciler at once instead of at its next period."""

    def changed(_vm_id: str | None) -> None:
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # loop closed at shutdown
            pass

    reconciler.driver.watch(changed)


def _remember_peers(runtime: NodeRuntime) -> None:
    """Keep node.json's voter list current so a restart finds the cluster."""
    voters = runtime.raft.voter_addrs() if runtime.raft.is_voter else None
    with runtime.raft.lock:
        known = sorted(n["raft_addr"] for n in runtime.raft.state.nodes.values() if n["membership"] == "voter" and n["raft_addr"])
        api_addrs = sorted(n["api_addr"] for n in runtime.raft.state.nodes.values())
    peers = voters if voters else known
    if peers and (peers != runtime.config.peers or api_addrs != runtime.config.api_peers):
        runtime.config.peers = peers
        if api_addrs:
            runtime.config.api_peers = api_addrs
        runtime.config.save()


def make_reconciler(config: NodeConfig, image_source: ImageSource | None = None, cluster_secret: str = "") -> VmReconciler | None:
    """The VM reconcile loop of a hypervisor node (None on storage-only nodes)."""
    if "hypervisor" not in config.roles:
        return None
    settings = config.compute
    if settings.uri.startswith("test:"):
        log.warning("compute: libvirt's TEST driver (%s): VMs are simulated by libvirt, no guest really runs", settings.uri)
    else:
        log.info("compute: libvirt at %s, domain type %s", settings.uri, settings.domain_type)
    return VmReconciler(
        LibvirtCompute(settings.uri, vnc_range=(settings.vnc_port_min, settings.vnc_port_max), domain_type=settings.domain_type),
        ReconcileSettings(
            domain_type=settings.domain_type,
            vnc_listen=settings.vnc_listen,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            drift=settings.drift,
            vm_dir=settings.vm_dir or str(Path(config.data_dir) / "vms"),
            swap_dir=settings.swap_dir,
            net_prefix=config.network.prefix,
            migration_unsafe=settings.migration_unsafe,
        ),
        disks=None if settings.domain_type == "test" else LocalDisks(),
        image_source=image_source or ImagesByPath(),
        cluster_secret=cluster_secret,
        node=config.name,
    )


SELF_FENCE_CHECK_S = 0.25
CPU_MODELS_TIMEOUT_S = 20.0  # the first look probes qemu (seconds on a fresh host)


class ComputeFacts:
    """What a hypervisor registers for CPU compatibility and live migration. The CPU models
    are read in the background (the first look probes qemu: seconds on a fresh host), so
    the node registers at once and again when they are known."""

    def __init__(self, config: NodeConfig, reconciler: VmReconciler) -> None:
        self.config, self.driver = config, reconciler.driver
        self.models: list[str] = []
        self.looking: asyncio.Task[None] | None = None

    def now(self) -> dict[str, Any]:
        if self.looking is None:
            self.looking = asyncio.ensure_future(self._look())
        uri, migrate_uri = self.config.compute.migration_addresses(self.config.api_addr)
        return {
            "cpu_models": self.models,
            "live_migration": bool(self.driver.live_migration and uri),
            "migration_uri": uri,
            "migrate_uri": migrate_uri,
            "tunnelled": self.config.compute.migration_tunnelled,
            "tls": self.config.compute.migration_tls,
        }

    async def _look(self) -> None:
        try:
            models = await asyncio.wait_for(asyncio.to_thread(self.driver.cpu_models), CPU_MODELS_TIMEOUT_S)
        except (asyncio.TimeoutError, ComputeError) as exc:
            log.warning("cannot read the CPU models libvirt offers (VMs here get its default CPU): %s", exc or "timed out")
            return
        self.models = sorted(models)[:256]


def make_network_drivers(config: NodeConfig) -> NetworkDrivers:
    """The real network drivers of this node (pyroute2, nftables, dnsmasq)."""
    from cloudd.ops.dhcp import DnsmasqDhcp
    from cloudd.ops.netlink_links import NetlinkLinks
    from cloudd.ops.nft_filter import NftFilter

    settings = config.network
    return NetworkDrivers(
        links=NetlinkLinks(prefix=settings.prefix, netns=settings.netns),
        filters=NftFilter(prefix=settings.prefix, netns=settings.netns),
        # dnsmasq reads its hosts file as "nobody": not under the (private) data dir
        dhcp=DnsmasqDhcp(Path("/run/cloudd") / f"{settings.prefix}-dhcp", prefix=settings.prefix, netns=settings.netns),
    )


def make_network_agent(config: NodeConfig) -> NetworkAgent | None:
    """The network loop of a hypervisor (None on storage-only nodes or with ``none``)."""
    settings = config.network
    if "hypervisor" not in config.roles or settings.driver == "none":
        return None
    host, port = settings.underlay_for(config.api_addr).rsplit(":", 1)
    drivers = make_network_drivers(config)
    log.info("network: bridges %sb…, VXLAN underlay %s:%s", settings.prefix, host, port)
    return NetworkAgent(drivers, prefix=settings.prefix, local_ip=host.strip("[]"), local_port=int(port), usage_interval_s=settings.usage_interval_s)


def make_volume_backend(pool: dict[str, Any]) -> VolumeBackend:
    """The backend of one storage pool on this node."""
    if pool["backend"] == "file":
        return FileVolumes(pool["config"]["path"])
    if pool["backend"] == "lvm":
        from cloudd.ops.lvm import LvmVolumes

        return LvmVolumes(pool["config"]["vg"], thin_pool=pool["config"].get("thin_pool"))
    if pool["backend"] == "drbd":
        from cloudd.ops.drbd_pool import ReplicatedVolumes

        return ReplicatedVolumes(pool["config"]["vg"], thin_pool=pool["config"].get("thin_pool"))
    raise StorageError(f"unknown storage backend {pool['backend']}")


def make_exports(config: NodeConfig) -> tuple[ExportBackend | None, TgtDaemon | None]:
    """This storage node's iSCSI target (and the private tgtd it runs, if any)."""
    settings = config.storage
    portal = settings.portal_for(config.api_addr)
    if settings.export == "none":
        return None, None
    if settings.export == "lio":
        from cloudd.ops.lio import LioExports

        return LioExports(portal), None
    daemon = None
    control = settings.tgt_control_port
    if settings.private_tgtd:
        control = control if control is not None else free_control_port()
        daemon = TgtDaemon(control, portal, Path(config.data_dir) / "tgtd.log", pid_file=Path(config.data_dir) / "tgtd.pid").start()
        log.info("storage: a private tgtd serves iSCSI on %s", portal)
    return TgtExports(portal, control_port=control), daemon


def make_storage_agent(config: NodeConfig, secret: str, images: Any) -> tuple[StorageReconciler | None, TgtDaemon | None]:
    if "storage" not in config.roles:
        return None, None
    try:
        exports, daemon = make_exports(config)
    except StorageError as exc:
        log.error("storage: no iSCSI exports on this node: %s", exc)
        exports, daemon = None, None
    return StorageReconciler(config.name, make_volume_backend, exports, secret, images=images), daemon


def node_status_line(runtime: NodeRuntime) -> str:
    """systemd's STATUS= line: role, term, applied index, VMs here."""
    status = runtime.raft.raft_status()
    with runtime.raft.lock:
        vms = sum(1 for vm in runtime.raft.state.vms.values() if vm.get("node") == runtime.config.name)
    quorum = "" if status["has_quorum"] or status["role"] == "replica" else ", NO QUORUM"
    return f"{status['role']}, term {status['term']}, applied {status['last_applied']}, {vms} VMs here{quorum}"


async def notify_ready(server: uvicorn.Server, notifier: Notifier, runtime: NodeRuntime, stop: asyncio.Event) -> None:
    """READY=1 once uvicorn listens (the API serves)."""
    while not server.started and not stop.is_set():
        await asyncio.sleep(0.05)
    if server.started:
        notifier.ready(f"serving the API on {runtime.config.api_addr}; " + node_status_line(runtime))


def feeding_watchdog(step: Callable[[], Awaitable[None]], notifier: Notifier, status: Callable[[], str]) -> Callable[[], Awaitable[None]]:
    """The agent's pass, then a watchdog keep-alive and a STATUS= line. The keep-alive is
    reached only when the pass completed: a hung agent loop (or one that raises every
    time) starves systemd's watchdog (WatchdogSec) and cloudd is restarted."""

    async def one_pass() -> None:
        await step()
        notifier.alive()
        notifier.status(status())

    return one_pass


async def serve_async(config: NodeConfig, secret: str, metrics_token: str | None = None, notifier: Notifier | None = None) -> None:
    notifier = notifier or Notifier.take_from_environ()
    set_node(config.name)
    raft = open_replica(config, secret)
    raft.apply_hooks.append(TRAIL.note_command)  # request ids for the agents' log lines
    runtime = NodeRuntime.build(config, secret, raft)
    host, port = config.api_addr.rsplit(":", 1)
    app = create_app(runtime)
    app.state.metrics_token = metrics_token
    server = GracefulServer(
        uvicorn.Config(
            app,
            host=host.strip("[]"),
            port=int(port),
            log_level="warning",
            access_log=False,
            loop="asyncio",
            http="httptools",
            lifespan="off",
            timeout_graceful_shutdown=3,
        )
    )
    stop = asyncio.Event()
    storage_info = {"export": config.storage.export, "portal": config.storage.portal_for(config.api_addr)} if "storage" in config.roles else None
    network = await asyncio.to_thread(make_network_agent, config)  # pyroute2's sync socket runs a loop of its own
    network_info = {"underlay": config.network.underlay_for(config.api_addr)} if network is not None else None
    agent = Agent(config.data_dir, config.roles, storage_info, network_info)
    agent.lease = LeaseClock()
    if "hypervisor" in config.roles:
        # feed the fence guard (its own unit) only while the lease is renewed: when cloudd
        # dies or hangs with its VMs alive, the guard destroys them before the leader
        # restarts them elsewhere
        feeder = FenceFeeder(Path(config.data_dir) / "fence.sock")

        def feed_guard() -> None:
            feeder.feed(config.timings.fence_after)  # False (no guard listening) is fine here

        agent.on_renewed = feed_guard
    manager = Manager(config.timings)
    reconciler = make_reconciler(config, runtime.images, secret)
    migrations = None
    if reconciler is not None:
        reconciler.lease, reconciler.fence_after = agent.lease, config.timings.fence_after
        migrations = MigrationAgent(reconciler, VmFileFetch(config.name, secret, runtime.api_addr_of))
        facts = ComputeFacts(config, reconciler)
        agent.compute = facts.now
    storage, tgtd = await asyncio.to_thread(make_storage_agent, config, secret, runtime.images)
    if storage is not None:  # a storage node with a stale lease stops serving its DRBD primaries
        storage.lease, storage.fence_after = agent.lease, config.timings.fence_after
    manager_wake, reconcile_wake, storage_wake = asyncio.Event(), asyncio.Event(), asyncio.Event()
    wake_on_vm_commands(raft, asyncio.get_running_loop(), [manager_wake, reconcile_wake, storage_wake])
    agent_pass = feeding_watchdog(lambda: agent.step(runtime.env), notifier, lambda: node_status_line(runtime))
    tasks = [
        asyncio.create_task(notify_ready(server, notifier, runtime, stop)),
        asyncio.create_task(_every(config.timings.heartbeat_interval, agent_pass, stop)),
        asyncio.create_task(_every(config.timings.manager_interval, lambda: manager.step(runtime.env), stop, manager_wake)),
        asyncio.create_task(_every(2.0, lambda: asyncio.to_thread(_remember_peers, runtime), stop)),
    ]
    if reconciler is not None:
        wake_on_domain_events(reconciler, asyncio.get_running_loop(), reconcile_wake)

        async def reconcile() -> None:
            if network is not None:
                try:
                    await network.step(runtime.env)  # bridges before the VMs that use them
                except Exception:  # a network bug must not stop the VMs' reconciling
                    log.exception("network pass failed")
            try:
                await migrations.step(runtime.env)  # type: ignore[union-attr]
            except Exception:  # a migration bug must not stop the VMs' reconciling
                log.exception("migration pass failed")
            await reconciler.step(runtime.env)
            await runtime.images.report_copies(runtime.env)  # image copies fetched for VMs

        tasks.append(asyncio.create_task(_every(config.compute.reconcile_interval_s, reconcile, stop, reconcile_wake)))
        # the self-fence on its own short timer: a reconcile pass can take seconds (a slow
        # proposal, a slow libvirt call), and the leader's margin must not be eaten by it
        tasks.append(asyncio.create_task(_every(SELF_FENCE_CHECK_S, lambda: reconciler.self_fence(runtime.env), stop)))
    if storage is not None:
        tasks.append(asyncio.create_task(_every(config.compute.reconcile_interval_s, lambda: storage.step(runtime.env), stop, storage_wake)))
    tasks.append(asyncio.create_task(_every(60.0, lambda: runtime.images.prune(runtime.env.images()), stop)))
    log.info("node %s serving the API on http://%s (raft %s, %s)", config.name, config.api_addr, config.raft_addr, config.membership)
    try:
        await server.serve()
    finally:
        notifier.stopping()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if tgtd is not None:
            await asyncio.to_thread(tgtd.stop)
        raft.destroy()
        log.info("node %s stopped", config.name)


def serve(data_dir: str, metrics_token: str | None = None) -> None:
    config = NodeConfig.load(data_dir)
    secret = read_secret(data_dir)
    pid_path = Path(config.data_dir) / PID_FILE
    pid_path.write_text(str(os.getpid()))
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve_async(config, secret, metrics_token))
        else:
            uvloop.run(serve_async(config, secret, metrics_token))
    finally:
        try:
            if pid_path.read_text() == str(os.getpid()):
                pid_path.unlink()
        except OSError:
            pass


def signal_daemon(data_dir: str, sig: int = signal.SIGTERM) -> bool:
    try:
        pid = int((Path(data_dir) / PID_FILE).read_text())
        os.kill(pid, sig)
        return True
    except (OSError, ValueError):
        return False
