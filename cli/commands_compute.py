"""cloudctl flavor …, image …, vm …"""

from __future__ import annotations

from typing import IO, Any, Callable

import click

from cli.client import Client, q
from cli.output import emit
from cli.tasks import finish as finish_with

FLAVOR_COLUMNS = ["name", "vcpus", "ram_mb", "disk_gb"]
VM_COLUMNS = ["id", "name", "state", "node", "ips", "vcpus", "ram_mb", "disk_gb", "owner"]


def vm_row(vm: dict[str, Any]) -> dict[str, Any]:
    return {**vm, "ips": ",".join(ip for nic in vm.get("nics", ()) for ip in nic["ips"])}


def finish(client: Client, result: dict[str, Any], wait: bool, timeout: float) -> dict[str, Any]:
    return finish_with(client, result, wait, timeout, "vms")


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    wait_option = click.option("--wait", is_flag=True, help="Follow the operation's task to its end with a progress bar; exit 1 if it fails.")
    timeout_option = click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits.")

    @cli.group()
    def flavor() -> None:
        """Flavors: named VM sizes.

        \b
        Examples:
          cloudctl flavor create small --vcpus 1 --ram 512 --disk 5
          cloudctl flavor list
        """

    @flavor.command("list")
    @pass_ctx
    def flavor_list(ctx: Ctx) -> None:
        """List flavors."""
        run(lambda: emit(ctx.client().request("GET", "/api/v1/flavors", params={"limit": 1000})["items"], ctx.output, FLAVOR_COLUMNS))

    @flavor.command("create")
    @click.argument("name")
    @click.option("--vcpus", type=int, required=True)
    @click.option("--ram", "ram_mb", type=int, required=True, help="MiB")
    @click.option("--disk", "disk_gb", type=float, required=True, help="GB")
    @pass_ctx
    def flavor_create(ctx: Ctx, name: str, vcpus: int, ram_mb: int, disk_gb: float) -> None:
        """Create a flavor (admin).  Example: cloudctl flavor create small --vcpus 1 --ram 512 --disk 5"""
        body = {"name": name, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb}
        run(lambda: emit(ctx.client().request("POST", "/api/v1/flavors", body), ctx.output))

    @flavor.command("delete")
    @click.argument("name")
    @pass_ctx
    def flavor_delete(ctx: Ctx, name: str) -> None:
        """Delete a flavor (admin); VMs keep their sizes."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/flavors/{q(name)}"), ctx.output))

    @cli.group()
    def vm() -> None:
        """Virtual machines: create, list, show, start, stop, shutdown, reset, reboot, delete,
        resize, attach-iso, detach-iso, disk-add, disk-remove, history.

        \b
        Examples:
          cloudctl vm create web1 --flavor small --image tiny --wait
          cloudctl vm shutdown web1 --wait
          cloudctl vm list -o json
        """

    @vm.command("list")
    @click.option("--all", "everyone", is_flag=True, help="Every user's VMs (admin).")
    @click.option("--state", default=None)
    @click.option("--node", default=None)
    @pass_ctx
    def vm_list(ctx: Ctx, everyone: bool, state: str | None, node: str | None) -> None:
        """List your VMs."""
        params: dict[str, Any] = {"limit": 1000, "all": "true" if everyone else "false"}
        if state:
            params["state"] = state
        if node:
            params["node"] = node
        run(lambda: emit([vm_row(v) for v in ctx.client().request("GET", "/api/v1/vms", params=params)["items"]], ctx.output, VM_COLUMNS))

    @vm.command("show")
    @click.argument("vm")
    @pass_ctx
    def vm_show(ctx: Ctx, vm: str) -> None:
        """Everything about one VM (by name or id)."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/vms/{q(vm)}"), ctx.output))

    @vm.command("create")
    @click.argument("name")
    @click.option("--flavor", default=None)
    @click.option("--vcpus", type=int, default=None)
    @click.option("--ram", "ram_mb", type=int, default=None, help="MiB")
    @click.option("--disk", "disk_gb", type=float, default=None, help="GB")
    @click.option("--image", default=None, help="Image name or id.")
    @click.option("--ssh-key", "ssh_keys", multiple=True, help="An SSH public key (repeatable).")
    @click.option("--user-data", type=click.File("r"), default=None, help="A cloud-init user-data file (#cloud-config, a script, …).")
    @click.option("--swap", "swap_mb", type=int, default=None, help="A swap disk of this many MiB on the node's local storage.")
    @click.option("--iso", default=None, help="An ISO image (name or id) to insert as the CD-ROM (booted when the disk is blank).")
    @click.option("--ha/--no-ha", default=False, help="Restart it elsewhere when its node dies.")
    @click.option("--stopped", is_flag=True, help="Create it without starting it.")
    @click.option("--network", "networks", multiple=True, help="NETWORK or NETWORK=IP: a NIC on that network (repeatable, in order).")
    @click.option("--group", default=None, help="Anti-affinity group: never on a node with another VM of the group.")
    @click.option("--pin", "pinned", multiple=True, help="Only on this node (repeatable: one of these nodes).")
    @wait_option
    @timeout_option
    @pass_ctx
    def vm_create(
        ctx: Ctx, name: str, flavor: str | None, vcpus: int | None, ram_mb: int | None, disk_gb: float | None, image: str | None, ssh_keys: tuple[str, ...],
        user_data: IO[str] | None, swap_mb: int | None, iso: str | None, ha: bool, stopped: bool, networks: tuple[str, ...], group: str | None,
        pinned: tuple[str, ...], wait: bool, timeout: float,
    ) -> None:
        """Create a VM from a flavor (or explicit sizes) and an image.

        \b
        Examples:
          cloudctl vm create web1 --flavor small --image tiny-disk --ssh-key "$(cat ~/.ssh/id_ed25519.pub)" --wait
          cloudctl vm create db1 --vcpus 2 --ram 2048 --disk 20 --image debian-12 --swap 1024 --user-data init.yaml
          cloudctl vm create gw1 --flavor small --network public --network lan=10.10.0.5
        """
        body: dict[str, Any] = {"name": name, "ha": ha, "power": "stopped" if stopped else "running"}
        for key, value in (("flavor", flavor), ("vcpus", vcpus), ("ram_mb", ram_mb), ("disk_gb", disk_gb), ("image", image), ("swap_mb", swap_mb), ("iso", iso)):
            if value is not None:
                body[key] = value
        if ssh_keys:
            body["ssh_keys"] = list(ssh_keys)
        if user_data is not None:
            body["user_data"] = user_data.read()
        if group:
            body["group"] = group
        if pinned:
            body["nodes"] = list(pinned)
        if networks:
            from cli.commands_networks import parse_nic

            body["networks"] = [parse_nic(n) for n in networks]

        def go() -> None:
            client = ctx.client()
            created = client.request("POST", "/api/v1/vms", body)
            emit(finish(client, created, wait, timeout), ctx.output)

        run(go)

    def action_command(action: str, doc: str) -> None:
        @vm.command(action, help=doc)
        @click.argument("vm_ref", metavar="VM")
        @wait_option
        @timeout_option
        @pass_ctx
        def command(ctx: Ctx, vm_ref: str, wait: bool, timeout: float) -> None:
            def go() -> None:
                client = ctx.client()
                result = client.request("POST", f"/api/v1/vms/{q(vm_ref)}/{action}")
                emit(finish(client, result, wait, timeout), ctx.output)

            run(go)

    action_command("start", "Start a VM.  Example: cloudctl vm start web1 --wait")
    action_command("shutdown", "Shut a VM down cleanly (ACPI), forced after a timeout.  Example: cloudctl vm shutdown web1 --wait")
    action_command("stop", "Force a VM off at once (like pulling the plug).")
    action_command("reset", "Hard-reset a running VM (the reset button).")
    action_command("reboot", "Ask a running VM's guest to reboot (ACPI).")

    def device_command(name: str, method: str, path: str, doc: str, body: Callable[..., dict[str, Any] | None], *params: Callable[[Any], Any]) -> None:
        @vm.command(name, help=doc)
        @click.argument("vm_ref", metavar="VM")
        @wait_option
        @timeout_option
        @pass_ctx
        def command(ctx: Ctx, vm_ref: str, wait: bool, timeout: float, **kwargs: Any) -> None:
            url = f"/api/v1/vms/{q(vm_ref)}/" + path.format(**{k: q(str(v)) for k, v in kwargs.items()})

            def go() -> None:
                client = ctx.client()
                emit(finish(client, client.request(method, url, body(**kwargs)), wait, timeout), ctx.output)

            run(go)

        for param in reversed(params):
            command = param(command)

    device_command(
        "attach-iso", "POST", "iso", "Insert an ISO image (name or id) as the VM's CD-ROM; hot-plugged when it runs.",
        lambda image: {"image": image}, click.argument("image"),
    )
    device_command("detach-iso", "DELETE", "iso", "Eject the VM's ISO.", lambda: None)
    device_command(
        "disk-add", "POST", "disks", "Add a blank extra disk; hot-plugged when the VM runs.  Example: cloudctl vm disk-add web1 --size 10",
        lambda size: {"size_gb": size}, click.option("--size", type=float, required=True, help="GB"),
    )
    device_command(
        "disk-remove", "DELETE", "disks/{disk_id}", "Unplug an extra disk and delete it with its data (see 'vm show' for ids).",
        lambda disk_id: None, click.argument("disk_id"),
    )

    @vm.command("resize")
    @click.argument("vm_ref", metavar="VM")
    @click.option("--flavor", default=None, help="Take the flavor's sizes.")
    @click.option("--vcpus", type=int, default=None)
    @click.option("--ram", "ram_mb", type=int, default=None, help="MiB")
    @click.option("--disk", "disk_gb", type=float, default=None, help="GB (the OS disk only grows)")
    @wait_option
    @timeout_option
    @pass_ctx
    def vm_resize(ctx: Ctx, vm_ref: str, flavor: str | None, vcpus: int | None, ram_mb: int | None, disk_gb: float | None, wait: bool, timeout: float) -> None:
        """Resize a stopped VM (within your pool); the new size applies at its next start.

        \b
        Examples:
          cloudctl vm resize web1 --flavor medium
          cloudctl vm resize web1 --ram 4096 --disk 40
        """
        body = {k: v for k, v in (("flavor", flavor), ("vcpus", vcpus), ("ram_mb", ram_mb), ("disk_gb", disk_gb)) if v is not None}

        def go() -> None:
            client = ctx.client()
            emit(finish(client, client.request("POST", f"/api/v1/vms/{q(vm_ref)}/resize", body), wait, timeout), ctx.output)

        run(go)

    @vm.command("history")
    @click.argument("vm_ref", metavar="VM")
    @click.option("--limit", type=int, default=50, show_default=True)
    @pass_ctx
    def vm_history(ctx: Ctx, vm_ref: str, limit: int) -> None:
        """What was asked of a VM, newest first, and how each request ended."""
        from cli.commands_users import EVENT_COLUMNS

        def go() -> None:
            client = ctx.client()
            vm_id = client.request("GET", f"/api/v1/vms/{q(vm_ref)}")["id"]
            emit(client.request("GET", "/api/v1/events", params={"target": vm_id, "limit": limit})["items"], ctx.output, EVENT_COLUMNS)

        run(go)

    @vm.command("console")
    @click.argument("vm_ref", metavar="VM")
    @pass_ctx
    def vm_console(ctx: Ctx, vm_ref: str) -> None:
        """Where to see a running VM's screen: the web console page (log in to the web UI),
        and a one-time websocket URL for any VNC-over-websocket client such as noVNC (valid
        30 s, once, on the node that answered; the VNC password stays in cloudd).

        \b
        Example:
          cloudctl vm console web1
        """

        def go() -> None:
            client = ctx.client()
            vm_id = client.request("GET", f"/api/v1/vms/{q(vm_ref)}")["id"]
            grant = client.request("POST", f"/api/v1/vms/{q(vm_id)}/console")
            emit({"page": f"{client.used_endpoint}/ui/vms/{vm_id}/console", **grant}, ctx.output)

        run(go)

    @vm.command("delete")
    @click.argument("vm_ref", metavar="VM")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @wait_option
    @timeout_option
    @pass_ctx
    def vm_delete(ctx: Ctx, vm_ref: str, yes: bool, wait: bool, timeout: float) -> None:
        """Delete a VM and its local disks."""
        if not yes:
            click.confirm(f"delete VM {vm_ref} and its disks?", abort=True)

        def go() -> None:
            client = ctx.client()
            result = client.request("DELETE", f"/api/v1/vms/{q(vm_ref)}")
            emit(finish(client, result, wait, timeout), ctx.output)

        run(go)
