"""The seam between decisions and the world.

The agent and the manager are written as ``step(env)``: one iteration against an ``Env``
that gives them time, leadership, the state and a way to propose commands. The
production Env (``RaftEnv``) wraps Raft and the real clocks; tests and the simulator pass
their own with a virtual clock.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from cloudd.model.state import State
from cloudd.raft.node import ReplicatedState
from cloudd.raft.proposer import Proposer

if TYPE_CHECKING:
    from cloudd.network_agent import NetworkView
    from cloudd.storage_agent import StorageView

log = logging.getLogger(__name__)


class Env(Protocol):
    node_name: str

    def monotonic(self) -> float:
        """This node's monotonic clock (never jumps; not comparable across nodes)."""

    def wall(self) -> float:
        """Wall-clock time for command timestamps and display."""

    def is_leader(self) -> bool:
        """Whether this node believes it leads (two nodes may, briefly: act via commands)."""

    def term(self) -> int:
        """The Raft term this node is in (changes with every election)."""

    def state(self) -> State:
        """The local replica. Read it only; it changes when commands apply."""

    def nodes(self) -> dict[str, dict[str, Any]]:
        """A consistent copy of the node records, safe to iterate while commands apply."""

    def vms(self) -> dict[str, dict[str, Any]]:
        """A consistent copy of the VM records (one level deep)."""

    def vms_on(self, node: str) -> dict[str, dict[str, Any]]:
        """Like ``vms``, only the VMs assigned to ``node`` (without copying the others)."""

    def moving(self, node: str) -> dict[str, dict[str, Any]]:
        """The VMs migrating from or to ``node``, and those that left leftovers there (copies)."""

    def storage_view(self, node: str) -> "StorageView":
        """The storage pools on ``node``, their volumes, who may reach each, and images."""

    def volume_links(self, node: str) -> dict[str, dict[str, Any]]:
        """The volumes attached to VMs on ``node``: where each is served (the storage
        node's iSCSI portal) and to whom it is exported now."""

    def network_view(self, node: str) -> "NetworkView":
        """The networks and ports of the VMs on ``node``, and the other nodes hosting them."""

    def images(self) -> dict[str, dict[str, Any]]:
        """A copy of the image records."""

    async def propose(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Commit a command; returns the outcome (``result`` or ``error``) or raises CloudError."""


class RaftEnv:
    """The production Env of one node."""

    def __init__(self, node_name: str, raft: ReplicatedState, proposer: Proposer) -> None:
        self.node_name = node_name
        self.raft = raft
        self.proposer = proposer

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def is_leader(self) -> bool:
        return self.raft.is_leader

    def term(self) -> int:
        return self.raft.raftCurrentTerm

    def state(self) -> State:
        return self.raft.state

    def nodes(self) -> dict[str, dict[str, Any]]:
        with self.raft.lock:
            return {name: dict(node) for name, node in self.raft.state.nodes.items()}

    def vms(self) -> dict[str, dict[str, Any]]:
        with self.raft.lock:
            return {vm_id: dict(vm) for vm_id, vm in self.raft.state.vms.items()}

    def vms_on(self, node: str) -> dict[str, dict[str, Any]]:
        with self.raft.lock:
            return {vm_id: dict(vm) for vm_id, vm in self.raft.state.vms.items() if vm["node"] == node}

    def moving(self, node: str) -> dict[str, dict[str, Any]]:
        with self.raft.lock:
            return moving_of(self.raft.state, node)

    def storage_view(self, node: str) -> "StorageView":
        with self.raft.lock:
            return storage_view_of(self.raft.state, node)

    def volume_links(self, node: str) -> dict[str, dict[str, Any]]:
        with self.raft.lock:
            return volume_links_of(self.raft.state, node)

    def network_view(self, node: str) -> "NetworkView":
        from cloudd.network_agent import network_view_of

        with self.raft.lock:
            return network_view_of(self.raft.state, node)

    def images(self) -> dict[str, dict[str, Any]]:
        with self.raft.lock:
            return {image_id: dict(image) for image_id, image in self.raft.state.images.items()}

    async def propose(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await self.proposer.submit(op, args, actor={"node": self.node_name}, deadline_s=4.0)


async def try_propose(env: Env, op: str, args: dict[str, Any], what: str) -> dict[str, Any] | None:
    """Propose for a background loop: log (not raise) what did not commit or was refused.

    Returns the outcome when the command committed without error, else None.
    """
    from cloudd.errors import CloudError

    try:
        outcome = await env.propose(op, args)
    except CloudError as exc:
        log.warning("%s: not committed: %s", what, exc.message)
        return None
    if "error" in outcome:
        log.info("%s: refused: %s", what, outcome["error"]["message"])
        return None
    return outcome


def storage_view_of(state: State, node: str) -> "StorageView":
    """A copy of what a storage agent needs (call under the replica's lock)."""
    from cloudd.commands.volumes import export_initiators
    from cloudd.storage_agent import StorageView

    # a drbd pool is also the peer's: it keeps the other side of every volume
    pools = {
        name: orjson_copy(p) for name, p in state.storage_pools.items()
        if p["node"] == node or (p["backend"] == "drbd" and p["config"].get("peer") == node)
    }
    volumes = {vid: orjson_copy(v) for vid, v in state.volumes.items() if v["pool"] in pools}
    initiators = {vid: export_initiators(state, v) for vid, v in volumes.items()}
    wanted = {v["image"] for v in volumes.values() if v.get("image")}
    images = {iid: dict(state.images[iid]) for iid in wanted if iid in state.images}
    addresses = {name: replication_address(state.nodes[name]) for name in {n for v in volumes.values() for n in (v.get("replica") or {}).get("nodes", [])} if name in state.nodes}
    return StorageView(pools, volumes, initiators, images, addresses)


def replication_address(node: dict[str, Any]) -> tuple[str, str]:
    """(host name as ``uname -n`` prints it, IP address) a storage node replicates over:
    the address of its iSCSI portal."""
    portal = ((node.get("storage") or {}).get("portal") or node.get("api_addr") or "").rsplit(":", 1)[0].strip("[]")
    hostname = ((node.get("inventory") or {}).get("facts") or {}).get("hostname") or node["name"]
    return str(hostname), portal


def orjson_copy(value: Any) -> Any:
    import orjson

    return orjson.loads(orjson.dumps(value))


def moving_of(state: State, node: str) -> dict[str, dict[str, Any]]:
    """See ``Env.moving`` (call under the replica's lock)."""
    from cloudd.model.migration import involves

    return {
        vm_id: orjson_copy(vm) for vm_id, vm in state.vms.items()
        if ("migration" in vm or "leftovers" in vm) and (involves(vm, node) or node in (vm.get("leftovers") or {}))
    }


def volume_links_of(state: State, node: str) -> dict[str, dict[str, Any]]:
    """See ``Env.volume_links`` (call under the replica's lock): also of the VMs
    live-migrating to ``node``."""
    from cloudd.model.migration import hosts

    out: dict[str, dict[str, Any]] = {}
    for vm in state.vms.values():
        if vm["node"] != node and node not in hosts(vm):
            continue
        for ref in vm.get("volumes", ()):
            volume = state.volumes.get(ref["id"])
            if volume is None:
                continue
            storage = (state.nodes.get(volume["node"]) or {}).get("storage") or {}
            out[volume["id"]] = {"portal": storage.get("portal"), "exported_to": list(volume["observed"].get("exported_to", []))}
    return out
