"""Snapshot files: the state plus pysyncobj's bookkeeping, as one orjson document.

pysyncobj calls ``write`` with a temporary path and ``(last_entry, prev_entry, cluster)``
and renames the file itself; ``read`` returns that triple after loading the state.
Entries are ``(command bytes, index, term)``; the command bytes are base64-encoded.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Callable

import orjson
from pysyncobj.node import TCPNode

from cloudd.model.state import State

FORMAT = 1

Entry = tuple[bytes, int, int]


def _entry_out(entry: Entry) -> list[Any]:
    return [base64.b64encode(entry[0]).decode(), entry[1], entry[2]]


def _entry_in(data: list[Any]) -> Entry:
    return (base64.b64decode(data[0]), int(data[1]), int(data[2]))


def write(path: str, state: State, raft_meta: tuple[Entry, Entry, Any]) -> None:
    last, prev, cluster = raft_meta
    doc = {
        "format": FORMAT,
        "last": _entry_out(last),
        "prev": _entry_out(prev),
        "cluster": sorted(node.id for node in cluster if node is not None),
        "state": state.to_dict(),
    }
    with open(path, "wb") as f:
        f.write(orjson.dumps(doc))
        f.flush()
        os.fsync(f.fileno())


def read(path: str, load_state: Callable[[State], None]) -> tuple[Entry, Entry, list[TCPNode]]:
    with open(path, "rb") as f:
        doc = orjson.loads(f.read())
    if doc.get("format") != FORMAT:
        raise ValueError(f"unsupported snapshot format {doc.get('format')!r} in {path}")
    load_state(State.from_dict(doc["state"]))
    return _entry_in(doc["last"]), _entry_in(doc["prev"]), [TCPNode(n) for n in doc["cluster"]]
