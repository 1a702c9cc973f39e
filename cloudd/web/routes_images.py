"""/api/v1/images: public images and a user's own; admins register files by path."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.errors import CloudError
from cloudd.validate import Field
from cloudd.web.api import Api, page
from cloudd.web.auth import Principal, require_admin
from cloudd.web.http import guarded, json_response, read_json


def image_visible(image: dict[str, Any], principal: Principal) -> bool:
    return principal.is_admin or image["public"] or image["owner"] == principal.name


def routes(api: Api) -> list[Route]:
    runtime = api.runtime

    @guarded
    async def images_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            items = [dict(i) for i in runtime.raft.state.images.values() if image_visible(i, principal)]
        items.sort(key=lambda i: (i["name"], i["id"]))
        return json_response(page(items, request))

    @guarded
    async def images_register(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(
            request,
            {
                "name": Field("str", max_len=128),
                "format": Field("str"),
                "path": Field("str"),
                "size_gb": Field("num"),
                "public": Field("bool", required=False),
                "min_disk_gb": Field("num", required=False),
                "min_ram_mb": Field("int", required=False),
                "os": Field("str", required=False),
            },
        )
        args = {"id": secrets.token_hex(8), "owner": principal.name, "public": body.pop("public", True), **body}
        result, index = await api.commit(request, principal, "image.register", args)
        return json_response(result, status=201, index=index)

    @guarded
    async def images_delete(request: Request) -> Response:
        principal = await api.principal(request)
        image_id = request.path_params["image_id"]
        with runtime.raft.lock:
            image = runtime.raft.state.images.get(image_id)
            image = None if image is None else dict(image)
        if image is None or not image_visible(image, principal):
            raise CloudError("not_found", f"image {image_id} not found")
        if not principal.is_admin and image["owner"] != principal.name:
            raise CloudError("forbidden", "only the owner or an admin can delete an image")
        result, index = await api.commit(request, principal, "image.delete", {"id": image_id})
        return json_response(result, index=index)

    return [
        Route("/api/v1/images", images_list, methods=["GET"]),
        Route("/api/v1/images", images_register, methods=["POST"]),
        Route("/api/v1/images/{image_id}", images_delete, methods=["DELETE"]),
    ]
