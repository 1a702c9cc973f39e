"""In-memory volumes and exports for the simulator and unit tests (same contracts)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudd.ops.storage import IQN_RE, ExportSpec, ExportState, ExportStats, PoolCapacity, StorageError, VolumeInfo, check_volume_id


class FakeVolumes:
    kind = "fake"
    cow_from_images = True

    def __init__(self, total_bytes: int = 1 << 40) -> None:
        self.total_bytes = total_bytes
        self.sizes: dict[str, int] = {}
        self.sources: dict[str, str | None] = {}
        self.calls: list[tuple[str, str]] = []

    def create(self, volume_id: str, size_bytes: int, source: str | None = None) -> VolumeInfo:
        check_volume_id(volume_id)
        if volume_id not in self.sizes:
            if size_bytes <= 0:
                raise StorageError("a volume needs a size above 0")
            if sum(self.sizes.values()) + size_bytes > self.total_bytes:
                raise StorageError("the pool is full")
            self.sizes[volume_id] = size_bytes
            self.sources[volume_id] = source
            self.calls.append(("create", volume_id))
        return self._info(volume_id)

    def delete(self, volume_id: str) -> None:
        if self.sizes.pop(check_volume_id(volume_id), None) is not None:
            self.calls.append(("delete", volume_id))

    def resize(self, volume_id: str, size_bytes: int) -> VolumeInfo:
        if volume_id not in self.sizes:
            raise StorageError(f"volume {volume_id} does not exist")
        self.sizes[volume_id] = max(self.sizes[volume_id], size_bytes)
        self.calls.append(("resize", volume_id))
        return self._info(volume_id)

    def info(self, volume_id: str) -> VolumeInfo | None:
        return self._info(volume_id) if volume_id in self.sizes else None

    def volumes(self) -> list[str]:
        return sorted(self.sizes)

    def capacity(self) -> PoolCapacity:
        return PoolCapacity(self.total_bytes, self.total_bytes - sum(self.sizes.values()))

    def _info(self, volume_id: str) -> VolumeInfo:
        return VolumeInfo(volume_id, f"/fake/{volume_id}", self.sizes[volume_id], 0)


@dataclass
class FakeExports:
    portal: str = "127.0.0.1:3260"
    kind: str = "fake"
    targets: dict[str, ExportSpec] = field(default_factory=dict)
    sessions: dict[str, set[str]] = field(default_factory=dict)  # target -> logged-in initiators
    log: list[tuple[str, ...]] = field(default_factory=list)

    def ensure(self, spec: ExportSpec) -> None:
        if not IQN_RE.fullmatch(spec.target) or not all(IQN_RE.fullmatch(i) for i in spec.initiators):
            raise StorageError("invalid target or initiator name")
        if self.targets.get(spec.target) != spec:
            self.log.append(("ensure", spec.target, *spec.initiators))
        self.targets[spec.target] = spec
        self._fence(spec.target)

    def set_initiators(self, target: str, initiators: tuple[str, ...]) -> None:
        spec = self.targets.get(target)
        if spec is None:
            raise StorageError(f"no export {target}")
        self.targets[target] = ExportSpec(target, spec.path, initiators, spec.chap_user, spec.chap_password)
        self.log.append(("set_initiators", target, *initiators))
        self._fence(target)

    def login(self, target: str, initiator: str, chap_user: str, chap_password: str) -> bool:
        """What a login would get: the simulator's stand-in for qemu's initiator."""
        spec = self.targets.get(target)
        if spec is None or initiator not in spec.initiators or (chap_user, chap_password) != (spec.chap_user, spec.chap_password):
            return False
        self.sessions.setdefault(target, set()).add(initiator)
        return True

    def _fence(self, target: str) -> None:
        allowed = set(self.targets[target].initiators)
        self.sessions[target] = {i for i in self.sessions.get(target, set()) if i in allowed}

    def remove(self, target: str) -> None:
        if self.targets.pop(target, None) is not None:
            self.log.append(("remove", target))
        self.sessions.pop(target, None)

    def exports(self) -> dict[str, ExportState]:
        return {
            t: ExportState(t, s.path, s.initiators, (s.chap_user,), len(self.sessions.get(t, ())))
            for t, s in self.targets.items()
        }

    def stats(self, target: str) -> ExportStats:
        if target not in self.targets:
            raise StorageError(f"no export {target}")
        return ExportStats()
