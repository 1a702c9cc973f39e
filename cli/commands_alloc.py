"""cloudctl vm explain-placement (admin): the allocator's view of one VM."""

from __future__ import annotations

import click

from cli.client import q
from cli.output import emit


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
