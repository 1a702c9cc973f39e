"""The cluster state held by every replica.

Everything here is plain JSON-able data (dicts, lists, str, int, float, bool, None) so a
snapshot is one ``orjson`` document and two replicas can be compared by hash. Only the
command handlers in ``cloudd.commands`` change it, from inside the replicated ``apply``.

Desired state (what users and the leader asked for) and observed state (what agents
report) are kept in separate sub-dicts of each object.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any, Iterator

import orjson

EVENT_RETENTION = 10_000
REQUEST_RETENTION = 50_000
REQUEST_MAX_AGE_S = 6 * 3600.0

DOMAIN_KEYS = ("cluster", "nodes", "users", "tokens", "join_tokens", "flavors", "images", "vms", "pools", "tasks", "storage_pools", "volumes", "networks", "ports")


class State:
    """All replicated data. Attributes are public; handlers mutate them directly."""

    def __init__(self) -> None:
        self.cluster: dict[str, Any] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.join_tokens: dict[str, dict[str, Any]] = {}
        self.flavors: dict[str, dict[str, Any]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.vms: dict[str, dict[str, Any]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.storage_pools: dict[str, dict[str, Any]] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.networks: dict[str, dict[str, Any]] = {}
        self.ports: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.event_seq = 0
        self.applied_index = 0
        self.applied_chain = ""
        # derived, not replicated: (owner, name, id) of every VM in order, for listing
        # one owner's VMs a page at a time without sorting them all on every request
        self.vm_keys: list[tuple[str, str, str]] = []

    def add_vm(self, vm: dict[str, Any]) -> None:
        """Store a new VM (a VM's owner and name never change)."""
        self.vms[vm["id"]] = vm
        bisect.insort(self.vm_keys, (vm["owner"], vm["name"], vm["id"]))

    def remove_vm(self, vm_id: str) -> dict[str, Any]:
        vm = self.vms.pop(vm_id)
        key = (vm["owner"], vm["name"], vm["id"])
        at = bisect.bisect_left(self.vm_keys, key)
        if at < len(self.vm_keys) and self.vm_keys[at] == key:
            del self.vm_keys[at]
        return vm

    def vm_ids_of(self, owner: str | None) -> Iterator[str]:
        """VM ids ordered by (owner, name, id): one owner's, or everyone's for None."""
        lo, hi = self._owner_span(owner)
        return (self.vm_keys[i][2] for i in range(lo, hi))

    def _owner_span(self, owner: str | None) -> tuple[int, int]:
        if owner is None:
            return 0, len(self.vm_keys)
        return bisect.bisect_left(self.vm_keys, (owner,)), bisect.bisect_left(self.vm_keys, (owner + "\x00",))

    def vm_page(self, owner: str | None, offset: int, limit: int) -> tuple[list[str], int]:
        """One page of VM ids in (owner, name, id) order, and how many there are in all:
        two binary searches and a slice, whatever the number of VMs."""
        lo, hi = self._owner_span(owner)
        start = min(hi, lo + offset)
        return [key[2] for key in self.vm_keys[start : min(hi, start + limit)]], hi - lo

    def reindex(self) -> None:
        self.vm_keys = sorted((vm["owner"], vm["name"], vm["id"]) for vm in self.vms.values())

    @property
    def initialized(self) -> bool:
        return bool(self.cluster.get("id")) and not self.cluster.get("restoring")

    def add_event(self, event: dict[str, Any]) -> None:
        self.event_seq += 1
        event["seq"] = self.event_seq
        self.events.append(event)
        if len(self.events) > EVENT_RETENTION:
            del self.events[: len(self.events) - EVENT_RETENTION]

    def remember_request(self, request_id: str, ts: float, entry: dict[str, Any]) -> None:
        """Cache a request's first result; evict by age (command time) and count."""
        self.requests[request_id] = {"ts": ts, **entry}
        if len(self.requests) > REQUEST_RETENTION:
            for key in list(self.requests)[: len(self.requests) - REQUEST_RETENTION]:
                del self.requests[key]
        oldest = next(iter(self.requests.values()))
        if ts - oldest["ts"] > REQUEST_MAX_AGE_S:
            for key in [k for k, v in self.requests.items() if ts - v["ts"] > REQUEST_MAX_AGE_S]:
                del self.requests[key]

    def chain(self, index: int, raw: bytes | str, outcome: bytes) -> None:
        """Fold one applied entry into a hash chain: equal chains, equal histories."""
        data = raw.encode() if isinstance(raw, str) else raw
        h = hashlib.sha256(self.applied_chain.encode())
        h.update(index.to_bytes(8, "big"))
        h.update(hashlib.sha256(data).digest())
        h.update(hashlib.sha256(outcome).digest())
        self.applied_chain = h.hexdigest()

    def domain_dict(self) -> dict[str, Any]:
        """The resources alone: no audit log, no request cache, no indexes."""
        return {key: getattr(self, key) for key in DOMAIN_KEYS}

    def to_dict(self) -> dict[str, Any]:
        data = self.domain_dict()
        data.update(
            requests=self.requests,
            events=self.events,
            event_seq=self.event_seq,
            applied_index=self.applied_index,
            applied_chain=self.applied_chain,
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "State":
        state = cls()
        for key in DOMAIN_KEYS:
            setattr(state, key, data.get(key, {}))
        state.requests = data.get("requests", {})
        state.events = data.get("events", [])
        state.event_seq = data.get("event_seq", 0)
        state.applied_index = data.get("applied_index", 0)
        state.applied_chain = data.get("applied_chain", "")
        state.reindex()
        return state

    def digest(self, domain_only: bool = False) -> str:
        """A hash of the state that is equal on replicas that applied the same commands."""
        data = self.domain_dict() if domain_only else self.to_dict()
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
