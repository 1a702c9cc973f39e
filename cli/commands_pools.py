"""cloudctl pool … (quotas) and cloudctl task … (long operations)."""

from __future__ import annotations

from typing import Any

import click

from cli.client import q
from cli.output import emit
from cli.tasks import wait_for_task

POOL_COLUMNS = ["name", "limits", "usage", "over", "networks", "members"]
TASK_COLUMNS = ["id", "op", "vm_name", "volume_name", "state", "progress", "message", "created_at"]
LIMIT_OPTIONS = (("vcpus", "vcpus", int, ""), ("ram", "ram_mb", int, "MiB"), ("disk", "disk_gb", float, "GB"), ("vms", "vms", int, ""), ("public-ips", "public_ips", int, ""))


def limit_options(fn: Any) -> Any:
    for flag, key, kind, unit in reversed(LIMIT_OPTIONS):
        fn = click.option(f"--{flag}", key, type=kind, default=None, help=f"Most {key} the pool's members may hold together{f' ({unit})' if unit else ''}.")(fn)
    return fn


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    @cli.group()
    def pool() -> None:
        """Resource pools: quotas an admin gives a user or a group of users.

        \b
        Examples:
          cloudctl pool create team-a --vcpus 16 --ram 32768 --disk 500 --vms 10 --network lan-a
          cloudctl user update alice --pool team-a
          cloudctl pool show team-a
          cloudctl pool update team-a --vms 20 --unlimited disk
        """

    @pool.command("list")
    @pass_ctx
    def pool_list(ctx: Ctx) -> None:
        """List pools with usage (users: their own pool)."""
        run(lambda: emit(ctx.client().request("GET", "/api/v1/pools", params={"limit": 1000})["items"], ctx.output, POOL_COLUMNS))

    @pool.command("show")
    @click.argument("name")
    @pass_ctx
    def pool_show(ctx: Ctx, name: str) -> None:
        """A pool's limits, usage and members."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/pools/{q(name)}"), ctx.output))

    @pool.command("create")
    @click.argument("name")
    @limit_options
    @click.option("--network", "networks", multiple=True, help="Lock members to this network (repeatable; none: any).")
    @click.option("--description", default=None)
    @pass_ctx
    def pool_create(ctx: Ctx, name: str, networks: tuple[str, ...], description: str | None, **limits: Any) -> None:
        """Create a pool (admin); a limit not given is unlimited."""
        body: dict[str, Any] = {"name": name, "limits": {k: v for k, v in limits.items() if v is not None}, "networks": list(networks)}
        if description is not None:
            body["description"] = description
        run(lambda: emit(ctx.client().request("POST", "/api/v1/pools", body), ctx.output))

    @pool.command("update")
    @click.argument("name")
    @limit_options
    @click.option("--unlimited", multiple=True, type=click.Choice([key for _, key, _, _ in LIMIT_OPTIONS] + [flag for flag, _, _, _ in LIMIT_OPTIONS]), help="Lift this limit (repeatable).")
    @click.option("--network", "networks", multiple=True, help="Replace the network lock with these networks (repeatable).")
    @click.option("--any-network", is_flag=True, help="Remove the network lock.")
    @click.option("--description", default=None)
    @pass_ctx
    def pool_update(ctx: Ctx, name: str, unlimited: tuple[str, ...], networks: tuple[str, ...], any_network: bool, description: str | None, **limits: Any) -> None:
        """Change a pool's limits, network lock or description (admin)."""
        flag_to_key = {flag: key for flag, key, _, _ in LIMIT_OPTIONS}
        body: dict[str, Any] = {"limits": {k: v for k, v in limits.items() if v is not None}}
        for item in unlimited:
            body["limits"][flag_to_key.get(item, item)] = None
        if networks and any_network:
            raise click.UsageError("give --network or --any-network, not both")
        if networks or any_network:
            body["networks"] = list(networks)
        if description is not None:
            body["description"] = description
        run(lambda: emit(ctx.client().request("PATCH", f"/api/v1/pools/{q(name)}", body), ctx.output))

    @pool.command("delete")
    @click.argument("name")
    @pass_ctx
    def pool_delete(ctx: Ctx, name: str) -> None:
        """Delete a pool that has no members (admin)."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/pools/{q(name)}"), ctx.output))

    @cli.group()
    def task() -> None:
        """Tasks: progress and outcome of long operations (VM create, power, delete, devices).

        \b
        Examples:
          cloudctl task list --state running
          cloudctl task wait t1234
        """

    @task.command("list")
    @click.option("--state", type=click.Choice(["running", "succeeded", "failed", "superseded"]), default=None)
    @click.option("--vm", "vm_id", default=None, help="Only this VM's tasks (its id).")
    @click.option("--limit", type=int, default=50, show_default=True)
    @pass_ctx
    def task_list(ctx: Ctx, state: str | None, vm_id: str | None, limit: int) -> None:
        """List tasks, newest first (yours; admins see everyone's)."""
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if vm_id:
            params["vm"] = vm_id
        run(lambda: emit(ctx.client().request("GET", "/api/v1/tasks", params=params)["items"], ctx.output, TASK_COLUMNS))

    @task.command("show")
    @click.argument("task_id")
    @pass_ctx
    def task_show(ctx: Ctx, task_id: str) -> None:
        """One task."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/tasks/{q(task_id)}"), ctx.output))

    @task.command("wait")
    @click.argument("task_id")
    @click.option("--timeout", type=float, default=300.0, show_default=True)
    @pass_ctx
    def task_wait(ctx: Ctx, task_id: str, timeout: float) -> None:
        """Follow a task to its end with a progress bar; exit 1 if it fails."""

        def go() -> None:
            client = ctx.client()
            emit(wait_for_task(client, client.request("GET", f"/api/v1/tasks/{q(task_id)}"), timeout), ctx.output)

        run(go)
