"""The simulated ``Env`` of one node: its host's clock, what Raft lets it see and commit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudd.env import storage_view_of, moving_of, volume_links_of
from cloudd.model.state import State
from cloudd.network_agent import network_view_of

if TYPE_CHECKING:
    from tests.sim.simulator import Simulator

WALL_BASE = 1_700_000_000.0  # wall-clock time at the start of every run


class SimEnv:
    """``cloudd.env.Env`` for node ``node_name`` inside a ``Simulator``.

    Reads come from the shared replica while the node is on the majority side, else
    from the frozen copy it had when it left (see ``tests.sim.raft``). ``propose``
    commits at once or raises ``CloudError("unavailable")`` like the production
    proposer does when no leader commits in time (the simulator does not make it wait).
    """

    def __init__(self, sim: Simulator, node_name: str) -> None:
        self.sim = sim
        self.node_name = node_name
        self.component = "cloudd"  # which loop is running (for the log)

    def monotonic(self) -> float:
        return self.sim.hosts[self.node_name].monotonic(self.sim.now)

    def wall(self) -> float:
        return WALL_BASE + self.sim.now

    def is_leader(self) -> bool:
        return self.sim.raft.is_leader(self.node_name)

    def term(self) -> int:
        return self.sim.raft.known_term[self.node_name]

    def state(self) -> State:
        return self.sim.raft.state_of(self.node_name)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {name: dict(node) for name, node in self.state().nodes.items()}

    def vms(self) -> dict[str, dict[str, Any]]:
        return {vm_id: dict(vm) for vm_id, vm in self.state().vms.items()}

    def vms_on(self, node: str) -> dict[str, dict[str, Any]]:
        return {vm_id: dict(vm) for vm_id, vm in self.state().vms.items() if vm["node"] == node}

    def moving(self, node: str) -> dict[str, dict[str, Any]]:
        return moving_of(self.state(), node)

    def storage_view(self, node: str) -> Any:
        return storage_view_of(self.state(), node)

    def volume_links(self, node: str) -> dict[str, dict[str, Any]]:
        return volume_links_of(self.state(), node)

    def network_view(self, node: str) -> Any:
        return network_view_of(self.state(), node)

    def images(self) -> dict[str, dict[str, Any]]:
        return {image_id: dict(image) for image_id, image in self.state().images.items()}

    async def propose(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.sim.propose(self, op, args)
