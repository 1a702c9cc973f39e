"""An in-memory hypervisor for the simulator and unit tests (a first-class driver).

It keeps the same contract as libvirt, including idempotency, and lets tests break
things behind cloudd's back (``kill``, ``forget``) or make calls fail (``fail_next``).
Fakes that share a ``peers`` dict (libvirt URI -> fake) migrate live to each other.
"""

from __future__ import annotations

from typing import Callable

from cloudd.ops.compute import (
    ComputeError, DiskSpec, DomainInfo, DomainSpec, LiveOptions, MigrationProgress, MigrationResult, MigrationTarget, NicSpec,
)


class FakeCompute:
    def __init__(
        self, honours_acpi: bool = True, hotplug: bool = True, releases_unplugged: bool = True,
        peers: dict[str, FakeCompute] | None = None, cpu_models: list[str] | None = None,
    ) -> None:
        self.peers = peers if peers is not None else {}  # MigrationTarget.libvirt_uri -> the target's fake
        self.host_cpu_models: list[str] = list(cpu_models or [])  # what cpu_models() reports (settable)
        self.releases_unplugged = releases_unplugged  # False: a guest that never lets go of a disk
        self.defined: dict[str, DomainSpec] = {}
        self.live: dict[str, dict[str, str]] = {}  # running domains: target -> path
        self.live_nics: dict[str, dict[str, str]] = {}  # running domains: MAC -> tap
        self.secrets: dict[str, str] = {}  # iSCSI usage id -> CHAP password
        self.hotplug = hotplug
        self.on_change: Callable[[str | None], None] | None = None
        self.power: dict[str, str] = {}
        self.honours_acpi = honours_acpi
        self.calls: list[tuple[str, str]] = []
        self.failures: dict[str, str] = {}
        self.resets: dict[str, int] = {}
        self.cpu_time: dict[str, float] = {}

    def fail_next(self, method: str, message: str) -> None:
        self.failures[method] = message

    def _call(self, method: str, vm_id: str) -> None:
        self.calls.append((method, vm_id))
        if method in self.failures:
            raise ComputeError(self.failures.pop(method))

    def _need(self, vm_id: str) -> None:
        if vm_id not in self.defined:
            raise ComputeError(f"domain cloudd-{vm_id} is not defined")

    def domains(self) -> dict[str, DomainInfo]:
        out = {}
        for vm_id, spec in self.defined.items():
            running = self.power[vm_id] == "running"
            out[vm_id] = DomainInfo(
                vm_id, self.power[vm_id], 5900 if running else None, spec.digest,
                dict(self.live.get(vm_id, {})) if running else {}, dict(self.live_nics.get(vm_id, {})) if running else {},
            )
        return out

    def watch(self, on_change: Callable[[str | None], None]) -> None:
        self.on_change = on_change

    secrets_supported = True

    def ensure_secret(self, usage_id: str, value: str) -> None:
        self.secrets[usage_id] = value

    def define(self, spec: DomainSpec) -> None:
        self._call("define", spec.vm_id)
        self.defined[spec.vm_id] = spec
        self.power.setdefault(spec.vm_id, "shut_off")

    def start(self, vm_id: str) -> None:
        self._call("start", vm_id)
        self._need(vm_id)
        if self.power[vm_id] != "running":
            self.live[vm_id] = {d.target: d.path for d in self.defined[vm_id].disks}
            self.live_nics[vm_id] = {n.mac: n.tap for n in self.defined[vm_id].interfaces}
        self.power[vm_id] = "running"

    def attach_live(self, vm_id: str, disk: DiskSpec) -> None:
        self._call("attach_live", vm_id)
        self._need(vm_id)
        if self.power[vm_id] == "running":
            self.live[vm_id].setdefault(disk.target, disk.path)

    def detach_live(self, vm_id: str, target: str) -> None:
        self._call("detach_live", vm_id)
        self._need(vm_id)
        if self.power[vm_id] == "running" and self.releases_unplugged:
            self.live[vm_id].pop(target, None)

    def attach_nic_live(self, vm_id: str, nic: NicSpec) -> None:
        self._call("attach_nic_live", vm_id)
        self._need(vm_id)
        if self.power[vm_id] == "running":
            self.live_nics[vm_id].setdefault(nic.mac, nic.tap)

    def detach_nic_live(self, vm_id: str, mac: str) -> None:
        self._call("detach_nic_live", vm_id)
        self._need(vm_id)
        if self.power[vm_id] == "running":
            self.live_nics[vm_id].pop(mac, None)

    def shutdown(self, vm_id: str) -> None:
        self._call("shutdown", vm_id)
        self._need(vm_id)
        if self.honours_acpi:
            self.power[vm_id] = "shut_off"

    def destroy(self, vm_id: str) -> None:
        self._call("destroy", vm_id)
        if vm_id in self.defined:
            self.power[vm_id] = "shut_off"

    def reset(self, vm_id: str) -> None:
        self._call("reset", vm_id)
        self._need(vm_id)
        self.resets[vm_id] = self.resets.get(vm_id, 0) + 1

    def reboot(self, vm_id: str) -> None:
        self._call("reboot", vm_id)
        self._need(vm_id)
        self.resets[vm_id] = self.resets.get(vm_id, 0) + 1

    def undefine(self, vm_id: str) -> None:
        self._call("undefine", vm_id)
        self.defined.pop(vm_id, None)
        self.power.pop(vm_id, None)
        self.live.pop(vm_id, None)
        self.live_nics.pop(vm_id, None)

    def usage(self, vm_id: str) -> dict[str, float]:
        if self.power.get(vm_id) != "running":
            return {}
        self.cpu_time[vm_id] = self.cpu_time.get(vm_id, 0.0) + 1.0  # one CPU-second per call
        return {"cpu_time_s": self.cpu_time[vm_id], "ram_used_mb": self.defined[vm_id].ram_mb // 2, "disk_read_bytes": 4096.0, "disk_write_bytes": 0.0}

    # --- live migration ---

    live_migration = True
    MIGRATION_DOWNTIME_MS = 1.0

    def migrate_live(self, vm_id: str, target: MigrationTarget, target_spec: DomainSpec, options: LiveOptions) -> MigrationResult:
        """Moves the running domain to the fake in ``peers[target.libvirt_uri]``: there it
        runs with the live devices, their sources as ``target_spec`` says, and is defined
        as ``target_spec``; here it is gone. A failure leaves it running here."""
        self._call("migrate_live", vm_id)
        what = f"live-migrating cloudd-{vm_id} to {target.node}"
        if self.power.get(vm_id) != "running":
            raise ComputeError(f"{what}: the domain is not {'running' if vm_id in self.defined else 'defined'} here")
        peer = self.peers.get(target.libvirt_uri)
        if peer is None or peer is self:
            raise ComputeError(f"{what}: cannot reach {target.libvirt_uri}")
        if peer.power.get(vm_id) in ("running", "paused"):
            raise ComputeError(f"{what}: the domain already runs there")
        disks = {d.target: d.path for d in target_spec.disks}
        nics = {n.mac: n.tap for n in target_spec.interfaces}
        missing = sorted(set(disks) - set(self.live[vm_id])) + sorted(set(nics) - set(self.live_nics[vm_id]))
        if missing:
            raise ComputeError(f"{what}: the running domain has no {', '.join(missing)}")
        peer.defined[vm_id] = target_spec
        peer.power[vm_id] = "running"
        peer.live[vm_id] = {t: disks.get(t, path) for t, path in self.live[vm_id].items()}
        peer.live_nics[vm_id] = {mac: nics.get(mac, tap) for mac, tap in self.live_nics[vm_id].items()}
        peer.cpu_time[vm_id] = self.cpu_time.pop(vm_id, 0.0)  # the same guest goes on
        for table in (self.defined, self.power, self.live, self.live_nics):
            table.pop(vm_id, None)
        for fake in (self, peer):
            if fake.on_change is not None:
                fake.on_change(vm_id)
        return MigrationResult(self.MIGRATION_DOWNTIME_MS, 0.0, target_spec.ram_mb * 2**20)

    def migration_progress(self, vm_id: str) -> MigrationProgress | None:
        return None  # migrate_live completes at once

    def abort_migration(self, vm_id: str) -> None:
        self.calls.append(("abort_migration", vm_id))

    def cpu_models(self) -> list[str]:
        return list(self.host_cpu_models)

    # --- breaking things behind cloudd's back ---

    def kill(self, vm_id: str) -> None:
        self.power[vm_id] = "shut_off"
        if self.on_change is not None:
            self.on_change(vm_id)

    def forget(self, vm_id: str) -> None:
        self.defined.pop(vm_id, None)
        self.power.pop(vm_id, None)
