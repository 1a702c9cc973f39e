"""/api/v1/storage-pools (admins) and /api/v1/volumes (users: their own).

Volume creation, deletion, detach and resize are carried out by the storage node's
agent (and the VM's node for hot-plug): they answer 202 with a task.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.volumes import STORAGE_POOL_NAME, VOLUME_NAME, VOLUME_STATES
from cloudd.errors import CloudError
from cloudd.validate import Field
from cloudd.web.api import Api, accepted, find_owned, page
from cloudd.web.auth import Principal, require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import PATH_PARAM, ApiRoute, Doc, Param
from cloudd.web.routes_images import image_by_ref

POOL_CREATE = {
    "name": STORAGE_POOL_NAME,
    "node": Field("str", max_len=63),
    "backend": Field("str", choices=("file", "lvm", "drbd")),
    "config": Field("dict", max_len=8),
}
VOLUME_CREATE = {
    "name": VOLUME_NAME,
    "size_gb": Field("num"),
    "pool": Field("str", max_len=64, required=False),
    "image": Field("str", max_len=128, required=False),
    "owner": Field("str", max_len=64, required=False),
}
VOLUME_ATTACH = {"vm": Field("str", max_len=128)}
VOLUME_DETACH: dict[str, Field] = {}
VOLUME_RESIZE = {"size_gb": Field("num"), "force": Field("bool", required=False)}
VOLUME_REF = Param("the volume's id, or its name (409 when several volumes you can see have it)", PATH_PARAM)


def volume_view(volume: dict[str, Any], with_placement: bool) -> dict[str, Any]:
    """A volume as the API shows it; where it lives only to admins."""
    view = dict(volume)
    if not with_placement:
        view.pop("node", None)
        view.pop("replica", None)  # which storage nodes hold its copies
    return view


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    def find_volume(principal: Principal, ref: str) -> dict[str, Any]:
        with runtime.raft.lock:
            return find_owned(runtime.raft.state.volumes, principal, ref, "volume")

    @guarded
    async def storage_pools_list(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        with runtime.raft.lock:
            items = sorted((dict(p) for p in runtime.raft.state.storage_pools.values()), key=lambda p: p["name"])
        return json_response(page(items, request))

    @guarded
    async def storage_pools_create(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, POOL_CREATE)
        result, index = await api.commit(request, principal, "storage_pool.create", body)
        return json_response(result, status=201, index=index)

    @guarded
    async def storage_pools_delete(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        result, index = await api.commit(request, principal, "storage_pool.delete", {"name": request.path_params["name"]})
        return json_response(result, index=index)

    @guarded
    async def volumes_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        wanted = request.query_params.get("state")
        if wanted is not None and wanted not in VOLUME_STATES:
            raise CloudError("invalid", f"state must be one of: {', '.join(VOLUME_STATES)}")
        everyone = principal.is_admin and request.query_params.get("all") == "true"
        vm = request.query_params.get("vm")
        with runtime.raft.lock:
            items = [
                volume_view(v, principal.is_admin)
                for v in runtime.raft.state.volumes.values()
                if (everyone or v["owner"] == principal.name) and (wanted is None or v["state"] == wanted) and (vm is None or v["attached_to"] == vm)
            ]
        items.sort(key=lambda v: (v["owner"], v["name"], v["id"]))
        return json_response(page(items, request))

    @guarded
    async def volumes_create(request: Request) -> Response:
        principal = await api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "volumes belong to users")
        body = await read_json(request, VOLUME_CREATE)
        owner = body.pop("owner", principal.name)
        if owner != principal.name and not principal.is_admin:
            raise CloudError("forbidden", "only admins create volumes for other users")
        if "image" in body:
            with runtime.raft.lock:
                image = image_by_ref(runtime.raft.state.images, body["image"], owner)
            body["image"] = image["id"] if image is not None else body["image"]
        result, index = await api.commit(request, principal, "volume.create", {"id": secrets.token_hex(8), "owner": owner, **body})
        return accepted(result, index)

    @guarded
    async def volumes_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        return json_response(volume_view(find_volume(principal, request.path_params["ref"]), principal.is_admin))

    @guarded
    async def volumes_delete(request: Request) -> Response:
        principal = await api.principal(request)
        volume = find_volume(principal, request.path_params["ref"])
        result, index = await api.commit(request, principal, "volume.delete", {"id": volume["id"]})
        return accepted(result, index)

    @guarded
    async def volumes_attach(request: Request) -> Response:
        principal = await api.principal(request)
        volume = find_volume(principal, request.path_params["ref"])
        body = await read_json(request, VOLUME_ATTACH)
        with runtime.raft.lock:
            vm = find_owned(runtime.raft.state.vms, principal, body["vm"], "VM")
        result, index = await api.commit(request, principal, "volume.attach", {"id": volume["id"], "vm": vm["id"]})
        return accepted(result, index)

    @guarded
    async def volumes_detach(request: Request) -> Response:
        principal = await api.principal(request)
        volume = find_volume(principal, request.path_params["ref"])
        await read_json(request, VOLUME_DETACH)
        result, index = await api.commit(request, principal, "volume.detach", {"id": volume["id"]})
        return accepted(result, index)

    @guarded
    async def volumes_resize(request: Request) -> Response:
        principal = await api.principal(request)
        volume = find_volume(principal, request.path_params["ref"])
        body = await read_json(request, VOLUME_RESIZE)
        result, index = await api.commit(request, principal, "volume.resize", {"id": volume["id"], **body})
        return accepted(result, index)

    ref = {"ref": VOLUME_REF}
    return [
        ApiRoute("/api/v1/storage-pools", storage_pools_list, "GET", Doc("Storage pools with their node, backend and reported capacity", "admin", "storage", response="StoragePool", paged=True)),
        ApiRoute("/api/v1/storage-pools", storage_pools_create, "POST", Doc(
            "Create a storage pool on a storage node", "admin", "storage", body=POOL_CREATE, response="StoragePool", status=201,
            description='`config`: file `{"path"}` (a directory), lvm `{"vg", "thin_pool"?}`, drbd `{"vg", "thin_pool"?, "peer"}`.',
        )),
        ApiRoute("/api/v1/storage-pools/{name}", storage_pools_delete, "DELETE", Doc("Forget a storage pool that holds no volumes", "admin", "storage", response="Named")),
        ApiRoute("/api/v1/volumes", volumes_list, "GET", Doc(
            "Your volumes (admins: all=true for everyone's)", "user", "storage", response="Volume", paged=True,
            query={"state": Param("a volume state", {"type": "string", "enum": list(VOLUME_STATES)}), "vm": Param("only those attached to this VM id"), "all": Param("admins: true for every user's")},
        )),
        ApiRoute("/api/v1/volumes", volumes_create, "POST", Doc(
            "Create a volume, blank or from an OS image, in a pool (the one with most room when not given)", "user", "storage",
            body=VOLUME_CREATE, response="Accepted", status=202, description="Counts against the owner's pool (disk_gb). 507 when no pool has room.",
        )),
        ApiRoute("/api/v1/volumes/{ref}", volumes_show, "GET", Doc("One volume: state, size, attachment, export, usage", "owner", "storage", response="Volume", path_params=ref)),
        ApiRoute("/api/v1/volumes/{ref}", volumes_delete, "DELETE", Doc("Delete a volume and its data (409 while attached)", "owner", "storage", response="Accepted", status=202, path_params=ref)),
        ApiRoute("/api/v1/volumes/{ref}/attach", volumes_attach, "POST", Doc(
            "Attach to one of your VMs: exported to the VM's node only, hot-plugged when it runs", "owner", "storage", body=VOLUME_ATTACH, response="Accepted", status=202, path_params=ref,
        )),
        ApiRoute("/api/v1/volumes/{ref}/detach", volumes_detach, "POST", Doc("Detach from its VM (unplugged from a running guest first)", "owner", "storage", body=VOLUME_DETACH, response="Accepted", status=202, path_params=ref)),
        ApiRoute("/api/v1/volumes/{ref}/resize", volumes_resize, "POST", Doc(
            "Offline resize: grow, or shrink with force (409 while its VM is not stopped)", "owner", "storage", body=VOLUME_RESIZE, response="Accepted", status=202, path_params=ref,
        )),
    ]
