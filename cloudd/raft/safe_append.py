"""Keep pysyncobj 0.3.17 from truncating log entries a follower already applied.

The fault (root cause in docs/raft.md): with batching off the leader sends one
append_entries per command and advances ``nextIndex`` at send time; an acknowledgement of
an *older* message then moves ``nextIndex`` back, the leader re-sends entries the follower
already holds, and the follower deletes everything after ``prevLogIdx`` before appending
them again. Raft allows a follower to drop entries only when one *conflicts* (same index,
different term). The copies were identical in every run we measured, but while the log is
shortened the follower may persist a commit index below what it applied and could vote
from that shorter log: a real risk of divergence after a crash.

Two guards, both in our own subclass, none in the library:
- follower: an append_entries whose entries are all already present (same index and term)
  is rewritten to start at our last entry, so nothing is deleted; a genuine conflict still
  takes the library's path and is truncated as Raft says;
- leader: a successful acknowledgement never moves ``nextIndex`` backwards.

This relies on pysyncobj private names (``_SyncObj__…``); pyproject pins the version and
``tests/unit/test_safe_append.py`` checks the names still exist.
"""

from __future__ import annotations

from typing import Any

from pysyncobj import SyncObj
from pysyncobj.syncobj import _RAFT_STATE


class SafeAppendEntriesMixin:
    """Mix in before ``SyncObj``; overrides its (name-mangled) message handler."""

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if (
            kind == "append_entries"
            and "prevLogIdx" in message
            and message.get("transmission") is None
            and message.get("term", -1) >= self._SyncObj__raftCurrentTerm  # type: ignore[attr-defined]
        ):
            self._skip_entries_already_present(message)
        if (
            kind == "next_node_idx"
            and message.get("success")
            and not message.get("reset")
            and self._SyncObj__raftState == _RAFT_STATE.LEADER  # type: ignore[attr-defined]
        ):
            next_index = self._SyncObj__raftNextIndex  # type: ignore[attr-defined]
            before = next_index.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)  # type: ignore[attr-defined]
            if before is not None and next_index.get(node, 0) < before:
                next_index[node] = before
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)  # type: ignore[attr-defined]

    def _skip_entries_already_present(self, message: dict[str, Any]) -> None:
        """Rewrite ``message`` in place when every entry it carries is already in our log."""
        log = self._SyncObj__raftLog  # type: ignore[attr-defined]
        prev = message["prevLogIdx"]
        if prev is None or len(log) == 0:
            return
        first, last = log[0][1], log[-1][1]
        if prev < first or prev >= last:
            return  # nothing after prev to lose, or below our snapshot: library path
        if log[prev - first][2] != message["prevLogTerm"]:
            return  # mismatch: the library answers with a reset
        entries = message.get("entries") or []
        for entry in entries:
            index, term = entry[1], entry[2]
            if index > last:
                break
            if log[index - first][2] != term:
                return  # a real conflict: let the library truncate
        covered = entries[-1][1] if entries else prev
        # Entries we hold beyond the message must come from the sender's own term: a
        # leader never rewrites its entries, so those are in its log too (log matching).
        if covered < last and log[covered + 1 - first][2] != message["term"]:
            return
        message["prevLogIdx"] = last
        message["prevLogTerm"] = log[last - first][2]
        message["entries"] = [e for e in entries if e[1] > last]
