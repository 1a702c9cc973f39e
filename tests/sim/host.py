"""A simulated machine (its hypervisor, clock and fence guard) and the cloudd process on it.

The cloudd process is wired like ``cloudd.daemon.serve_async``: one ``Agent`` whose
``LeaseClock`` is created when cloudd starts (never renewed until a heartbeat commits),
shared with the ``VmReconciler`` (hypervisors only) for self-fencing, and a ``Manager``.
The fence guard is ``cloudd.fence_guard.GuardState`` on the host's clock, fed by the
agent after every committed renewal (``Agent.on_renewed``).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudd.agent import Agent
from cloudd.config import Timings
from cloudd.fence_guard import GuardState
from cloudd.manager import Manager
from cloudd.migration_agent import MigrationAgent
from cloudd.ops.compute import ComputeError, DomainSpec, LiveOptions, MigrationResult, MigrationTarget
from cloudd.ops.fake_compute import FakeCompute
from cloudd.reconcile import LeaseClock, ReconcileSettings, VmReconciler
from tests.sim.spec import NodeSpec

ACTIVE = ("running", "paused")
IDLE_USAGE = {"ram_used_mb": 0, "disk_used_gb": 0.0, "load1": 0.0}  # the hosts report no use


def node_inventory(spec: NodeSpec) -> dict[str, Any]:
    """What a simulated node's agent registers: the hardware cluster.json gives it."""
    return {"cpus": spec.cpus, "ram_mb": spec.ram_mb, "disk_gb": spec.disk_gb, "facts": {"hostname": spec.name}}


class InlineExecutor(concurrent.futures.Executor):
    """Runs a 'blocking' hypervisor call at once in the caller's thread: no threads, so
    the reconciler's steps stay deterministic."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine, as a thread would
            future.set_exception(exc)
        return future


class SimCompute(FakeCompute):
    """``FakeCompute`` that tells the simulator of every power change as it happens (so
    the log shows it in the order the reconciler caused it)."""

    def __init__(self, peers: dict[str, FakeCompute] | None = None) -> None:
        super().__init__(peers=peers)
        self.on_power: Callable[[str, str, str], None] = lambda vm_id, old, new: None
        self.note_as: str | None = None  # who the log names for a change not made by this host's cloudd
        self.can_reach: Callable[[str], bool] = lambda node: True  # the simulator: powered, same side of a partition

    def _watch(self, vm_id: str, change: Callable[[], None]) -> None:
        old = self.power.get(vm_id, "absent")
        try:
            change()
        finally:
            new = self.power.get(vm_id, "absent")
            if new != old:
                self.on_power(vm_id, old, new)

    def define(self, spec: DomainSpec) -> None:
        self._watch(spec.vm_id, lambda: super(SimCompute, self).define(spec))

    def start(self, vm_id: str) -> None:
        self._watch(vm_id, lambda: super(SimCompute, self).start(vm_id))

    def shutdown(self, vm_id: str) -> None:
        self._watch(vm_id, lambda: super(SimCompute, self).shutdown(vm_id))

    def destroy(self, vm_id: str) -> None:
        self._watch(vm_id, lambda: super(SimCompute, self).destroy(vm_id))

    def undefine(self, vm_id: str) -> None:
        self._watch(vm_id, lambda: super(SimCompute, self).undefine(vm_id))

    def kill(self, vm_id: str) -> None:
        self._watch(vm_id, lambda: super(SimCompute, self).kill(vm_id))

    def migrate_live(self, vm_id: str, target: MigrationTarget, target_spec: DomainSpec, options: LiveOptions) -> MigrationResult:
        peer = self.peers.get(target.libvirt_uri)
        if not isinstance(peer, SimCompute):
            return super().migrate_live(vm_id, target, target_spec, options)
        if not self.can_reach(target.node):
            raise ComputeError(f"live-migrating cloudd-{vm_id}: cannot reach {target.libvirt_uri}")
        result: list[MigrationResult] = []
        peer.note_as = f"{target.node}/libvirt"  # the guest arrives there without its cloudd doing anything
        try:
            peer._watch(vm_id, lambda: self._watch(vm_id, lambda: result.append(super(SimCompute, self).migrate_live(vm_id, target, target_spec, options))))
        finally:
            peer.note_as = None
        return result[0]


@dataclass
class Cloudd:
    """One run of the cloudd process: its loops and when each is due next."""

    agent: Agent
    manager: Manager
    reconciler: VmReconciler | None
    migrations: MigrationAgent | None
    due: dict[str, float]
    started_at: float = 0.0
    renewed: bool = False  # a lease renewal committed since this process started
    renewal_failing_since: float | None = None


@dataclass
class Host:
    spec: NodeSpec
    compute: SimCompute = field(default_factory=SimCompute)  # the simulator gives every host one shared ``peers``
    powered: bool = True
    boot_at: float = 0.0
    guard: GuardState | None = None
    cloudd: Cloudd | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def monotonic(self, now: float) -> float:
        """This host's monotonic clock: it restarts at every boot and may run fast or slow."""
        return self.spec.clock_offset + self.spec.clock_rate * (now - self.boot_at)

    def domains(self) -> dict[str, str]:
        """vm id -> power of every domain defined here."""
        return {vm_id: self.compute.power[vm_id] for vm_id in sorted(self.compute.defined)}

    def active(self) -> list[str]:
        return [vm_id for vm_id, power in self.domains().items() if power in ACTIVE]

    def boot(self, now: float, timings: Timings) -> None:
        self.powered, self.boot_at = True, now
        self.guard = GuardState(timings.fence_after) if self.spec.guard and "hypervisor" in self.spec.roles else None  # as cloudd.daemon

    def compute_facts(self) -> dict[str, Any]:
        """As ``cloudd.daemon.ComputeFacts``: the hosts migrate live to each other."""
        return compute_facts(self.name)

    def power_loss(self) -> None:
        """Every domain dies with the host; its definition stays (libvirt keeps it on disk)."""
        self.powered, self.cloudd, self.guard = False, None, None
        for vm_id in self.active():
            self.compute.kill(vm_id)

    def start_cloudd(self, now: float, timings: Timings, on_renewed: Callable[[], None]) -> Cloudd:
        agent = Agent(f"sim:{self.name}", list(self.spec.roles), inventory=lambda: node_inventory(self.spec), usage=lambda: dict(IDLE_USAGE))
        agent.lease = LeaseClock(started_at=self.monotonic(now))  # as LeaseClock() at start: never renewed yet
        agent.on_renewed = on_renewed
        reconciler = None
        if "hypervisor" in self.spec.roles:
            reconciler = VmReconciler(
                self.compute,
                ReconcileSettings(domain_type="test", vm_dir=f"/sim/{self.name}/vms"),
                disks=None,
                node=self.name,
                lease=agent.lease,
                fence_after=timings.fence_after,
            )
            reconciler.threads.shutdown(wait=False)  # never used: no thread was started
            reconciler.threads = InlineExecutor()  # type: ignore[assignment]
            migrations = MigrationAgent(reconciler, threads=InlineExecutor())  # type: ignore[arg-type]
            agent.compute = self.compute_facts
        else:
            migrations = None
        self.cloudd = Cloudd(agent, Manager(timings), reconciler, migrations, {"agent": now, "reconcile": now, "manager": now}, started_at=now)
        return self.cloudd


def compute_facts(name: str) -> dict[str, Any]:
    return {"cpu_models": [], "live_migration": True, "migration_uri": f"sim://{name}", "migrate_uri": None}
