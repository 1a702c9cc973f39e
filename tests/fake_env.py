"""A deterministic Env: virtual clock, leadership by flag, commands applied in-process."""

from __future__ import annotations

from typing import Any

from tests.factories import Replica, command


class FakeEnv:
    def __init__(self, replica: Replica, node_name: str = "n1") -> None:
        self.replica = replica
        self.node_name = node_name
        self.clock = 0.0
        self.leader = True
        self.current_term = 1
        self.proposed: list[tuple[str, dict[str, Any]]] = []

    def monotonic(self) -> float:
        return self.clock

    def wall(self) -> float:
        return 1_000_000.0 + self.clock

    def is_leader(self) -> bool:
        return self.leader

    def term(self) -> int:
        return self.current_term

    def state(self):  # type: ignore[no-untyped-def]
        return self.replica.state

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n: dict(v) for n, v in self.replica.state.nodes.items()}

    def vms(self) -> dict[str, dict[str, Any]]:
        return {n: dict(v) for n, v in self.replica.state.vms.items()}

    def vms_on(self, node: str) -> dict[str, dict[str, Any]]:
        return {n: dict(v) for n, v in self.replica.state.vms.items() if v["node"] == node}

    def moving(self, node: str) -> dict[str, dict[str, Any]]:
        from cloudd.env import moving_of

        return moving_of(self.replica.state, node)

    def volume_links(self, node: str) -> dict[str, dict[str, Any]]:
        from cloudd.env import volume_links_of

        return volume_links_of(self.replica.state, node)

    def storage_view(self, node: str) -> Any:
        from cloudd.env import storage_view_of

        return storage_view_of(self.replica.state, node)

    def network_view(self, node: str) -> Any:
        from cloudd.network_agent import network_view_of

        return network_view_of(self.replica.state, node)

    def images(self) -> dict[str, dict[str, Any]]:
        return {n: dict(v) for n, v in self.replica.state.images.items()}

    async def propose(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.proposed.append((op, args))
        return self.replica.apply(command(op, args, ts=self.wall(), actor={"node": self.node_name}))
