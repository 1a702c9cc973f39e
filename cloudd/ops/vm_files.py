"""Moving a VM's node-local disk files to another node (offline migration).

The source serves them over its own API, only to the node its VM is migrating to and only
while the migration is copying (``cloudd.web.routes_migration``); the target fetches
them with a signed request (``X-Cloudd-Node``, fresh per request) into a staging
directory, and renames it into place once every file is there, so a crash never leaves a
half-copied VM under its final name. Swap is never copied (the target makes a new one),
nor is the cloud-init seed (the target writes it again).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson

from cloudd.ops.compute import ComputeError
from cloudd.security import sign_node_request

CHUNK = 1 << 20


def movable_files(vm: dict[str, Any]) -> list[str]:
    """The names (in the VM's directory) of the files an offline migration copies."""
    return ["disk.qcow2", *(f"disk-{d['id']}.qcow2" for d in vm.get("disks", ()))]


class VmFileFetch:
    """The target's side: list and fetch a migrating VM's files from the source node."""

    def __init__(self, node_name: str, secret: str, api_addr_of: Callable[[str], str | None], timeout_s: float = 60.0) -> None:
        self.node_name = node_name
        self.secret = secret
        self.api_addr_of = api_addr_of
        self.timeout_s = timeout_s

    def _url(self, source: str, path: str) -> tuple[str, dict[str, str]]:
        addr = self.api_addr_of(source)
        if addr is None:
            raise ComputeError(f"node {source} is not a member of the cluster")
        return f"http://{addr}{path}", {"X-Cloudd-Node": sign_node_request(self.secret, self.node_name, "GET", path, b"")}

    async def list(self, source: str, vm_id: str) -> list[tuple[str, int]]:
        """(name, size in bytes) of each file to copy."""
        url, headers = self._url(source, f"/internal/v1/vms/{vm_id}/files")
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                reply = await client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ComputeError(f"node {source} could not be reached: {exc.__class__.__name__}", transient=True) from None
        if reply.status_code != 200:
            raise ComputeError(f"node {source} answered {reply.status_code}: {_message(reply.content)}", transient=reply.status_code >= 500 or reply.status_code == 409)
        return [(str(f["name"]), int(f["size"])) for f in reply.json()["files"]]

    async def fetch(self, source: str, vm_id: str, name: str, dest: Path, on_bytes: Callable[[int], None]) -> int:
        """Write the file to ``dest`` (replacing it); returns its size."""
        url, headers = self._url(source, f"/internal/v1/vms/{vm_id}/files/{name}")
        done = 0
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client, client.stream("GET", url, headers=headers) as reply:
                if reply.status_code != 200:
                    raise ComputeError(f"node {source} answered {reply.status_code}: {_message(await reply.aread())}", transient=reply.status_code >= 500 or reply.status_code == 409)
                with open(dest, "wb") as out:
                    async for chunk in reply.aiter_bytes(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        on_bytes(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.HTTPError as exc:
            raise ComputeError(f"copying {name} from node {source} broke off: {exc.__class__.__name__}", transient=True) from None
        return done


def _message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["message"])[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
