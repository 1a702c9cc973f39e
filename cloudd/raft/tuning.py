"""pysyncobj settings for a control plane.

Measured on loopback (see shared/MACHINE-NOTES.md): batching off raises sync writes from
~10/s to ~2,000/s; these timeouts bring leader failover to a median of ~0.4 s; the default
30 s ``leaderFallbackTimeout`` would let an isolated leader believe it leads that long.
Commands fail fast when there is no leader instead of queueing (a queued command may
commit minutes later, after its caller has given up).

Log compaction: pysyncobj's default forks and pickles the whole state every 5,000 entries
on every node at once. We serialize the state ourselves with orjson (no fork, no pickle),
compact only every ``compaction_entries`` entries or ``compaction_seconds``, and spread the
thresholds over the nodes (``stagger``) so they do not all compact at the same moment.
(pysyncobj's own ``logCompactionSplit`` waits for a per-node slot of the time period, up to
an hour with our period, while the log keeps growing: not used.)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Callable

from pysyncobj import SyncObjConf


def stagger_for(name: str) -> float:
    """0, 0.15, 0.30 or 0.45 by node name: how much later than the base this node compacts."""
    return 0.15 * (zlib.crc32(name.encode()) % 4)


@dataclass(frozen=True)
class RaftTuning:
    append_entries_period: float = 0.05
    raft_min_timeout: float = 0.25
    raft_max_timeout: float = 0.6
    connection_timeout: float = 0.6
    connection_retry_time: float = 0.3
    leader_fallback_timeout: float = 1.0
    compaction_entries: int = 100_000
    compaction_seconds: float = 3600.0


def make_conf(
    *,
    secret: str,
    bind_address: str | None,
    journal_file: str,
    snapshot_file: str,
    serializer: Callable[[str, Any], None],
    deserializer: Callable[[str], Any],
    stagger: float,
    tuning: RaftTuning = RaftTuning(),
    on_state_changed: Callable[[int, int], None] | None = None,
) -> SyncObjConf:
    """Build the SyncObjConf every cloudd node uses. ``secret`` is mandatory."""
    if not secret:
        raise ValueError("the Raft port is never opened without the cluster secret")
    return SyncObjConf(
        password=secret,
        bindAddress=bind_address,
        appendEntriesUseBatch=False,
        appendEntriesPeriod=tuning.append_entries_period,
        raftMinTimeout=tuning.raft_min_timeout,
        raftMaxTimeout=tuning.raft_max_timeout,
        connectionTimeout=tuning.connection_timeout,
        connectionRetryTime=tuning.connection_retry_time,
        leaderFallbackTimeout=tuning.leader_fallback_timeout,
        commandsWaitLeader=False,
        dynamicMembershipChange=True,
        journalFile=journal_file,
        fullDumpFile=snapshot_file,
        serializer=serializer,
        deserializer=deserializer,
        useFork=False,
        logCompactionMinEntries=int(tuning.compaction_entries * (1.0 + stagger)),
        logCompactionMinTime=tuning.compaction_seconds * (1.0 + stagger),
        logCompactionSplit=False,
        onStateChanged=on_state_changed,
    )
