"""Images: OS disk templates and ISOs that VMs boot from.

An image registered by path names a file that exists on every hypervisor (admins only).
"""

from __future__ import annotations

from typing import Any

from cloudd.commands.common import OBJECT_ID, USER_NAME, require_initialized
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import Field


@command(
    "image.register",
    {
        "id": OBJECT_ID,
        "name": Field("str", max_len=128),
        "owner": USER_NAME,
        "public": Field("bool"),
        # "kernel": path is a directory with vmlinuz and initrd.img, booted directly
        "format": Field("str", choices=("qcow2", "raw", "kernel")),
        "path": Field("str", max_len=4096, check=lambda v: None if v.startswith("/") and "\x00" not in v else "must be an absolute path"),
        "size_gb": Field("num", min=0, max=64 << 10),
        "min_disk_gb": Field("num", min=0, max=64 << 10, required=False),
        "min_ram_mb": Field("int", min=0, max=4 << 20, required=False),
        "os": Field("str", max_len=64, required=False),
    },
    target="id",
)
def image_register(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Record an OS disk template (the file must exist on every hypervisor at ``path``)."""
    require_initialized(state)
    if args["id"] in state.images:
        raise CloudError("conflict", f"image {args['id']} already exists")
    if any(i["name"] == args["name"] and i["owner"] == args["owner"] for i in state.images.values()):
        raise CloudError("conflict", f"an image named {args['name']} already exists")
    image = {"min_disk_gb": 0, "min_ram_mb": 0, "os": None, **args, "created_at": ctx.ts}
    state.images[args["id"]] = image
    return dict(image)


@command("image.delete", {"id": OBJECT_ID}, target="id")
def image_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Unregister an image; refused while a VM's disk is based on it."""
    if args["id"] not in state.images:
        raise CloudError("not_found", f"image {args['id']} not found")
    users = sorted(vm["name"] for vm in state.vms.values() if vm.get("image") == args["id"])
    if users:
        raise CloudError("conflict", f"image {args['id']} is used by VMs: {', '.join(users[:5])}", {"vms": users})
    del state.images[args["id"]]
    return {"id": args["id"]}
