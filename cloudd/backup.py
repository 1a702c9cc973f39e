"""Backup files of the cluster state, and the commands that replay one into a new cluster.

A backup is one JSON document: the resources (``State.domain_dict``) and the audit log,
taken under the replica's lock, so at one applied index (consistent). It holds password
and token *hashes*, never the cluster secret: a restored cluster gets a new secret and
its nodes join it again; users keep their passwords and API tokens.
"""

from __future__ import annotations

from typing import Any, Iterator

import orjson

from cloudd.commands.restore import KINDS, RECORDS
from cloudd.model.state import State

FORMAT = "cloudd-backup/1"
BATCH_BYTES = 512 << 10  # well under the 1 MiB command limit


def make_backup(state: State, taken_at: float) -> dict[str, Any]:
    """The backup document of ``state`` (call under the replica's lock)."""
    data = orjson.loads(orjson.dumps({**state.domain_dict(), "events": state.events}))
    return {"format": FORMAT, "taken_at": taken_at, "applied_index": state.applied_index, "state": data}


def check_backup(doc: Any) -> dict[str, Any]:
    """The document's state, or ValueError saying what is wrong with the file."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a cloudd backup (format {FORMAT} expected)")
    state = doc.get("state")
    if not isinstance(state, dict) or not isinstance(state.get("cluster"), dict) or not state["cluster"].get("id"):
        raise ValueError("the backup holds no initialized cluster")
    if state["cluster"].get("restoring"):
        raise ValueError("the backup was taken during a restore")
    for key in ("applied_index", "taken_at"):
        if not isinstance(doc.get(key), (int, float)) or isinstance(doc.get(key), bool):
            raise ValueError(f"the backup has no {key}")
    return state


def _batches(items: dict[str, Any]) -> Iterator[dict[str, Any]]:
    batch: dict[str, Any] = {}
    size = 0
    for key, record in items.items():
        record_size = len(orjson.dumps(record)) + len(key) + 8
        if batch and size + record_size > BATCH_BYTES:
            yield batch
            batch, size = {}, 0
        batch[key] = record
        size += record_size
    if batch:
        yield batch


def restore_commands(doc: dict[str, Any], node: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The commands that rebuild the backup's state with ``node`` as the only voter."""
    state = check_backup(doc)
    cluster = state["cluster"]
    yield "cluster.restore_begin", {
        "cluster": {"id": cluster["id"], "name": cluster.get("name", "cloudd"), "max_voters": cluster.get("max_voters", 3), "created_at": cluster.get("created_at", 0)},
        "node": node,
        "backup": {"applied_index": int(doc["applied_index"]), "taken_at": doc["taken_at"]},
    }
    for kind in KINDS:
        if kind == "default_image":
            if cluster.get("default_image"):
                yield "cluster.restore_put", {"kind": kind, "items": cluster["default_image"]}
            continue
        if kind == "events":
            events = state.get("events") or []
            for start in range(0, len(events), 2000):
                yield "cluster.restore_put", {"kind": kind, "items": events[start : start + 2000]}
            continue
        assert kind in RECORDS
        for batch in _batches(state.get(kind) or {}):
            yield "cluster.restore_put", {"kind": kind, "items": batch}
    yield "cluster.restore_finish", {}
