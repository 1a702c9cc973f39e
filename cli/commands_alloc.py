"""cloudctl vm explain-placement, vm migrate, vm migrate-cancel (admin): where VMs run."""

from __future__ import annotations

import click

from cli.client import q
from cli.output import emit
from cli.tasks import finish


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    vm = cli.commands["vm"]
    assert isinstance(vm, click.Group)

    @vm.command("explain-placement")
    @click.argument("vm_ref", metavar="VM")
    @pass_ctx
    def explain_placement(ctx: Ctx, vm_ref: str) -> None:
        """Where the allocator would place the VM now, and why (admin): every node's score
        and its parts, or why it is refused.  Example: cloudctl vm explain-placement web1"""

        def body() -> None:
            data = ctx.client().request("GET", f"/api/v1/vms/{q(vm_ref)}/placement")
            if ctx.output == "json":
                emit(data, "json")
                return
            click.echo(f"VM {data['name']} (now on {data['current_node'] or 'no node'}), policy {data['policy']}: best node {data['node'] or '(none)'}")
            rows = [{**c, "refused": ""} for c in data["candidates"]] + [{"node": r["node"], "refused": r["reason"]} for r in data["refused"]]
            emit(rows, "table", ["node", "total", "ram", "cpu", "disk", "refused"])

        run(body)

    @vm.command("migrate")
    @click.argument("vm_ref", metavar="VM")
    @click.option("--to", "node", default=None, help="The target node (default: where the allocator would place it).")
    @click.option("--live/--offline", "live", default=None, help="Live (a running VM on shared storage) or offline (shut down, disks copied). Default: live when possible.")
    @click.option("--force", is_flag=True, help="Offline: shut a running VM down to move it.")
    @click.option("--bandwidth", "bandwidth_mib_s", type=click.IntRange(1), default=None, help="Live: MiB/s at most.")
    @click.option("--max-downtime", "max_downtime_ms", type=click.IntRange(10, 60_000), default=None, help="Live: the longest pause, ms.")
    @click.option("--wait", is_flag=True, help="Follow the migration's task to its end with a progress bar; exit 1 if it fails.")
    @click.option("--timeout", type=float, default=1800.0, show_default=True, help="Seconds --wait waits.")
    @pass_ctx
    def vm_migrate(ctx: Ctx, vm_ref: str, node: str | None, live: bool | None, force: bool, bandwidth_mib_s: int | None, max_downtime_ms: int | None, wait: bool, timeout: float) -> None:
        """Move a VM to another node (admin).

        A live migration keeps a running VM running (its disks must be on shared storage:
        iSCSI volumes or the shared VM directory); an offline one shuts it down cleanly,
        copies its node-local disks with progress and starts it on the target. Before the
        switch-over, 'cloudctl vm migrate-cancel' leaves it where it was.

        \b
        Examples:
          cloudctl vm migrate web1 --to hv2 --wait
          cloudctl vm migrate db1 --offline --force --wait
          cloudctl vm migrate web1 --live --bandwidth 200 --max-downtime 100
        """
        body: dict[str, object] = {"force": force} if force else {}
        if node:
            body["node"] = node
        if live is not None:
            body["mode"] = "live" if live else "offline"
        if bandwidth_mib_s is not None:
            body["bandwidth_mib_s"] = bandwidth_mib_s
        if max_downtime_ms is not None:
            body["max_downtime_ms"] = max_downtime_ms

        def go() -> None:
            client = ctx.client()
            result = client.request("POST", f"/api/v1/vms/{q(vm_ref)}/migrate", body)
            emit(finish(client, result, wait, timeout, "vms"), ctx.output)

        run(go)

    @vm.command("migrate-cancel")
    @click.argument("vm_ref", metavar="VM")
    @pass_ctx
    def vm_migrate_cancel(ctx: Ctx, vm_ref: str) -> None:
        """Cancel a VM's migration before its switch-over (admin): an offline one rolls back
        at once, a live one is aborted and the VM keeps running where it was.
        Example: cloudctl vm migrate-cancel web1"""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/vms/{q(vm_ref)}/migration"), ctx.output))
