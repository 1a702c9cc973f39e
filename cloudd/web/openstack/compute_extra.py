"""The rest of Nova: flavors, keypairs, availability zones, limits, volume attachments.

Flavors are cloudd's flavors (id = name); limits are the caller's pool (-1: no limit);
keypairs are the replicated ``keypair.*`` commands; a volume attachment is
``volume.attach`` / ``volume.detach`` as ``/api/v1/volumes/{ref}/attach`` proposes them.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.commands.keypairs import (
    MAX_KEYPAIRS_PER_USER,
    MAX_PUBLIC_KEY,
    public_key_problem,
)
from cloudd.commands.pools import pool_usage, usage_of_vms
from cloudd.errors import CloudError
from cloudd.validate import Field
from cloudd.web.api import find_owned
from cloudd.web.auth import Principal
from cloudd.web.http import json_response
from cloudd.web.openstack.common import OsApi, caller_pool, read_wrapped
from cloudd.web.openstack.mapping import AVAILABILITY_ZONE, flavor_view, keypair_view
from cloudd.web.openstack.nova import (
    bounded_int,
    compute_url,
    find_server,
    nova_endpoint,
    page_args,
    paged,
)

KEYPAIR_CREATE = {"name": Field("str", max_len=255), "public_key": Field("str", max_len=MAX_PUBLIC_KEY, required=False), "type": Field("str", choices=("ssh",), required=False)}
ATTACH = {"volumeId": Field("str", max_len=64), "device": Field("str", max_len=64, required=False, nullable=True), "tag": Field("any", required=False), "delete_on_termination": Field("bool", required=False)}
MAX_FLAVOR_FILTER = 10**15
LIMIT_NAMES = {"vcpus": ("maxTotalCores", "totalCoresUsed"), "ram_mb": ("maxTotalRAMSize", "totalRAMUsed"), "vms": ("maxTotalInstances", "totalInstancesUsed")}


def fingerprint(public_key: str) -> str:
    """Nova's fingerprint of an OpenSSH public key: MD5 of its blob, colon-separated.
    The key must pass ``public_key_problem`` (400 otherwise, in Nova's words)."""
    problem = public_key_problem(public_key)
    if problem is not None:
        raise CloudError("invalid", f"Keypair data is invalid: the public key {problem}")
    digest = hashlib.md5(base64.b64decode(public_key.split()[1]), usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def generated_pair() -> tuple[str, str]:
    """(public key, private key) of a new ed25519 pair in OpenSSH formats."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return public + " Generated-by-cloudd", private


def attachment_view(vm_id: str, volume_id: str, target: str | None) -> dict[str, Any]:
    return {"id": volume_id, "volumeId": volume_id, "serverId": vm_id, "device": f"/dev/{target}" if target else None}


def routes(os_api: OsApi) -> list[Route]:
    api = os_api.api
    runtime = os_api.runtime

    def flavors(request: Request) -> list[dict[str, Any]]:
        min_ram = bounded_int(request.query_params.get("minRam", "0"), "minRam", 0, MAX_FLAVOR_FILTER)
        min_disk = bounded_int(request.query_params.get("minDisk", "0"), "minDisk", 0, MAX_FLAVOR_FILTER)
        with runtime.raft.lock:
            items = [dict(f) for f in runtime.raft.state.flavors.values() if f["ram_mb"] >= min_ram and f["disk_gb"] >= min_disk]
        items.sort(key=lambda f: (f["vcpus"], f["ram_mb"], f["name"]))
        limit, marker = page_args(request)
        return paged([{**f, "id": f["name"]} for f in items], limit, marker)

    @nova_endpoint
    async def flavors_list(request: Request) -> Response:
        await os_api.principal(request)
        return json_response({"flavors": [flavor_view(f, compute_url(request), detail=False) for f in flavors(request)]})

    @nova_endpoint
    async def flavors_detail(request: Request) -> Response:
        await os_api.principal(request)
        return json_response({"flavors": [flavor_view(f, compute_url(request)) for f in flavors(request)]})

    @nova_endpoint
    async def flavors_show(request: Request) -> Response:
        await os_api.principal(request)
        with runtime.raft.lock:
            flavor = runtime.raft.state.flavors.get(request.path_params["flavor_id"])
            flavor = dict(flavor) if flavor else None
        if flavor is None:
            raise CloudError("not_found", f"Flavor {request.path_params['flavor_id'][:64]} could not be found.")
        return json_response({"flavor": flavor_view(flavor, compute_url(request))})

    def my_keypairs(principal: Principal) -> dict[str, dict[str, Any]]:
        with runtime.raft.lock:
            return {k: dict(v) for k, v in ((runtime.raft.state.users.get(principal.name) or {}).get("keypairs") or {}).items()}

    @nova_endpoint
    async def keypairs_list(request: Request) -> Response:
        principal = await os_api.principal(request)
        pairs = sorted(my_keypairs(principal).values(), key=lambda p: p["name"])
        return json_response({"keypairs": [{"keypair": keypair_view(p, principal.name)} for p in pairs]})

    @nova_endpoint
    async def keypairs_show(request: Request) -> Response:
        principal = await os_api.principal(request)
        pair = my_keypairs(principal).get(request.path_params["name"])
        if pair is None:
            raise CloudError("not_found", f"Keypair {request.path_params['name'][:64]} not found.")
        return json_response({"keypair": {**keypair_view(pair, principal.name), "id": pair["name"], "deleted": False, "created_at": None}})

    @nova_endpoint
    async def keypairs_create(request: Request) -> Response:
        """Import a public key, or generate a pair: the private key is in this answer only."""
        principal = await os_api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "keypairs belong to users")
        body = await read_wrapped(request, "keypair", KEYPAIR_CREATE)
        private = None
        public = body.get("public_key")
        if public is None:
            public, private = generated_pair()
        public = public.strip()
        args = {"user": principal.name, "name": body["name"], "public_key": public, "fingerprint": fingerprint(public)}
        result, _ = await api.commit(request, principal, "keypair.create", args)
        view = keypair_view(result, principal.name)
        if private is not None:
            view["private_key"] = private
        return json_response({"keypair": view})

    @nova_endpoint
    async def keypairs_delete(request: Request) -> Response:
        principal = await os_api.principal(request)
        name = request.path_params["name"]
        if name not in my_keypairs(principal):
            raise CloudError("not_found", f"Keypair {name[:64]} not found.")
        await api.commit(request, principal, "keypair.delete", {"user": principal.name, "name": name})
        return Response(status_code=202)

    @nova_endpoint
    async def zones(request: Request) -> Response:
        await os_api.principal(request)
        return json_response({"availabilityZoneInfo": [{"zoneName": AVAILABILITY_ZONE, "zoneState": {"available": True}, "hosts": None}]})

    @nova_endpoint
    async def limits(request: Request) -> Response:
        """The caller's pool: its limits (-1: none) and what its members use."""
        principal = await os_api.principal(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            pool = caller_pool(state, principal.name)
            if pool is not None:
                usage = pool_usage(state, pool["name"]).to_dict()
                caps = dict(pool["limits"])
            else:
                usage = usage_of_vms(state.vms[i] for i in state.vm_ids_of(principal.name)).to_dict()
                caps = {}
            pairs = len((state.users.get(principal.name) or {}).get("keypairs") or {})
        absolute: dict[str, Any] = {"maxServerMeta": 0, "maxPersonality": 0, "maxPersonalitySize": 0, "maxImageMeta": 0, "maxTotalKeypairs": MAX_KEYPAIRS_PER_USER, "totalKeyPairsUsed": pairs,
                                    "maxSecurityGroups": -1, "maxSecurityGroupRules": -1, "totalSecurityGroupsUsed": 0, "maxTotalFloatingIps": -1, "totalFloatingIpsUsed": 0,
                                    "maxServerGroups": -1, "maxServerGroupMembers": -1, "totalServerGroupsUsed": 0}
        for key, (max_name, used_name) in LIMIT_NAMES.items():
            cap = caps.get(key)
            absolute[max_name] = -1 if cap is None else int(cap)
            absolute[used_name] = int(usage[key])
        return json_response({"limits": {"rate": [], "absolute": absolute}})

    def attachments_of(vm: dict[str, Any]) -> list[dict[str, Any]]:
        return [attachment_view(vm["id"], v["id"], v.get("target")) for v in vm.get("volumes", ())]

    @nova_endpoint
    async def attachments_list(request: Request) -> Response:
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        return json_response({"volumeAttachments": attachments_of(vm)})

    @nova_endpoint
    async def attachments_show(request: Request) -> Response:
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        found = [a for a in attachments_of(vm) if a["volumeId"] == request.path_params["volume_id"]]
        if not found:
            raise CloudError("not_found", f"volume {request.path_params['volume_id'][:64]} is not attached to the server")
        return json_response({"volumeAttachment": found[0]})

    @nova_endpoint
    async def attachments_create(request: Request) -> Response:
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        body = await read_wrapped(request, "volumeAttachment", ATTACH)
        with runtime.raft.lock:
            volume = find_owned(runtime.raft.state.volumes, principal, body["volumeId"], "volume")
        result, _ = await api.commit(request, principal, "volume.attach", {"id": volume["id"], "vm": vm["id"]})
        return json_response({"volumeAttachment": attachment_view(vm["id"], volume["id"], result.get("target"))})

    @nova_endpoint
    async def attachments_delete(request: Request) -> Response:
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        volume_id = request.path_params["volume_id"]
        if volume_id not in {v["id"] for v in vm.get("volumes", ())}:
            raise CloudError("not_found", f"volume {volume_id[:64]} is not attached to the server")
        await api.commit(request, principal, "volume.detach", {"id": volume_id})
        return Response(status_code=202)

    prefix = "/compute/v2.1"
    return [
        Route(f"{prefix}/flavors", flavors_list, methods=["GET"]),
        Route(f"{prefix}/flavors/detail", flavors_detail, methods=["GET"]),
        Route(f"{prefix}/flavors/{{flavor_id}}", flavors_show, methods=["GET"]),
        Route(f"{prefix}/os-keypairs", keypairs_list, methods=["GET"]),
        Route(f"{prefix}/os-keypairs", keypairs_create, methods=["POST"]),
        Route(f"{prefix}/os-keypairs/{{name}}", keypairs_show, methods=["GET"]),
        Route(f"{prefix}/os-keypairs/{{name}}", keypairs_delete, methods=["DELETE"]),
        Route(f"{prefix}/os-availability-zone", zones, methods=["GET"]),
        Route(f"{prefix}/os-availability-zone/detail", zones, methods=["GET"]),
        Route(f"{prefix}/limits", limits, methods=["GET"]),
        Route(f"{prefix}/servers/{{server_id}}/os-volume_attachments", attachments_list, methods=["GET"]),
        Route(f"{prefix}/servers/{{server_id}}/os-volume_attachments", attachments_create, methods=["POST"]),
        Route(f"{prefix}/servers/{{server_id}}/os-volume_attachments/{{volume_id}}", attachments_show, methods=["GET"]),
        Route(f"{prefix}/servers/{{server_id}}/os-volume_attachments/{{volume_id}}", attachments_delete, methods=["DELETE"]),
    ]
