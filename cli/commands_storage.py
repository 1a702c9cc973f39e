"""cloudctl storage-pool … (admins) and cloudctl volume …"""

from __future__ import annotations

from typing import Any

import click

from cli.client import Client, q
from cli.output import emit
from cli.tasks import finish as finish_with

POOL_COLUMNS = ["name", "node", "backend", "config", "capacity", "error"]
VOLUME_COLUMNS = ["id", "name", "state", "size_gb", "pool", "attached_to", "target", "owner"]


def finish(client: Client, result: dict[str, Any], wait: bool, timeout: float) -> dict[str, Any]:
    return finish_with(client, result, wait, timeout, "volumes")


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    wait_option = click.option("--wait", is_flag=True, help="Follow the operation's task to its end with a progress bar; exit 1 if it fails.")
    timeout_option = click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits.")

    @cli.group("storage-pool")
    def storage_pool() -> None:
        """Storage pools on storage nodes (admin): where volumes live.

        \b
        Examples:
          cloudctl storage-pool create local1 --node node1 --backend file --path /var/lib/cloudd/volumes
          cloudctl storage-pool create vg1 --node store1 --backend lvm --vg cloudd --thin-pool thin
          cloudctl storage-pool create mirror --node store1 --backend drbd --vg cloudd --peer store2
          cloudctl storage-pool list
        """

    @storage_pool.command("list")
    @pass_ctx
    def pool_list(ctx: Ctx) -> None:
        """List storage pools with their reported capacity."""
        run(lambda: emit(ctx.client().request("GET", "/api/v1/storage-pools", params={"limit": 1000})["items"], ctx.output, POOL_COLUMNS))

    @storage_pool.command("create")
    @click.argument("name")
    @click.option("--node", required=True, help="The storage node that holds it.")
    @click.option("--backend", type=click.Choice(["file", "lvm", "drbd"]), default="file", show_default=True)
    @click.option("--path", default=None, help="file: the directory of the volume files.")
    @click.option("--vg", default=None, help="lvm, drbd: the volume group.")
    @click.option("--thin-pool", default=None, help="lvm, drbd: a thin pool in the VG (copy-on-write from images).")
    @click.option("--peer", default=None, help="drbd: the second storage node.")
    @pass_ctx
    def pool_create(ctx: Ctx, name: str, node: str, backend: str, path: str | None, vg: str | None, thin_pool: str | None, peer: str | None) -> None:
        """Create a storage pool."""
        config = {k: v for k, v in (("path", path), ("vg", vg), ("thin_pool", thin_pool), ("peer", peer)) if v is not None}
        body = {"name": name, "node": node, "backend": backend, "config": config}
        run(lambda: emit(ctx.client().request("POST", "/api/v1/storage-pools", body), ctx.output))

    @storage_pool.command("delete")
    @click.argument("name")
    @pass_ctx
    def pool_delete(ctx: Ctx, name: str) -> None:
        """Forget a storage pool that holds no volumes (its files stay on the node)."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/storage-pools/{q(name)}"), ctx.output))

    @cli.group()
    def volume() -> None:
        """Volumes: network disks (iSCSI) that outlive VMs and move with them.

        \b
        Examples:
          cloudctl volume create data1 --size 20 --wait
          cloudctl volume attach data1 web1 --wait
          cloudctl volume detach data1
          cloudctl volume resize data1 --size 40
          cloudctl volume delete data1 --yes
        """

    @volume.command("list")
    @click.option("--all", "everyone", is_flag=True, help="Every user's volumes (admin).")
    @click.option("--state", default=None)
    @pass_ctx
    def volume_list(ctx: Ctx, everyone: bool, state: str | None) -> None:
        """List your volumes."""
        params: dict[str, Any] = {"limit": 1000, "all": "true" if everyone else "false"}
        if state:
            params["state"] = state
        run(lambda: emit(ctx.client().request("GET", "/api/v1/volumes", params=params)["items"], ctx.output, VOLUME_COLUMNS))

    @volume.command("show")
    @click.argument("ref", metavar="VOLUME")
    @pass_ctx
    def volume_show(ctx: Ctx, ref: str) -> None:
        """One volume (by name or id): state, size, attachment, export, usage."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/volumes/{q(ref)}"), ctx.output))

    @volume.command("create")
    @click.argument("name")
    @click.option("--size", "size_gb", type=float, required=True, help="GB")
    @click.option("--pool", default=None, help="A storage pool (default: the one with most room).")
    @click.option("--image", default=None, help="Start from this OS image (name or id).")
    @wait_option
    @timeout_option
    @pass_ctx
    def volume_create(ctx: Ctx, name: str, size_gb: float, pool: str | None, image: str | None, wait: bool, timeout: float) -> None:
        """Create a volume, blank or from an image."""
        body: dict[str, Any] = {"name": name, "size_gb": size_gb}
        if pool:
            body["pool"] = pool
        if image:
            body["image"] = image

        def go() -> None:
            client = ctx.client()
            emit(finish(client, client.request("POST", "/api/v1/volumes", body), wait, timeout), ctx.output)

        run(go)

    def simple(name: str, method: str, path: str, doc: str, body: Any, *params: Any) -> None:
        @volume.command(name, help=doc)
        @click.argument("ref", metavar="VOLUME")
        @wait_option
        @timeout_option
        @pass_ctx
        def command(ctx: Ctx, ref: str, wait: bool, timeout: float, **kwargs: Any) -> None:
            if name == "delete" and not kwargs.pop("yes"):
                click.confirm(f"delete volume {ref} and its data?", abort=True)

            def go() -> None:
                client = ctx.client()
                emit(finish(client, client.request(method, f"/api/v1/volumes/{q(ref)}{path}", body(**kwargs)), wait, timeout), ctx.output)

            run(go)

        for param in reversed(params):
            command = param(command)

    simple("delete", "DELETE", "", "Delete a volume and its data (refused while attached).", lambda: None, click.option("--yes", is_flag=True, help="Do not ask."))
    simple("attach", "POST", "/attach", "Attach to one of your VMs (hot-plugged when it runs).  Example: cloudctl volume attach data1 web1",
           lambda vm: {"vm": vm}, click.argument("vm"))
    simple("detach", "POST", "/detach", "Detach from its VM.", lambda: {})
    simple("resize", "POST", "/resize", "Offline resize (its VM stopped): grow, or shrink with --force.",
           lambda size_gb, force: {"size_gb": size_gb, **({"force": True} if force else {})},
           click.option("--size", "size_gb", type=float, required=True, help="GB"), click.option("--force", is_flag=True, help="Allow shrinking (data past the end is lost)."))
