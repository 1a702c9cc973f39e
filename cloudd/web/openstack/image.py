"""Glance v2 under ``/image``: the images a user may see (public ones and their own),
read-only, through ``image_visible`` as ``GET /api/v1/images``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.errors import CloudError
from cloudd.web.http import json_response
from cloudd.web.openstack.common import OsApi, base_url
from cloudd.web.openstack.errors import nova_guarded
from cloudd.web.openstack.mapping import image_view
from cloudd.web.openstack.nova import page_args, paged
from cloudd.web.routes_images import image_visible

STATUS_FILTER = ("active", "queued", "killed")


def version_documents(request: Request) -> dict[str, Any]:
    href = f"{base_url(request)}/image/v2/"
    return {"versions": [{"id": f"v2.{n}", "status": "CURRENT" if n == 16 else "SUPPORTED", "links": [{"rel": "self", "href": href}]} for n in (16, 0)]}


def routes(os_api: OsApi) -> list[Route]:
    runtime = os_api.runtime

    @nova_guarded
    async def versions(request: Request) -> Response:
        return json_response(version_documents(request), status=300)

    @nova_guarded
    async def images_list(request: Request) -> Response:
        """Filters: ``name``, ``id`` (``in:a,b``), ``status``, ``visibility``; ``limit``, ``marker``."""
        principal = await os_api.principal(request)
        query = request.query_params
        ids = query.get("id")
        wanted_ids = set(ids[3:].split(",")) if ids is not None and ids.startswith("in:") else ({ids} if ids is not None else None)
        status, visibility, name = query.get("status"), query.get("visibility"), query.get("name")
        if status is not None and status not in STATUS_FILTER:
            raise CloudError("invalid", f"status must be one of: {', '.join(STATUS_FILTER)}")
        if visibility is not None and visibility not in ("public", "private", "all", "shared", "community"):
            raise CloudError("invalid", "visibility must be public, private, shared, community or all")
        limit, marker = page_args(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            items = [
                image_view(state, i) for i in state.images.values()
                if image_visible(i, principal) and (wanted_ids is None or i["id"] in wanted_ids) and (name is None or i["name"] == name)
            ]
        items = [i for i in items if (status is None or i["status"] == status) and (visibility in (None, "all") or i["visibility"] == visibility)]
        items.sort(key=lambda i: (i["created_at"] or "", i["id"]), reverse=True)
        return json_response({"images": paged(items, limit, marker), "schema": "/image/v2/schemas/images", "first": "/image/v2/images"})

    @nova_guarded
    async def images_show(request: Request) -> Response:
        principal = await os_api.principal(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            image = state.images.get(request.path_params["image_id"])
            view = image_view(state, image) if image is not None and image_visible(image, principal) else None
        if view is None:
            raise CloudError("not_found", f"No image found with ID {request.path_params['image_id'][:64]}")
        return json_response(view)

    return [
        Route("/image", versions, methods=["GET"]),
        Route("/image/", versions, methods=["GET"]),
        Route("/image/versions", versions, methods=["GET"]),
        Route("/image/v2/images", images_list, methods=["GET"]),
        Route("/image/v2/images/{image_id}", images_show, methods=["GET"]),
    ]
