"""Cinder v3 under ``/volume/v3``: one's volumes, created and deleted through the
replicated ``volume.create`` and ``volume.delete`` as ``/api/v1/volumes`` proposes them
(pool quota, storage pool choice and transitions are theirs)."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.commands.pools import pool_usage
from cloudd.commands.volumes import VOLUME_NAME
from cloudd.errors import CloudError
from cloudd.validate import Field
from cloudd.web.api import find_owned
from cloudd.web.auth import Principal
from cloudd.web.http import json_response
from cloudd.web.openstack.common import OsApi, base_url, caller_pool, query_flag, read_wrapped
from cloudd.web.openstack.errors import nova_guarded
from cloudd.web.openstack.mapping import VOLUME_STATUS, volume_view
from cloudd.web.openstack.nova import page_args, paged
from cloudd.web.routes_images import image_by_ref

ANY = Field("any", required=False, nullable=True)
VOLUME_CREATE = {
    "size": Field("int", min=1, max=64 << 10),
    "name": Field("str", max_len=255, required=False, nullable=True),
    "description": Field("str", max_len=255, required=False, nullable=True),
    "imageRef": Field("str", max_len=128, required=False, nullable=True),
    "availability_zone": ANY, "volume_type": ANY, "metadata": Field("dict", max_len=64, required=False, nullable=True), "multiattach": ANY,
    "snapshot_id": ANY, "source_volid": ANY, "consistencygroup_id": ANY, "backup_id": ANY, "group_id": ANY,
}


def version_document(request: Request) -> dict[str, Any]:
    return {
        "id": "v3.0", "status": "CURRENT", "version": "3.0", "min_version": "3.0", "updated": "2016-02-08T12:20:21Z",
        "links": [{"rel": "self", "href": f"{base_url(request)}/volume/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}],
    }


def routes(os_api: OsApi) -> list[Route]:
    api = os_api.api
    runtime = os_api.runtime

    def volume_url(request: Request) -> str:
        return f"{base_url(request)}/volume/v3"

    def find_volume(principal: Principal, volume_id: str) -> dict[str, Any]:
        """By id only, among the caller's (``find_owned``); a name is a 404."""
        with runtime.raft.lock:
            volumes = runtime.raft.state.volumes
            if volume_id in volumes:
                try:
                    return find_owned(volumes, principal, volume_id, "volume")
                except CloudError:
                    pass
        raise CloudError("not_found", f"Volume {volume_id[:64]} could not be found.")

    @nova_guarded
    async def versions(request: Request) -> Response:
        return json_response({"versions": [version_document(request)]}, status=300)

    @nova_guarded
    async def v3(request: Request) -> Response:
        return json_response({"versions": [version_document(request)]})

    async def listing(request: Request) -> list[dict[str, Any]]:
        principal = await os_api.principal(request)
        everyone = principal.is_admin and query_flag(request, "all_tenants")
        name, status = request.query_params.get("name"), request.query_params.get("status")
        if status is not None and status not in VOLUME_STATUS.values():
            raise CloudError("invalid", f"status must be one of: {', '.join(sorted(set(VOLUME_STATUS.values())))}")
        limit, marker = page_args(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            items = [
                volume_view(state, v, volume_url(request)) for v in state.volumes.values()
                if (everyone or v["owner"] == principal.name) and (name is None or v["name"] == name)
            ]
        items = [v for v in items if status is None or v["status"] == status]
        items.sort(key=lambda v: (v["created_at"] or "", v["id"]), reverse=True)
        return paged(items, limit, marker)

    @nova_guarded
    async def volumes_list(request: Request) -> Response:
        items = await listing(request)
        return json_response({"volumes": [{"id": v["id"], "name": v["name"], "links": v["links"]} for v in items]})

    @nova_guarded
    async def volumes_detail(request: Request) -> Response:
        return json_response({"volumes": await listing(request)})

    @nova_guarded
    async def volumes_show(request: Request) -> Response:
        principal = await os_api.principal(request)
        volume = find_volume(principal, request.path_params["volume_id"])
        with runtime.raft.lock:
            return json_response({"volume": volume_view(runtime.raft.state, volume, volume_url(request))})

    @nova_guarded
    async def volumes_create(request: Request) -> Response:
        """A blank volume, or a copy of an image (``imageRef``); a volume without a name
        is named ``volume-<id>``."""
        principal = await os_api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "volumes belong to users")
        body = await read_wrapped(request, "volume", VOLUME_CREATE)
        for unsupported in ("snapshot_id", "source_volid", "backup_id"):
            if body.get(unsupported):
                raise CloudError("invalid", f"{unsupported} is not supported here: create a blank volume or one from an image")
        volume_id = secrets.token_hex(8)
        name = body.get("name") or f"volume-{volume_id}"
        if VOLUME_NAME.pattern is not None and not VOLUME_NAME.pattern.fullmatch(name):
            raise CloudError("invalid", "volume names here: 1-64 of letters, digits, . _ -, starting with a letter or digit")
        args: dict[str, Any] = {"id": volume_id, "owner": principal.name, "name": name, "size_gb": body["size"]}
        if body.get("imageRef"):
            with runtime.raft.lock:
                image = image_by_ref(runtime.raft.state.images, body["imageRef"], principal.name)
            args["image"] = image["id"] if image is not None else body["imageRef"]
        try:
            await api.commit(request, principal, "volume.create", args)
        except CloudError as exc:
            if exc.code == "quota_exceeded":
                quota = CloudError("payload_too_large", f"VolumeSizeExceedsAvailableQuota: {exc.message}", exc.details)
                quota.index = exc.index
                raise quota from None
            raise
        with runtime.raft.lock:
            state = runtime.raft.state
            view = volume_view(state, state.volumes[volume_id], volume_url(request)) if volume_id in state.volumes else None
        if view is None:
            raise CloudError("unavailable", "the volume was created but is not readable on this node yet")
        return json_response({"volume": view}, status=202)

    @nova_guarded
    async def volumes_delete(request: Request) -> Response:
        principal = await os_api.principal(request)
        volume = find_volume(principal, request.path_params["volume_id"])
        await api.commit(request, principal, "volume.delete", {"id": volume["id"]})
        return Response(status_code=202)

    @nova_guarded
    async def limits(request: Request) -> Response:
        """The caller's pool's disk limit (-1: none) and what its members use."""
        principal = await os_api.principal(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            pool = caller_pool(state, principal.name)
            cap = pool["limits"].get("disk_gb") if pool is not None else None
            used = pool_usage(state, pool["name"]).disk_gb if pool is not None else sum(v["size_gb"] for v in state.volumes.values() if v["owner"] == principal.name)
            mine = [v for v in state.volumes.values() if v["owner"] == principal.name]
        absolute = {
            "maxTotalVolumeGigabytes": -1 if cap is None else int(cap), "totalGigabytesUsed": int(used),
            "maxTotalVolumes": -1, "totalVolumesUsed": len(mine), "maxTotalSnapshots": 0, "totalSnapshotsUsed": 0,
            "maxTotalBackups": 0, "totalBackupsUsed": 0, "maxTotalBackupGigabytes": 0, "totalBackupGigabytesUsed": 0,
        }
        return json_response({"limits": {"rate": [], "absolute": absolute}})

    prefix = "/volume/v3"
    return [
        Route("/volume", versions, methods=["GET"]),
        Route("/volume/", versions, methods=["GET"]),
        Route(prefix, v3, methods=["GET"]),
        Route(f"{prefix}/", v3, methods=["GET"]),
        Route(f"{prefix}/volumes", volumes_list, methods=["GET"]),
        Route(f"{prefix}/volumes", volumes_create, methods=["POST"]),
        Route(f"{prefix}/volumes/detail", volumes_detail, methods=["GET"]),
        Route(f"{prefix}/volumes/{{volume_id}}", volumes_show, methods=["GET"]),
        Route(f"{prefix}/volumes/{{volume_id}}", volumes_delete, methods=["DELETE"]),
        Route(f"{prefix}/limits", limits, methods=["GET"]),
    ]
