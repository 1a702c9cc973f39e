"""The follower/leader guards against pysyncobj's needless truncation."""

from __future__ import annotations

from typing import Any

from pysyncobj import SyncObj

from cloudd.raft.safe_append import SafeAppendEntriesMixin


class Follower(SafeAppendEntriesMixin):
    def __init__(self, terms: list[int], first: int = 1) -> None:
        self._SyncObj__raftLog = [(b"x", first + i, t) for i, t in enumerate(terms)]


def msg(prev: int, prev_term: int, entries: list[tuple[int, int]], term: int) -> dict[str, Any]:
    return {"type": "append_entries", "term": term, "prevLogIdx": prev, "prevLogTerm": prev_term, "entries": [(b"x", i, t) for i, t in entries]}


def test_the_private_names_we_rely_on_exist() -> None:
    assert hasattr(SyncObj, "_SyncObj__onMessageReceived")
    import pysyncobj.syncobj as so

    assert so._RAFT_STATE.LEADER is not None
    from pathlib import Path

    source = Path(so.__file__).read_text()
    for name in ("__raftLog", "__raftCurrentTerm", "__raftState", "__raftNextIndex", "truncating already-applied"):
        assert name in source


def test_a_resend_of_entries_we_hold_deletes_nothing() -> None:
    follower = Follower([1, 2, 2, 2, 2])  # indexes 1..5
    m = msg(2, 2, [(3, 2), (4, 2)], term=2)
    follower._skip_entries_already_present(m)
    assert (m["prevLogIdx"], m["prevLogTerm"], m["entries"]) == (5, 2, [])


def test_overlap_plus_new_entries_keeps_only_the_new_ones() -> None:
    follower = Follower([1, 2, 2, 2])
    m = msg(2, 2, [(3, 2), (4, 2), (5, 2), (6, 2)], term=2)
    follower._skip_entries_already_present(m)
    assert m["prevLogIdx"] == 4 and [e[1] for e in m["entries"]] == [5, 6]


def test_a_conflicting_entry_is_left_to_the_library() -> None:
    follower = Follower([1, 1, 1, 1])
    m = msg(2, 1, [(3, 3)], term=3)
    follower._skip_entries_already_present(m)
    assert m["prevLogIdx"] == 2 and len(m["entries"]) == 1


def test_extra_entries_from_an_older_term_are_left_to_the_library() -> None:
    follower = Follower([1, 1, 1, 1])  # index 3, 4 written by the term-1 leader
    m = msg(2, 1, [], term=3)
    follower._skip_entries_already_present(m)
    assert m["prevLogIdx"] == 2


def test_prev_at_or_past_our_end_is_untouched() -> None:
    follower = Follower([1, 1])
    m = msg(2, 1, [(3, 1)], term=1)
    follower._skip_entries_already_present(m)
    assert m["prevLogIdx"] == 2 and len(m["entries"]) == 1


def test_prev_term_mismatch_is_untouched() -> None:
    follower = Follower([1, 1, 2])
    m = msg(2, 2, [(3, 2)], term=2)
    follower._skip_entries_already_present(m)
    assert m["prevLogIdx"] == 2 and len(m["entries"]) == 1
