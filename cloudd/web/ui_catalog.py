"""The admin pages of the catalog: flavors (named VM sizes) and images (files registered
on every hypervisor by path, and the uploaded ones users made). Each reads and acts
through the admin API, so a user who finds these URLs gets the API's 403; the API's
refusals (a duplicate name, an image VMs use) are shown next to their field or row."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from cloudd.errors import CloudError
from cloudd.web.ui import Session, Ui, guarded_page, page
from cloudd.web.ui_admin import notice_of, notice_url
from cloudd.web.ui_api import api_path
from cloudd.web.ui_forms import SEGMENT_RE, Form, errors_from, parse_number, segment
from cloudd.web.ui_user import all_items

FLAVOR_FIELDS = ("name", "vcpus", "ram_mb", "disk_gb")
IMAGE_FIELDS = ("name", "format", "path", "size_gb", "os", "min_disk_gb", "min_ram_mb", "public")
# a page of the catalog again: (request, session, status, errors, values)
Rerender = Callable[..., Awaitable[Response]]
# what an admin registers by path ("kernel": a directory with vmlinuz and initrd.img)
IMAGE_FORMATS = ("qcow2", "raw", "iso", "kernel")


def flavor_body(form: Form, errors: dict[str, str]) -> dict[str, Any]:
    """The API body of the new-flavor form; numbers that do not parse go to ``errors``."""
    return {
        "name": form.text("name", 64),
        "vcpus": parse_number(form, "vcpus", errors, integer=True),
        "ram_mb": parse_number(form, "ram_mb", errors, integer=True),
        "disk_gb": parse_number(form, "disk_gb", errors),
    }


def image_body(form: Form, errors: dict[str, str]) -> dict[str, Any]:
    """The API body of the register-image form: a file at ``path`` on every hypervisor,
    its format and virtual size; os and minimums only when given."""
    body: dict[str, Any] = {
        "name": form.text("name", 128),
        "format": form.get("format"),
        "path": form.text("path", 4096),
        "size_gb": parse_number(form, "size_gb", errors),
        "public": form.get("public") == "true",
    }
    if form.text("os", 64):
        body["os"] = form.text("os", 64)
    for key, integer in (("min_disk_gb", False), ("min_ram_mb", True)):
        value = parse_number(form, key, errors, integer=integer, required=False)
        if value is not None:
            body[key] = value
    return body


def notice_name(image: dict[str, Any]) -> str:
    """What a notice calls an image: its name when a notice may show it, else its id."""
    name, image_id = str(image["name"]), str(image["id"])
    return name if SEGMENT_RE.fullmatch(name) else image_id


def routes(ui: Ui) -> list[BaseRoute]:
    # --- flavors ---

    async def flavors_page(request: Request, session: Session, status: int = 200, errors: dict[str, str] | None = None,
                           values: dict[str, str] | None = None) -> Response:
        flavors = all_items(await ui.get(request, session, "flavors", limit=1000))
        return page(request, session, "admin_flavors.html", status=status, flavors=flavors, errors=errors or {},
                    values=values or {}, notice=notice_of(request))

    async def flavors(request: Request, session: Session, form: Form | None) -> Response:
        """The flavors, smallest first, and the form for a new one."""
        return await flavors_page(request, session)

    async def create(request: Request, session: Session, form: Form, rerender: Rerender, collection: str, body: dict[str, Any],
                     errors: dict[str, str], fields: tuple[str, ...], prefixes: dict[str, str], done: Callable[[Any], str]) -> Response:
        """POST ``body`` to the API's ``collection`` and redirect to ``done(answer data)``; the
        form's own ``errors`` or the API's refusal re-render the page with nothing changed."""
        if errors:
            return await rerender(request, session, 400, errors, form.values())
        try:
            answer = await ui.send(request, session, "POST", api_path(collection), body, form)
        except CloudError as exc:
            return await rerender(request, session, exc.status, errors_from(exc, fields, prefixes=prefixes), form.values())
        return RedirectResponse(done(answer.data), status_code=303)

    async def delete(request: Request, session: Session, form: Form, rerender: Rerender, path: str, row: str, done: str) -> Response:
        """DELETE the API's ``path`` and redirect to ``done``; a refusal (but a 404, the error
        page) shows on the row ``row``."""
        try:
            await ui.send(request, session, "DELETE", path, None, form)
        except CloudError as exc:
            if exc.status == 404:
                raise
            return await rerender(request, session, exc.status, {row: exc.message})
        return RedirectResponse(done, status_code=303)

    async def flavor_create(request: Request, session: Session, form: Form | None) -> Response:
        """A new flavor, or the form again with the problem next to its field."""
        assert form is not None
        errors: dict[str, str] = {}
        body = flavor_body(form, errors)
        return await create(request, session, form, flavors_page, "flavors", body, errors, FLAVOR_FIELDS, {"flavor": "name"},
                            lambda _: notice_url("/ui/admin/flavors", "flavor-created", body["name"]))

    async def flavor_delete(request: Request, session: Session, form: Form | None) -> Response:
        """Delete a flavor (VMs made from it keep their sizes); the API's refusal on its row."""
        assert form is not None
        name = segment(request.path_params["name"])
        return await delete(request, session, form, flavors_page, api_path("flavors", name), f"flavor:{name}",
                            notice_url("/ui/admin/flavors", "flavor-deleted", name))

    # --- images ---

    async def images_page(request: Request, session: Session, status: int = 200, errors: dict[str, str] | None = None,
                          values: dict[str, str] | None = None) -> Response:
        images = all_items(await ui.get(request, session, "images", limit=1000))
        return page(request, session, "admin_images.html", status=status, images=images, formats=IMAGE_FORMATS, errors=errors or {},
                    values=values or {}, notice=notice_of(request))

    async def images(request: Request, session: Session, form: Form | None) -> Response:
        """Every image (public, and each user's own), and the form to register one."""
        return await images_page(request, session)

    async def image_register(request: Request, session: Session, form: Form | None) -> Response:
        """Register a file present on every hypervisor, or the form again with the problem next to its field."""
        assert form is not None
        errors: dict[str, str] = {}
        body = image_body(form, errors)
        return await create(request, session, form, images_page, "images", body, errors, IMAGE_FIELDS, {"an image named": "name"},
                            lambda data: notice_url("/ui/admin/images", "image-registered", notice_name(data)))

    async def image_delete(request: Request, session: Session, form: Form | None) -> Response:
        """Delete an image by id; refused by the API while a VM uses it (shown on its row)."""
        assert form is not None
        image = await ui.get(request, session, "images", segment(request.path_params["id"]))
        return await delete(request, session, form, images_page, api_path("images", image["id"]), f"image:{image['id']}",
                            notice_url("/ui/admin/images", "image-deleted", notice_name(image)))

    def r(path: str, handler: Any, write: bool = False) -> Route:
        return Route(path, guarded_page(ui, handler, admin=True, write=write), methods=["POST" if write else "GET"])

    return [
        r("/ui/admin/flavors", flavors),
        r("/ui/admin/flavors", flavor_create, write=True),
        r("/ui/admin/flavors/{name}/delete", flavor_delete, write=True),
        r("/ui/admin/images", images),
        r("/ui/admin/images", image_register, write=True),
        r("/ui/admin/images/{id}/delete", image_delete, write=True),
    ]
