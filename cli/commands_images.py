"""cloudctl image …"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, Iterator

import click
import httpx

from cli.client import ApiError, Client, q
from cli.output import emit

IMAGE_COLUMNS = ["id", "name", "default", "format", "state", "size_gb", "os", "public", "owner"]
UPLOAD_BLOCK = 1 << 20
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0)  # the node checks the whole file before it answers


def upload_file(client: Client, image_id: str, path: str, label: str) -> Any:
    """Stream ``path`` to the node that created the image (it has applied the creation),
    with a progress bar on stderr; returns the ready image."""
    size = os.path.getsize(path)
    endpoint = client.used_endpoint or client.endpoints[0]
    headers = {
        "Authorization": f"Bearer {client.token}",
        "Accept": "application/json",
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
        "X-Request-Id": secrets.token_urlsafe(12),
    }
    if client.min_index is not None:
        headers["X-Cloudd-Min-Index"] = str(client.min_index)
    with open(path, "rb") as f, click.progressbar(length=size, label=label, file=sys.stderr) as bar:

        def chunks() -> Iterator[bytes]:
            while data := f.read(UPLOAD_BLOCK):
                bar.update(len(data))
                yield data

        try:
            reply = httpx.put(f"{endpoint}/api/v1/images/{q(image_id)}/file", content=chunks(), headers=headers, timeout=UPLOAD_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ApiError(0, "unreachable", f"the upload to {endpoint} failed: {exc.__class__.__name__}") from None
    return client._decode(reply)


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    @cli.group()
    def image() -> None:
        """Images: OS disk templates and ISOs.

        \b
        Examples:
          cloudctl image upload debian-12 ./debian-12.qcow2 --format qcow2 --public
          cloudctl image upload installer ./netinst.iso --format iso
          cloudctl image set-default debian-12
        """

    @image.command("list")
    @pass_ctx
    def image_list(ctx: Ctx) -> None:
        """List the images you can use."""
        run(lambda: emit(ctx.client().request("GET", "/api/v1/images", params={"limit": 1000})["items"], ctx.output, IMAGE_COLUMNS))

    @image.command("show")
    @click.argument("image_ref")
    @pass_ctx
    def image_show(ctx: Ctx, image_ref: str) -> None:
        """Show one image (by id or name): state, size, SHA-256, the nodes holding copies."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/images/{q(image_ref)}"), ctx.output))

    @image.command("upload")
    @click.argument("name")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
    @click.option("--format", "fmt", type=click.Choice(["qcow2", "raw", "iso"]), required=True)
    @click.option("--public", is_flag=True, help="Everyone can use it (admins only).")
    @click.option("--os", "os_name", default=None)
    @click.option("--min-ram", "min_ram_mb", type=int, default=None, help="MiB")
    @pass_ctx
    def image_upload(ctx: Ctx, name: str, file: str, fmt: str, public: bool, os_name: str | None, min_ram_mb: int | None) -> None:
        """Upload an image file (e.g. a distribution's cloud image, or an ISO).

        \b
        Examples:
          cloudctl image upload debian-12 debian-12-generic-amd64.qcow2 --format qcow2
          cloudctl image upload installer debian-12.iso --format iso

        The node checks the file before the image becomes ready; a refused file (a qcow2
        with a backing file, a wrong format) leaves no image behind.
        """

        def body() -> None:
            client = ctx.client()
            args: dict[str, Any] = {"name": name, "format": fmt, "upload": True, "public": public}
            if os_name:
                args["os"] = os_name
            if min_ram_mb is not None:
                args["min_ram_mb"] = min_ram_mb
            created = client.request("POST", "/api/v1/images", args)
            try:
                ready = upload_file(client, created["id"], file, f"uploading {name}")
            except ApiError:
                try:
                    client.request("DELETE", f"/api/v1/images/{q(created['id'])}")
                except ApiError as exc:
                    click.echo(f"warning: could not delete the image {created['id']}: {exc.message}", err=True)
                raise
            emit(ready, ctx.output)

        run(body)

    @image.command("register")
    @click.argument("name")
    @click.option("--path", required=True, help="Absolute path of the image file on every hypervisor.")
    @click.option("--format", "fmt", type=click.Choice(["qcow2", "raw", "iso", "kernel"]), default="qcow2", show_default=True, help="kernel: --path is a directory with vmlinuz and initrd.img, booted directly.")
    @click.option("--size", "size_gb", type=float, required=True, help="Virtual size in GB.")
    @click.option("--os", "os_name", default=None)
    @click.option("--min-ram", "min_ram_mb", type=int, default=None, help="MiB")
    @click.option("--private", is_flag=True, help="Only you (and admins) can use it.")
    @pass_ctx
    def image_register(ctx: Ctx, name: str, path: str, fmt: str, size_gb: float, os_name: str | None, min_ram_mb: int | None, private: bool) -> None:
        """Register an image file present on every hypervisor (admin)."""
        body: dict[str, Any] = {"name": name, "path": path, "format": fmt, "size_gb": size_gb, "public": not private}
        if os_name:
            body["os"] = os_name
        if min_ram_mb is not None:
            body["min_ram_mb"] = min_ram_mb
        run(lambda: emit(ctx.client().request("POST", "/api/v1/images", body), ctx.output))

    @image.command("set-default")
    @click.argument("image_ref", metavar="IMAGE")
    @click.option("--unset", is_flag=True, help="Make no image the default (VMs created without one get a blank disk).")
    @pass_ctx
    def image_set_default(ctx: Ctx, image_ref: str, unset: bool) -> None:
        """Make a public OS image the one VMs get when they name none (admin)."""
        method = "DELETE" if unset else "POST"
        run(lambda: emit(ctx.client().request(method, f"/api/v1/images/{q(image_ref)}/default"), ctx.output))

    @image.command("delete")
    @click.argument("image_ref")
    @pass_ctx
    def image_delete(ctx: Ctx, image_ref: str) -> None:
        """Delete an image (by id or name; refused while VMs use it)."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/images/{q(image_ref)}"), ctx.output))
