"""Raft as the simulator sees it: who reaches a majority, who leads, who reads what.

Not a Raft implementation: one replicated log (a ``Replica``) that every node shares,
plus the rules that decide, at each moment, what a node may do with it:

- a voter counts towards a majority while its cloudd runs (Raft lives inside cloudd);
  nodes reach each other within the same partition group;
- the *majority side* is the partition group holding more than half of the voters (if
  any); its nodes (voters and replicas) see the shared replica as it is now, and a
  proposal from one of them commits at once, provided the side has a leader;
- a majority without a leader elects one after ``election_delay``: the lowest-named
  voter on the side; the term goes up by one with every election. A leader is not
  pre-empted by a lower-named voter coming back;
- a leader cut off from the majority (or whose side lost it) keeps believing it leads
  for ``leader_fallback`` seconds (pysyncobj's leaderFallbackTimeout) but commits
  nothing;
- a node off the majority side reads a frozen copy of the state taken when it left it
  (its replica stops applying); a node that comes back catches up at once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudd.model.state import State
from tests.factories import Replica


@dataclass
class RaftModel:
    replica: Replica
    voters: list[str]
    nodes: list[str]
    election_delay: float
    leader_fallback: float
    on_event: Callable[[str], None] = lambda message: None
    running: set[str] = field(default_factory=set)  # nodes whose cloudd (and Raft) runs
    group: dict[str, int] = field(default_factory=dict)  # partition group per node
    leader: str | None = None
    term: int = 0
    leaderless_since: float | None = None
    members: set[str] = field(default_factory=set)  # nodes on the majority side now
    known_term: dict[str, int] = field(default_factory=dict)
    believes_until: dict[str, float] = field(default_factory=dict)  # cut-off leader -> until
    views: dict[str, State] = field(default_factory=dict)  # frozen replicas of cut-off nodes
    view_since: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.nodes:
            self.group.setdefault(name, 0)
            self.known_term.setdefault(name, 0)

    # --- the rules ---------------------------------------------------------------

    def majority_group(self) -> int | None:
        counts: dict[int, int] = {}
        for voter in self.voters:
            if voter in self.running:
                counts[self.group[voter]] = counts.get(self.group[voter], 0) + 1
        for group, count in sorted(counts.items()):
            if count * 2 > len(self.voters):
                return group
        return None

    def update(self, now: float) -> None:
        """Bring membership, leadership and views up to date with faults at ``now``."""
        majority = self.majority_group()
        members = {n for n in self.nodes if n in self.running and majority is not None and self.group[n] == majority}
        for name in sorted(self.members - members):
            self.views[name] = copy.deepcopy(self.replica.state)
            self.view_since[name] = now
            if name in self.running:
                self.on_event(f"{name} is cut off from the majority: it reads the state as of {now:.1f}")
        for name in sorted(members - self.members):
            self.views.pop(name, None)
            self.view_since.pop(name, None)
            self.on_event(f"{name} reaches the majority")
        self.members = members
        if self.leader is not None and self.leader not in members:
            if self.leader in self.running:
                self.believes_until[self.leader] = now + self.leader_fallback
            self.on_event(f"leader {self.leader} lost (term {self.term})")
            self.leader = None
        if majority is None:
            self.leaderless_since = None
        elif self.leader is None:
            if self.leaderless_since is None:
                self.leaderless_since = now
            if now - self.leaderless_since >= self.election_delay - 1e-9:
                self.leader = min(v for v in self.voters if v in members)
                self.term += 1
                self.leaderless_since = None
                self.believes_until.pop(self.leader, None)
                self.on_event(f"{self.leader} is elected leader (term {self.term})")
        for name in sorted(members):
            self.known_term[name] = self.term
        for name in sorted(self.believes_until):
            if now >= self.believes_until[name] or name not in self.running or name in members:
                del self.believes_until[name]

    # --- what one node sees ------------------------------------------------------

    def is_leader(self, name: str) -> bool:
        return name == self.leader or name in self.believes_until

    def can_commit(self, name: str) -> str | None:
        """None when a proposal from ``name`` commits now, else why not."""
        if name not in self.members:
            return "no quorum"
        if self.leader is None:
            return "no leader"
        return None

    def state_of(self, name: str) -> State:
        return self.views.get(name, self.replica.state)

    def set_running(self, name: str, running: bool) -> None:
        if running:
            self.running.add(name)
        else:
            self.running.discard(name)
