"""/api/v1/images: public images and a user's own.

Admins register files that exist on every hypervisor (``path``); any user creates an
image with ``"upload": true`` and then PUTs its file to any node, which streams it to
disk, checks it and records itself as the first holder of a copy. Other nodes fetch
copies from the holders with node-signed GETs of ``/file``.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any, AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response, StreamingResponse

from cloudd.errors import CloudError
from cloudd.ops.compute import ComputeError
from cloudd.ops.image_store import NoSpace, ImageRefused, TransferBusy, UploadTooLarge
from cloudd.validate import Field
from cloudd.web.api import Api, page
from cloudd.web.auth import Principal, require_admin
from cloudd.web.http import guarded, is_number, json_response, read_json
from cloudd.web.openapi import FRESH, PATH_PARAM, ApiRoute, Doc, Param
from cloudd.web.schemas import NSTR, STR, obj

log = logging.getLogger(__name__)

IMAGE_CREATE = {
    "name": Field("str", max_len=128),
    "format": Field("str"),
    "upload": Field("bool", required=False),
    "path": Field("str", required=False),
    "size_gb": Field("num", required=False),
    "public": Field("bool", required=False),
    "min_disk_gb": Field("num", required=False),
    "min_ram_mb": Field("int", required=False),
    "os": Field("str", required=False),
}
IMAGE_REF = {"ref": Param("the image's id, or its name (yours first, else the one image you can see with it)", PATH_PARAM)}
DEFAULT_IMAGE = obj(["default_image"], default_image=NSTR)


def image_visible(image: dict[str, Any], principal: Principal) -> bool:
    return principal.is_admin or image["public"] or image["owner"] == principal.name


def image_by_ref(images: dict[str, dict[str, Any]], ref: str, user: str, is_admin: bool = False) -> dict[str, Any] | None:
    """The image ``ref`` names for ``user``: its id, else its name among ``user``'s own
    images, else among the ones ``user`` can see when only one has it (None otherwise)."""
    if ref in images:
        return images[ref]
    named = [i for i in images.values() if i["name"] == ref and (is_admin or i["public"] or i["owner"] == user)]
    own = [i for i in named if i["owner"] == user]
    return (own or named)[0] if len(own or named) == 1 else None


def may_change(image: dict[str, Any], principal: Principal) -> bool:
    return principal.is_admin or image["owner"] == principal.name


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    def find_image(principal: Principal, ref: str) -> dict[str, Any]:
        """An image by id, or by name (yours first, then a unique visible one)."""
        with runtime.raft.lock:
            image = image_by_ref(runtime.raft.state.images, ref, principal.name, principal.is_admin)
            default = runtime.raft.state.cluster.get("default_image")
            image = None if image is None or not image_visible(image, principal) else {**image, "default": image["id"] == default}
        if image is None:
            raise CloudError("not_found", f"image {ref} not found")
        return image

    @guarded
    async def images_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            default = runtime.raft.state.cluster.get("default_image")
            items = [{**i, "default": i["id"] == default} for i in runtime.raft.state.images.values() if image_visible(i, principal)]
        items.sort(key=lambda i: (i["name"], i["id"]))
        return json_response(page(items, request))

    @guarded
    async def images_create(request: Request) -> Response:
        principal = await api.principal(request)
        body = await read_json(request, IMAGE_CREATE)
        upload = body.pop("upload", False)
        if upload == ("path" in body):
            raise CloudError("invalid", 'give either "path" (a file on every hypervisor, admins) or "upload": true')
        if principal.kind != "user":
            raise CloudError("forbidden", "images belong to users")
        if upload:
            if "size_gb" in body:
                raise CloudError("invalid", "size_gb of an uploaded image comes from its file", {"field": "size_gb"})
            public = body.pop("public", False)
            if public:
                require_admin(principal)
            args = {"id": secrets.token_hex(8), "owner": principal.name, "public": public, **body}
            result, index = await api.commit(request, principal, "image.create", args)
        else:
            require_admin(principal)
            if "size_gb" not in body:
                raise CloudError("invalid", "size_gb is required", {"field": "size_gb"})
            args = {"id": secrets.token_hex(8), "owner": principal.name, "public": body.pop("public", True), **body}
            result, index = await api.commit(request, principal, "image.register", args)
        return json_response(result, status=201, index=index)

    @guarded
    async def images_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        return json_response(find_image(principal, request.path_params["ref"]))

    @guarded
    async def images_delete(request: Request) -> Response:
        principal = await api.principal(request)
        image = find_image(principal, request.path_params["ref"])
        if not may_change(image, principal):
            raise CloudError("forbidden", "only the owner or an admin can delete an image")
        result, index = await api.commit(request, principal, "image.delete", {"id": image["id"]})
        if "copies" in image:
            runtime.images.remove(image["id"])
        return json_response(result, index=index)

    @guarded
    async def images_default_set(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        image = find_image(principal, request.path_params["ref"])
        result, index = await api.commit(request, principal, "image.default_set", {"id": image["id"]})
        return json_response(result, index=index)

    @guarded
    async def images_default_unset(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        image = find_image(principal, request.path_params["ref"])
        with runtime.raft.lock:
            is_default = runtime.raft.state.cluster.get("default_image") == image["id"]
        if not is_default:
            raise CloudError("conflict", f"image {image['name']} is not the default")
        result, index = await api.commit(request, principal, "image.default_set", {"id": None})
        return json_response(result, index=index)

    async def record_failure(request: Request, principal: Principal, image_id: str, reason: str) -> None:
        try:
            await runtime.proposer.submit("image.upload_failed", {"id": image_id, "reason": reason[:500]}, actor=principal.actor(request))
        except CloudError as exc:
            log.warning("image %s: the refusal of its upload was not recorded: %s", image_id, exc.message)

    @guarded
    async def images_upload(request: Request) -> Response:
        """Stream the body to ``<data dir>/images/<id>.part``, check it, install it."""
        principal = await api.principal(request)
        await api.fresh(request)
        image = find_image(principal, request.path_params["ref"])
        if not may_change(image, principal):
            raise CloudError("forbidden", "only the owner or an admin can upload an image's file")
        if image.get("state") != "uploading":
            state = image.get("state", "ready")
            raise CloudError("conflict", f"image {image['name']} is {state}: it takes no upload", {"state": state})
        max_bytes = int(runtime.config.compute.image_upload_max_gb * (1 << 30))
        declared = request.headers.get("content-length")
        if declared is not None and is_number(declared) and int(declared) > max_bytes:
            raise CloudError("payload_too_large", f"the file is larger than this node accepts ({max_bytes} bytes)")
        store = runtime.images
        try:
            store.check_space(int(declared) if declared is not None and is_number(declared) else 0)
            received, facts = await store.accept_upload(image, request.stream(), max_bytes)
        except NoSpace as exc:
            raise CloudError("insufficient_storage", str(exc)) from None
        except TransferBusy as exc:
            if store.busy(image["id"]):
                raise CloudError("conflict", f"an upload of image {image['name']} is already running on this node") from None
            raise CloudError("unavailable", f"this node is busy with other uploads ({exc}); try again or another node") from None
        except UploadTooLarge:
            raise CloudError("payload_too_large", f"the file is larger than this node accepts ({max_bytes} bytes)") from None
        except ClientDisconnect:
            raise CloudError("invalid", "the upload was interrupted; the image still waits for its file") from None
        except ImageRefused as exc:
            reason = f"the file was refused: {exc}"
            await record_failure(request, principal, image["id"], reason)
            raise CloudError("invalid", reason) from None
        except (OSError, ComputeError) as exc:
            log.error("image %s: cannot store the upload: %s", image["id"], exc)
            raise CloudError("unavailable", "this node cannot store the file now; try again or another node") from None
        args = {
            "id": image["id"],
            "node": runtime.config.name,
            "size_bytes": received.size_bytes,
            "virtual_size_gb": facts.virtual_size_gb,
            "sha256": received.sha256,
        }
        try:
            result, index = await api.commit(request, principal, "image.upload_done", args)
        except CloudError as exc:
            if exc.code != "unavailable":  # refused for good (deleted meanwhile, uploaded elsewhere)
                store.remove(image["id"])
            raise
        return json_response(result, index=index)

    @guarded
    async def images_download(request: Request) -> Response:
        """The image's file: from this node's copy, else relayed from a node holding one
        (for users; a node asking gets 404 instead, so relays never chain)."""
        principal = await api.principal(request)
        await api.fresh(request)
        image = find_image(principal, request.path_params["ref"])
        if not may_change(image, principal):
            raise CloudError("forbidden", "only the owner or an admin can download an image")
        if "copies" not in image:
            raise CloudError("invalid", f"image {image['name']} is a file registered on the hypervisors: there is nothing to download")
        if image["state"] != "ready":
            raise CloudError("conflict", f"image {image['name']} is {image['state']}, not ready", {"state": image["state"]})
        headers = {"X-Cloudd-Sha256": image["sha256"]}
        path = runtime.images.file_path(image)
        if path.is_file():
            return FileResponse(path, media_type="application/octet-stream", filename=f"{image['id']}.{image['format']}", headers=headers)
        holders = [n for n in image["copies"] if n != runtime.config.name]
        if principal.kind == "node" or not holders:
            raise CloudError("not_found", f"node {runtime.config.name} holds no copy of image {image['name']}")
        problems = []
        for holder in holders:
            chunks = runtime.images.fetch(holder, image["id"])
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                first = b""
            except ComputeError as exc:
                problems.append(str(exc))
                continue
            return StreamingResponse(_relay(first, chunks), media_type="application/octet-stream", headers={**headers, "Content-Length": str(image["size_bytes"])})
        raise CloudError("unavailable", "no node holding the image answered: " + "; ".join(problems))

    return [
        ApiRoute("/api/v1/images", images_list, "GET", Doc("Public images and your own", "user", "images", response="Image", paged=True)),
        ApiRoute("/api/v1/images", images_create, "POST", Doc(
            "Create an image to upload (`upload: true`), or register a file on every hypervisor (`path`, admins)", "user", "images",
            body=IMAGE_CREATE, response="Image", status=201,
            description="Give exactly one of `upload: true` and `path`. An uploaded image (qcow2, raw or iso; only admins make public ones) "
            "starts `uploading`: PUT its file next. A registered one (admins; also format kernel) needs `size_gb` and is ready at once.",
        )),
        ApiRoute("/api/v1/images/{ref}", images_show, "GET", Doc(
            "One image you can see (another user's private image is a 404)", "user", "images", response="Image", path_params=IMAGE_REF,
        )),
        ApiRoute("/api/v1/images/{ref}", images_delete, "DELETE", Doc(
            "Delete an image; refused (409) while a VM's disk or CD-ROM uses it", "owner", "images", response=obj(["id"], id=STR), path_params=IMAGE_REF,
            description="Someone else's public image is a 403, not a 404: it is visible.",
        )),
        ApiRoute("/api/v1/images/{ref}/default", images_default_set, "POST", Doc(
            "Make a public, ready OS image the one VMs get when they name none", "admin", "images", response=DEFAULT_IMAGE, path_params=IMAGE_REF,
        )),
        ApiRoute("/api/v1/images/{ref}/default", images_default_unset, "DELETE", Doc(
            "Stop the image being the default (409 when it is not)", "admin", "images", response=DEFAULT_IMAGE, path_params=IMAGE_REF,
        )),
        ApiRoute("/api/v1/images/{ref}/file", images_upload, "PUT", Doc(
            "Upload the file of an `uploading` image: the node checks it and the image is ready", "owner", "images",
            raw_body="application/octet-stream", response="Image", query=FRESH, path_params=IMAGE_REF,
            description="Refused files are a 400 and leave the image in `error`; send `min_index` (the creation's index) when uploading "
            "to another node than the one that created the image. Someone else's public image is a 403.",
        )),
        ApiRoute("/api/v1/images/{ref}/file", images_download, "GET", Doc(
            "Download an uploaded image's file (relayed from a node holding a copy if this one has none)", "owner", "images",
            response={"type": "string", "format": "binary"}, media_type="application/octet-stream", path_params=IMAGE_REF,
            headers={"X-Cloudd-Sha256": Param("the file's SHA-256, hex")},
            description="Nodes fetch copies with node-signed requests. Someone else's public image is a 403.",
        )),
    ]

async def _relay(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
