"""Everything one running node holds: its config, secret, replica, proposer and Env."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cloudd.config import NodeConfig
from cloudd.env import RaftEnv
from cloudd.ops.image_store import ImageStore
from cloudd.raft.node import ReplicatedState
from cloudd.raft.proposer import Proposer


@dataclass
class NodeRuntime:
    config: NodeConfig
    secret: str = field(repr=False)
    raft: ReplicatedState
    proposer: Proposer
    env: RaftEnv

    @classmethod
    def build(cls, config: NodeConfig, secret: str, raft: ReplicatedState) -> "NodeRuntime":
        proposer = Proposer(raft)
        return cls(config, secret, raft, proposer, RaftEnv(config.name, raft, proposer))

    @cached_property
    def images(self) -> ImageStore:
        """This node's image files (the one store of the node: uploads, copies, pruning)."""
        return ImageStore.for_node(self.config.data_dir, self.config.name, self.secret, self.api_addr_of)

    def api_addr_of(self, name: str) -> str | None:
        with self.raft.lock:
            node = self.raft.state.nodes.get(name)
            return None if node is None else str(node["api_addr"])

    def node_by_raft_addr(self, addr: str | None) -> dict[str, Any] | None:
        if addr is None:
            return None
        with self.raft.lock:
            for node in self.raft.state.nodes.values():
                if node["raft_addr"] == addr:
                    return dict(node)
        return None

    def leader(self) -> dict[str, Any] | None:
        """The node this replica believes leads, as recorded in the state."""
        return self.node_by_raft_addr(self.raft.leader_addr)
