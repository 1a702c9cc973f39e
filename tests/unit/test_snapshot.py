"""Snapshot files round-trip the state and pysyncobj's bookkeeping."""

from __future__ import annotations

from pathlib import Path

from pysyncobj.node import TCPNode

from cloudd.model.state import State
from cloudd.raft import snapshot
from tests.factories import initialized


def test_roundtrip(tmp_path: Path) -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    path = tmp_path / "snap"
    last = (b"\x01\x80binary", 7, 2)
    prev = (b"", 6, 2)
    snapshot.write(str(path), replica.state, (last, prev, {TCPNode("127.0.0.1:1"), TCPNode("127.0.0.1:2")}))
    loaded: list[State] = []
    got_last, got_prev, cluster = snapshot.read(str(path), loaded.append)
    assert (got_last, got_prev) == (last, prev)
    assert sorted(n.id for n in cluster) == ["127.0.0.1:1", "127.0.0.1:2"]
    assert loaded[0].digest() == replica.state.digest()
    assert b"pickle" not in path.read_bytes() and path.read_bytes().startswith(b"{")
