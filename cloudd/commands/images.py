"""Images: OS disk templates and ISOs that VMs boot from.

Two kinds. An image *registered by path* (admins only) names a file that exists on every
hypervisor: it is ``ready`` at once and has no ``copies``. An *uploaded* image (any user,
qcow2, raw or iso) is created ``uploading``; the node that received and checked the file
records it ``ready`` with ``copies: [that node]``, and every node that later fetches a
verified copy adds itself to ``copies``.

Image states: ``uploading`` (waiting for its file) → ``ready`` (usable) or ``error`` (the
file was refused; ``error`` says why). Deleting is allowed in every state, but refused
while a VM's disk or CD-ROM uses the image.
"""

from __future__ import annotations

from typing import Any

from cloudd.commands.common import (
    NODE_NAME,
    OBJECT_ID,
    SHA256_HEX,
    USER_NAME,
    get_node,
    require_initialized,
)
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import Field

MAX_IMAGES_PER_USER = 50
MAX_IMAGE_GB = 64 << 10

IMAGE_NAME = Field("str", max_len=128, check=lambda v: None if v.strip() and v.isprintable() else "must be printable and not blank")
SIZE_GB = Field("num", min=0, max=MAX_IMAGE_GB)
MIN_DISK_GB = Field("num", min=0, max=MAX_IMAGE_GB, required=False)
MIN_RAM_MB = Field("int", min=0, max=4 << 20, required=False)
OS_NAME = Field("str", max_len=64, required=False)
ABSOLUTE_PATH = Field("str", max_len=4096, check=lambda v: None if v.startswith("/") and "\x00" not in v else "must be an absolute path")


def get_image(state: State, image_id: str) -> dict[str, Any]:
    image = state.images.get(image_id)
    if image is None:
        raise CloudError("not_found", f"image {image_id} not found")
    return image


def _check_new(state: State, args: dict[str, Any]) -> None:
    require_initialized(state)
    if args["id"] in state.images:
        raise CloudError("conflict", f"image {args['id']} already exists")
    if any(i["name"] == args["name"] and i["owner"] == args["owner"] for i in state.images.values()):
        raise CloudError("conflict", f"an image named {args['name']} already exists")


