"""Fast election on refusing a lagging candidate, and the voter link keepalive."""

from __future__ import annotations

from typing import Any

from cloudd.raft import keepalive
from cloudd.raft.fast_election import MAX_DELAY_S, FastElectionMixin


class Library:
    """Stands in for SyncObj's handler: records what reached it."""

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:
        self.received = message


class Voter(FastElectionMixin, Library):
    def __init__(self, last_term: int, last_index: int, term: int) -> None:
        self._SyncObj__selfNode = "me"
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__raftElectionDeadline = 10**9
        self._last = (last_term, last_index)

    def _SyncObj__getCurrentLogTerm(self) -> int:
        return self._last[0]

    def _SyncObj__getCurrentLogIndex(self) -> int:
        return self._last[1]


def vote(term: int, last_term: int, last_index: int) -> dict[str, Any]:
    return {"type": "request_vote", "term": term, "last_log_term": last_term, "last_log_index": last_index}


def test_refusing_a_lagging_candidate_starts_our_election_soon() -> None:
    from pysyncobj.monotonic import monotonic

    voter = Voter(last_term=3, last_index=50, term=3)
    voter._SyncObj__onMessageReceived("cand", vote(4, 3, 49))
    assert voter.received["type"] == "request_vote"
    assert voter._SyncObj__raftElectionDeadline <= monotonic() + MAX_DELAY_S


def test_an_up_to_date_candidate_or_an_old_term_changes_nothing() -> None:
    for message in (vote(4, 3, 50), vote(4, 3, 60), vote(3, 2, 1)):
        voter = Voter(last_term=3, last_index=50, term=3)
        voter._SyncObj__onMessageReceived("cand", message)
        assert voter._SyncObj__raftElectionDeadline == 10**9, message


def test_other_messages_pass_through_untouched() -> None:
    voter = Voter(3, 50, 3)
    voter._SyncObj__onMessageReceived("x", {"type": "append_entries", "term": 3})
    assert voter.received == {"type": "append_entries", "term": 3}
    assert voter._SyncObj__raftElectionDeadline == 10**9


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, node: str, message: dict[str, Any]) -> None:
        self.sent.append((node, message))


class FakeSyncObj:
    def __init__(self) -> None:
        self.selfNode = "me"
        self.otherNodes = {"a", "b", "c"}
        self._SyncObj__transport = FakeTransport()

    def isNodeConnected(self, node: str) -> bool:
        return node != "c"


def test_keepalive_pings_connected_voters_once_per_period(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    now = [100.0]
    monkeypatch.setattr(keepalive, "monotonic_time", lambda: now[0])
    so = FakeSyncObj()
    tick = keepalive.LinkKeepalive(so, period_s=0.15)
    tick()
    tick()
    assert sorted(n for n, _ in so._SyncObj__transport.sent) == ["a", "b"]
    now[0] += 0.2
    tick()
    assert len(so._SyncObj__transport.sent) == 4
    so.selfNode = None
    now[0] += 1
    tick()
    assert len(so._SyncObj__transport.sent) == 4
