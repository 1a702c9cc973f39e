"""The replicated state machine: a pysyncobj ``SyncObj`` with ONE replicated method.

``apply`` takes a JSON command (bytes) and returns an outcome dict; it never raises.
Reads of the state from other threads take ``lock`` (apply holds it while it mutates).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from pysyncobj import SyncObj, replicated

from cloudd.commands import apply_command
from cloudd.model.state import State
from cloudd.raft import snapshot
from cloudd.raft.fast_election import FastElectionMixin
from cloudd.raft.keepalive import LinkKeepalive
from cloudd.raft.safe_append import SafeAppendEntriesMixin
from cloudd.raft.tuning import RaftTuning, make_conf, stagger_for

log = logging.getLogger(__name__)

ApplyHook = Callable[[int, bytes, dict[str, Any]], None]


class ReplicatedState(FastElectionMixin, SafeAppendEntriesMixin, SyncObj):
    """One node's replica of the cluster state."""

    def __init__(
        self,
        *,
        node_name: str,
        self_addr: str | None,
        partners: list[str],
        secret: str,
        journal_file: str,
        snapshot_file: str,
        tuning: RaftTuning = RaftTuning(),
        on_state_changed: Callable[[int, int], None] | None = None,
    ) -> None:
        self.state = State()
        self.lock = threading.RLock()
        self.apply_hooks: list[ApplyHook] = []
        conf = make_conf(
            secret=secret,
            bind_address=self_addr,
            journal_file=journal_file,
            snapshot_file=snapshot_file,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            stagger=stagger_for(node_name),
            tuning=tuning,
            on_state_changed=on_state_changed,
        )
        self._tick_tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        super().__init__(self_addr, [p for p in partners if p != self_addr], conf)
        self.addOnTickCallback(self._run_tick_tasks)
        self.addOnTickCallback(LinkKeepalive(self, period_s=tuning.connection_timeout / 4))

    def call_in_tick(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in pysyncobj's tick thread: for its methods that touch the transport."""
        self._tick_tasks.put(fn)

    def _run_tick_tasks(self) -> None:
        while True:
            try:
                fn = self._tick_tasks.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("tick task failed")

    @replicated
    def apply(self, command: bytes) -> dict[str, Any]:
        index = self.raftLastApplied + 1
        with self.lock:
            outcome = apply_command(self.state, command, index)
        for hook in self.apply_hooks:
            try:
                hook(index, command, outcome)
            except Exception:  # a hook must never stall the log
                log.exception("apply hook failed")
        return outcome

    def _write_snapshot(self, path: str, raft_meta: Any) -> None:
        with self.lock:
            snapshot.write(path, self.state, raft_meta)

    def _read_snapshot(self, path: str) -> Any:
        def load(state: State) -> None:
            with self.lock:
                self.state = state

        return snapshot.read(path, load)

    # --- status (safe to call from any thread) ---

    @property
    def is_leader(self) -> bool:
        return self._isLeader()

    @property
    def leader_addr(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else leader.id

    def leader_reachable(self) -> bool:
        """A leader is known and we hold a link to it (pysyncobj keeps a dead leader as
        'the leader' while it cannot reach anyone to hold an election)."""
        leader = self._getLeader()
        if leader is None:
            return False
        return leader == self.selfNode or self.isNodeConnected(leader)

    @property
    def is_voter(self) -> bool:
        return self.selfNode is not None

    def voter_addrs(self) -> list[str]:
        """Raft addresses of all voters as this node knows them, itself included."""
        addrs = {node.id for node in self.otherNodes}
        if self.selfNode is not None:
            addrs.add(self.selfNode.id)
        return sorted(addrs)

    def raft_status(self) -> dict[str, Any]:
        others = self.otherNodes
        return {
            "self": None if self.selfNode is None else self.selfNode.id,
            "role": "leader" if self.is_leader else ("follower" if self.is_voter else "replica"),
            "leader": self.leader_addr,
            "term": self.raftCurrentTerm,
            "commit_index": self.raftCommitIndex,
            "last_applied": self.raftLastApplied,
            "has_quorum": self.hasQuorum,
            "voters": self.voter_addrs(),
            "connected": sorted(n.id for n in others if self.isNodeConnected(n)),
            "replicas_connected": len(self.readonlyNodes),
            "log_size": self._getRaftLogSize(),
        }
