"""cloudctl cluster … and cloudctl node …"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import orjson

from cli.client import q
from cli.output import emit

NODE_COLUMNS = ["name", "status", "membership", "leader", "roles", "api_addr", "maintenance", "last_heartbeat"]
MEMBER_COLUMNS = ["name", "membership", "status", "leader", "connected", "raft_addr", "api_addr"]


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    @cli.group()
    def cluster() -> None:
        """The cluster: members, leader, Raft term and indexes, join tokens.

        \b
        Examples:
          cloudctl cluster status
          cloudctl cluster join-token --ttl 600
          cloudctl cluster backup /srv/backups/cloudd.json
        """

    @cluster.command("status")
    @pass_ctx
    def cluster_status(ctx: Ctx) -> None:
        """Members, leader, term, commit index and quorum."""

        def body() -> None:
            data = ctx.client().request("GET", "/api/v1/cluster")
            if ctx.output == "json":
                emit(data, "json")
                return
            leader = data["leader"]["name"] if data["leader"] else "(none)"
            emit(
                {
                    "cluster": f"{data['cluster'].get('name')} ({data['cluster'].get('id')})",
                    "leader": leader,
                    "term": data["term"],
                    "commit_index": data["commit_index"],
                    "has_quorum": data["has_quorum"],
                    "answered_by": data["this_node"],
                },
                "table",
            )
            click.echo()
            emit(data["members"], "table", MEMBER_COLUMNS)
            for key, alert in sorted((data["cluster"].get("alerts") or {}).items()):
                click.echo(f"\nALERT {key}: {alert['message']}")

        run(body)

    @cluster.command("settings")
    @click.option("--policy", type=click.Choice(["resource", "usage", "trend"]), default=None, help="How the allocator scores nodes.")
    @click.option("--cpu-ratio", type=float, default=None, help="vCPUs per physical core.")
    @click.option("--ram-reserve", "ram_reserve_mb", type=int, default=None, help="MiB of each hypervisor's RAM kept for the host.")
    @click.option("--disk-reserve", "disk_reserve_gb", type=float, default=None, help="GB of each hypervisor's disk kept free.")
    @click.option("--shared-vm-storage/--local-vm-storage", default=None, help="The VM directory is shared (e.g. NFS): HA VMs may be restarted elsewhere, VMs migrate live.")
    @click.option("--rebalance-auto/--no-rebalance-auto", default=None, help="The leader plans and applies rebalancing itself.")
    @click.option("--rebalance-interval", "rebalance_interval_s", type=float, default=None, help="Seconds between automatic plans.")
    @click.option("--rebalance-max-moves", type=int, default=None, help="Moves per plan at most.")
    @click.option("--migrations-per-node", type=int, default=None, help="Migrations at once per node (as source or target).")
    @click.option("--migrations-per-cluster", type=int, default=None, help="Migrations at once in the cluster.")
    @click.option("--migration-bandwidth", "migration_bandwidth_mib_s", type=int, default=None, help="Live migrations: MiB/s at most (0: unlimited).")
    @click.option("--migration-max-downtime", "migration_max_downtime_ms", type=int, default=None, help="Live migrations: the longest pause, ms.")
    @pass_ctx
    def cluster_settings(ctx: Ctx, **options: Any) -> None:
        """Show or change the allocation and migration settings (admin).

        \b
        Examples:
          cloudctl cluster settings
          cloudctl cluster settings --policy trend --cpu-ratio 8
          cloudctl cluster settings --shared-vm-storage
          cloudctl cluster settings --migrations-per-node 1 --migration-bandwidth 500
          cloudctl cluster settings --rebalance-auto --rebalance-interval 900
        """
        body = {k: v for k, v in options.items() if v is not None}
        run(lambda: emit(ctx.client().request("PATCH" if body else "GET", "/api/v1/cluster/settings", body if body else None), ctx.output))

    @cluster.command("rebalance")
    @click.option("--dry-run/--apply", "dry_run", default=True, help="Only show the plan (default), or carry it out.")
    @click.option("--max-moves", type=int, default=None, help="At most this many moves (default: the cluster's setting).")
    @pass_ctx
    def cluster_rebalance(ctx: Ctx, dry_run: bool, max_moves: int | None) -> None:
        """Plan moves that even out the hypervisors (admin); --apply carries them out as
        migrations.  Example: cloudctl cluster rebalance --dry-run --max-moves 5"""
        body: dict[str, Any] = {"apply": not dry_run}
        if max_moves is not None:
            body["max_moves"] = max_moves

        def go() -> None:
            data = ctx.client().request("POST", "/api/v1/cluster/rebalance", body)
            if ctx.output == "json":
                emit(data, "json")
                return
            emit(data["moves"], "table", ["name", "vm", "from", "to", "gain"]) if data["moves"] else click.echo("nothing to move: the cluster is as even as it gets")
            click.echo(f"score {data['score_before']:.4f} -> {data['score_after']:.4f} (sum of per-node spreads; lower is more even)")
            if data.get("plan"):
                click.echo(f"plan {data['plan']} handed to the leader: follow it with 'cloudctl cluster rebalance-status'")

        run(go)

    @cluster.command("rebalance-status")
    @pass_ctx
    def cluster_rebalance_status(ctx: Ctx) -> None:
        """The last rebalance plan being carried out, move by move (admin)."""

        def go() -> None:
            data = ctx.client().request("GET", "/api/v1/cluster/rebalance")
            if ctx.output == "json" or data["plan"] is None:
                emit(data, "json") if ctx.output == "json" else click.echo("no rebalance plan yet")
                return
            plan = data["plan"]
            click.echo(f"plan {plan['id']} ({'automatic' if plan.get('auto') else 'by ' + str(plan.get('by'))}): {'finished' if plan['finished'] else 'running'}")
            emit(plan["moves"], "table", ["vm", "from", "to", "status", "task", "message"])

        run(go)

    @cluster.command("capacity")
    @click.option("--flavor", default=None, help="How many more VMs of this flavor fit.")
    @pass_ctx
    def cluster_capacity(ctx: Ctx, flavor: str | None) -> None:
        """Capacity per node, how many more VMs of a flavor fit, and whether the cluster
        survives the loss of any one node (N+1).  Example: cloudctl cluster capacity --flavor small"""

        def body() -> None:
            data = ctx.client().request("GET", "/api/v1/cluster/capacity", params={"flavor": flavor} if flavor else None)
            if ctx.output == "json":
                emit(data, "json")
                return
            rows = [
                {
                    "node": n["node"], "usable": "yes" if n["usable"] else n["reason"], "vms": n["vms"],
                    "vcpus": f"{n['vcpus']['allocated']}/{n['vcpus']['capacity']:g}", "ram_mb": f"{n['ram_mb']['allocated']}/{n['ram_mb']['capacity']:g}",
                    "disk_gb": f"{n['disk_gb']['allocated']:g}/{n['disk_gb']['capacity']:g}",
                    **({"fits": data["flavor"]["per_node"].get(n["node"], 0)} if "flavor" in data else {}),
                }
                for n in data["nodes"]
            ]
            emit(rows, "table")
            if "flavor" in data:
                click.echo(f"\n{data['flavor']['fits']} more VMs of flavor {data['flavor']['name']} fit")
            n1 = data["n_plus_one"]
            click.echo("N+1: every VM finds room if any one node is lost" if n1["ok"] else
                       "N+1 NOT met: " + "; ".join(f"losing {node} strands {', '.join(vms)}" for node, vms in sorted(n1["at_risk"].items())))

        run(body)

    @cluster.command("backup")
    @click.argument("file", type=click.Path(dir_okay=False, writable=True))
    @pass_ctx
    def cluster_backup(ctx: Ctx, file: str) -> None:
        """Write a consistent backup of the cluster state to FILE (mode 0600; admin).

        It holds password and token hashes: keep it as private as the cluster itself.
        Restore it with 'cloudd restore FILE …' when quorum is lost for good.

        \b
        Example:
          cloudctl cluster backup /srv/backups/cloudd-$(date +%F).json
        """

        def body() -> None:
            doc = ctx.client().request("GET", "/api/v1/cluster/backup")
            path = Path(file)
            tmp = path.with_name(path.name + ".part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps(doc))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            state = doc["state"]
            click.echo(f"backup of cluster {state['cluster']['id']} at index {doc['applied_index']}: {len(state['users'])} users, {len(state['vms'])} VMs, {len(state['nodes'])} nodes -> {path}")

        run(body)

    @cluster.command("join-token")
    @click.option("--ttl", type=int, default=3600, show_default=True, help="Seconds the token stays valid.")
    @pass_ctx
    def cluster_join_token(ctx: Ctx, ttl: int) -> None:
        """Create a one-time token for 'cloudd join' on a new node."""

        def body() -> None:
            data = ctx.client().request("POST", "/api/v1/cluster/join-tokens", {"ttl_seconds": ttl})
            emit(data if ctx.output == "json" else {"token": data["token"], "expires_at": data["expires_at"]}, ctx.output)

        run(body)

    @cli.group()
    def node() -> None:
        """Nodes: list, show, maintenance, remove.

        \b
        Examples:
          cloudctl node list --status up
          cloudctl node maintenance node2 --on
          cloudctl node remove node4
        """

    @node.command("list")
    @click.option("--status", type=click.Choice(["up", "suspect", "down", "maintenance"]))
    @click.option("--role", type=click.Choice(["hypervisor", "storage"]))
    @pass_ctx
    def node_list(ctx: Ctx, status: str | None, role: str | None) -> None:
        """List the nodes with their status (derived by the leader from lease age)."""

        def body() -> None:
            params: dict[str, Any] = {"limit": 1000}
            if status:
                params["status"] = status
            if role:
                params["role"] = role
            data = ctx.client().request("GET", "/api/v1/nodes", params=params)
            emit(data["items"], ctx.output, NODE_COLUMNS)

        run(body)

    @node.command("show")
    @click.argument("name")
    @pass_ctx
    def node_show(ctx: Ctx, name: str) -> None:
        """Everything known about one node."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/nodes/{q(name)}"), ctx.output))

    @node.command("maintenance")
    @click.argument("name")
    @click.option("--on/--off", "enabled", required=True, help="Enter or leave maintenance.")
    @click.option(
        "--drain", type=click.Choice(["live", "all", "none"]), default=None,
        help="With --on: move its VMs away: live (default: stopped VMs and those that can migrate live), all (also shut down, move and restart the others), none.",
    )
    @pass_ctx
    def node_maintenance(ctx: Ctx, name: str, enabled: bool, drain: str | None) -> None:
        """Put a node into maintenance (--on: no new VMs, its VMs drained away) or take it
        out (--off: the drain stops).

        \b
        Examples:
          cloudctl node maintenance hv2 --on
          cloudctl node maintenance hv2 --on --drain all
          cloudctl vm list --all --node hv2     # what is still there
          cloudctl node maintenance hv2 --off
        """
        if drain is not None and not enabled:
            raise click.UsageError("--drain goes with --on")
        body: dict[str, Any] = {"enabled": enabled, **({"drain": drain} if drain else {})}
        run(lambda: emit(ctx.client().request("POST", f"/api/v1/nodes/{q(name)}/maintenance", body), ctx.output))

    @node.command("remove")
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @pass_ctx
    def node_remove(ctx: Ctx, name: str, yes: bool) -> None:
        """Remove a node (e.g. a dead one) from the cluster; leadership moves first if needed."""
        if not yes:
            click.confirm(f"remove node {name} from the cluster?", abort=True)
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/cluster/nodes/{q(name)}"), ctx.output))