@command(
    "image.register",
    {
        "id": OBJECT_ID,
        "name": IMAGE_NAME,
        "owner": USER_NAME,
        "public": Field("bool"),
        # "kernel": path is a directory with vmlinuz and initrd.img, booted directly
        "format": Field("str", choices=("qcow2", "raw", "kernel", "iso")),
        "path": ABSOLUTE_PATH,
        "size_gb": SIZE_GB,
        "min_disk_gb": MIN_DISK_GB,
        "min_ram_mb": MIN_RAM_MB,
        "os": OS_NAME,
    },
    target="id",
)
def image_register(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Record an image file that exists on every hypervisor at ``path`` (ready at once)."""
    _check_new(state, args)
    image = {"min_disk_gb": 0, "min_ram_mb": 0, "os": None, **args, "state": "ready", "error": None, "created_at": ctx.ts}
    state.images[args["id"]] = image
    return dict(image)


@command(
    "image.create",
    {
        "id": OBJECT_ID,
        "name": IMAGE_NAME,
        "owner": USER_NAME,
        "public": Field("bool"),
        "format": Field("str", choices=("qcow2", "raw", "iso")),
        "min_disk_gb": MIN_DISK_GB,
        "min_ram_mb": MIN_RAM_MB,
        "os": OS_NAME,
    },
    target="id",
)
def image_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Accept an image whose file the owner uploads next (state ``uploading``)."""
    _check_new(state, args)
    owner = state.users.get(args["owner"])
    if owner is None:
        raise CloudError("not_found", f"user {args['owner']} not found")
    if owner["role"] != "admin":
        if args["public"]:
            raise CloudError("forbidden", "only admins create public images")
        if sum(1 for i in state.images.values() if i["owner"] == args["owner"]) >= MAX_IMAGES_PER_USER:
            raise CloudError("conflict", f"you have {MAX_IMAGES_PER_USER} images already (the most a user may have): delete some first")
    image = {
        "min_disk_gb": 0,
        "min_ram_mb": 0,
        "os": None,
        **args,
        "state": "uploading",
        "error": None,
        "size_gb": 0,
        "size_bytes": None,
        "sha256": None,
        "copies": [],
        "created_at": ctx.ts,
    }
    state.images[args["id"]] = image
    return dict(image)


def _uploading(image: dict[str, Any]) -> None:
    if image.get("state") != "uploading":
        raise CloudError("conflict", f"image {image['name']} is {image.get('state', 'ready')}, not uploading", {"state": image.get("state", "ready")})


@command(
    "image.upload_done",
    {
        "id": OBJECT_ID,
        "node": NODE_NAME,
        "size_bytes": Field("int", min=1, max=MAX_IMAGE_GB << 30),
        "virtual_size_gb": Field("num", min=0, max=MAX_IMAGE_GB, check=lambda v: None if v > 0 else "must be positive"),
        "sha256": SHA256_HEX,
    },
    target="id",
)
def image_upload_done(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """``node`` received and checked the image's file: it is ready, held by that node."""
    image = get_image(state, args["id"])
    get_node(state, args["node"])
    _uploading(image)
    image.update(
        state="ready",
        size_bytes=args["size_bytes"],
        size_gb=args["virtual_size_gb"],
        sha256=args["sha256"],
        copies=[args["node"]],
        ready_at=ctx.ts,
    )
    return dict(image)


@command("image.upload_failed", {"id": OBJECT_ID, "reason": Field("str", max_len=500)}, target="id")
def image_upload_failed(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """The uploaded file was refused: the image is in ``error`` with the reason."""
    image = get_image(state, args["id"])
    _uploading(image)
    image.update(state="error", error=args["reason"])
    return dict(image)


@command("image.copied", {"id": OBJECT_ID, "node": NODE_NAME}, target="id")
def image_copied(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """``node`` now holds a copy of an uploaded image whose SHA-256 it verified."""
    image = get_image(state, args["id"])
    get_node(state, args["node"])
    if "copies" not in image:
        raise CloudError("invalid", f"image {image['name']} is registered by path: it has no copies to track")
    if image["state"] != "ready":
        raise CloudError("conflict", f"image {image['name']} is {image['state']}, not ready", {"state": image["state"]})
    if args["node"] not in image["copies"]:
        image["copies"].append(args["node"])
    return {"id": image["id"], "copies": list(image["copies"])}


@command("image.delete", {"id": OBJECT_ID}, target="id")
def image_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Unregister an image; refused while a VM's disk or CD-ROM uses it. Nodes remove
    their copies of uploaded images afterwards (``ImageStore.prune``)."""
    get_image(state, args["id"])
    users = sorted(vm["name"] for vm in state.vms.values() if args["id"] in (vm.get("image"), vm.get("iso")))
    if users:
        raise CloudError("conflict", f"image {args['id']} is used by VMs: {', '.join(users[:5])}", {"vms": users})
    del state.images[args["id"]]
    if state.cluster.get("default_image") == args["id"]:
        state.cluster["default_image"] = None
    return {"id": args["id"]}


@command("image.default_set", {"id": Field("str", pattern=OBJECT_ID.pattern, nullable=True)}, target="id")
def image_default_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Make a public, ready OS image the one VMs get when their request names none
    (``None``: no default; such VMs get a blank disk)."""
    require_initialized(state)
    if args["id"] is not None:
        image = get_image(state, args["id"])
        if not image["public"] or image["format"] == "iso" or image.get("state", "ready") != "ready":
            raise CloudError("invalid", f"image {image['name']} cannot be the default: it must be a public, ready OS image")
    state.cluster["default_image"] = args["id"]
    return {"default_image": args["id"]}
