"""cloudctl image …"""

from __future__ import annotations

from typing import Any

import click

from cli.client import q
from cli.output import emit

IMAGE_COLUMNS = ["id", "name", "format", "size_gb", "os", "public", "owner"]


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    @cli.group()
    def image() -> None:
        """Images: OS disk templates."""

    @image.command("list")
    @pass_ctx
    def image_list(ctx: Ctx) -> None:
        """List the images you can use."""
        run(lambda: emit(ctx.client().request("GET", "/api/v1/images", params={"limit": 1000})["items"], ctx.output, IMAGE_COLUMNS))

    @image.command("register")
    @click.argument("name")
    @click.option("--path", required=True, help="Absolute path of the image file on every hypervisor.")
    @click.option("--format", "fmt", type=click.Choice(["qcow2", "raw", "kernel"]), default="qcow2", show_default=True, help="kernel: --path is a directory with vmlinuz and initrd.img, booted directly.")
    @click.option("--size", "size_gb", type=float, required=True, help="Virtual size in GB.")
    @click.option("--os", "os_name", default=None)
    @click.option("--min-ram", "min_ram_mb", type=int, default=None, help="MiB")
    @click.option("--private", is_flag=True, help="Only you (and admins) can use it.")
    @pass_ctx
    def image_register(ctx: Ctx, name: str, path: str, fmt: str, size_gb: float, os_name: str | None, min_ram_mb: int | None, private: bool) -> None:
        """Register an image file (admin)."""
        body: dict[str, Any] = {"name": name, "path": path, "format": fmt, "size_gb": size_gb, "public": not private}
        if os_name:
            body["os"] = os_name
        if min_ram_mb is not None:
            body["min_ram_mb"] = min_ram_mb
        run(lambda: emit(ctx.client().request("POST", "/api/v1/images", body), ctx.output))

    @image.command("delete")
    @click.argument("image_id")
    @pass_ctx
    def image_delete(ctx: Ctx, image_id: str) -> None:
        """Unregister an image (refused while VMs use it)."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/images/{q(image_id)}"), ctx.output))
