"""The OpenStack routes over an in-memory replica: real command handlers, no Raft.

``FakeRuntime`` is what ``Api`` needs of a node: ``raft`` (a lock, the state, applied
indexes) and a ``proposer`` that applies each command to the replica at once.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import httpx
from starlette.applications import Starlette

from cloudd.commands import make_command
from cloudd.errors import CloudError
from cloudd.security import hash_password, new_token, sha256_hex
from cloudd.web import openstack
from cloudd.web.api import Api
from cloudd.web.auth import TOKEN_PREFIX
from tests.factories import Replica, initialized

PASSWORD = "secret-pass-1"
HASH = hash_password(PASSWORD, n=1024)  # cheap to check, same format
HOST = "http://node-a.example:8400"
NET = "0000aaaa"


class FakeRaft:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.lock = threading.RLock()

    @property
    def state(self) -> Any:
        return self.replica.state

    @property
    def raftLastApplied(self) -> int:
        return self.replica.index

    raftCommitIndex = raftLastApplied


class FakeProposer:
    def __init__(self, raft: FakeRaft) -> None:
        self.raft = raft

    async def submit_ok(self, op: str, args: dict[str, Any], *, request_id: str | None = None, actor: Mapping[str, Any] | None = None, **_: Any) -> tuple[Any, int]:
        raw = make_command(op, args, request_id or secrets.token_hex(8), time.time(), actor)
        with self.raft.lock:
            outcome = self.raft.replica.apply(raw)
        if "error" in outcome:  # refused by the command, but in the log (as the real proposer says)
            error = CloudError.from_dict(outcome["error"])
            error.index = outcome["index"]
            raise error
        return outcome["result"], outcome["index"]

    async def wait_applied(self, index: int, timeout_s: float = 5.0) -> None:
        return None


def cloud() -> Replica:
    """Admin, users alice and bob (bob in pool ``small``), a hypervisor, flavors, an
    image, a public network and a storage pool."""
    replica = initialized()
    replica.ok("node.register", {"name": "n1", "roles": ["hypervisor", "storage"], "inventory": {"cpus": 8, "ram_mb": 16384, "disk_gb": 200.0}})
    replica.ok("node.heartbeat", {"name": "n1"})
    replica.ok("node.status_set", {"name": "n1", "status": "up", "observed_seq": 1})
    for name in ("alice", "bob"):
        replica.ok("user.create", {"name": name, "role": "user", "password_hash": HASH})
    replica.ok("pool.create", {"name": "small", "limits": {"vcpus": 2, "ram_mb": 1024, "vms": 2, "disk_gb": 3}})
    replica.ok("user.update", {"name": "bob", "pool": "small"})
    replica.ok("flavor.create", {"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1})
    replica.ok("flavor.create", {"name": "big", "vcpus": 4, "ram_mb": 2048, "disk_gb": 2})
    replica.ok("image.register", {"id": "img1", "name": "cirros", "owner": "admin", "public": True, "format": "qcow2", "path": "/images/cirros.qcow2", "size_gb": 1})
    replica.ok("image.register", {"id": "img2", "name": "debian", "owner": "admin", "public": True, "format": "qcow2", "path": "/images/debian.qcow2", "size_gb": 1})
    replica.ok("network.create", {"id": "0000aaaa", "name": "public", "owner": None, "subnet": "192.0.2.0/24"})
    replica.ok("storage_pool.create", {"name": "vols", "node": "n1", "backend": "file", "config": {"path": "/srv/vols"}})
    replica.ok("storage_pool.report", {"name": "vols", "node": "n1", "total_bytes": 100 << 30, "free_bytes": 100 << 30})
    return replica


class Cloud:
    """The routes of one fake node and helpers to call them as a user."""

    def __init__(self) -> None:
        self.replica = cloud()
        self.raft = raft = FakeRaft(self.replica)
        self.runtime = runtime = SimpleNamespace(raft=raft, proposer=FakeProposer(raft), config=SimpleNamespace(name="n1"), secret="s" * 32)
        self.app = Starlette(routes=openstack.routes(Api(runtime)))  # type: ignore[arg-type]

    @property
    def state(self) -> Any:
        return self.replica.state

    def request(self, method: str, path: str, token: str | None = None, headers: Mapping[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=HOST) as client:
                all_headers = {**({"X-Auth-Token": token} if token else {}), **(headers or {})}
                return await client.request(method, path, headers=all_headers, **kwargs)

        return asyncio.run(send())

    def token(self, user: str, expires_in: float | None = None, kind: str = "session") -> str:
        """A token stored as ``token.create`` stores it (optionally expiring soon)."""
        token = new_token(TOKEN_PREFIX)
        now = time.time()
        self.replica.ok("token.create", {
            "token_id": token.token_id, "user": user, "secret_sha256": sha256_hex(token.secret), "name": "test",
            "expires_at": None if expires_in is None else now + expires_in, "kind": kind,
        }, ts=now)
        return str(token)

    def create_server(self, token: str, name: str, flavor: str = "tiny", **extra: Any) -> httpx.Response:
        body = {"server": {"name": name, "flavorRef": flavor, "imageRef": "img1", "networks": [{"uuid": NET}], **extra}}
        return self.request("POST", "/compute/v2.1/servers", token, json=body)

    def vm_ids(self) -> set[str]:
        return set(self.state.vms)
