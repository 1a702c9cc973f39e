"""/api/v1/nodes: the nodes, their status, inventory and maintenance flag."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.cluster import ROLES
from cloudd.commands.nodes import STATUSES
from cloudd.errors import CloudError
from cloudd.moves import DRAIN_MODES
from cloudd.validate import Field
from cloudd.web.api import Api, page
from cloudd.web.auth import require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import ApiRoute, Doc, Param
from cloudd.web.schemas import BOOL, STR, obj

NODE_MAINTENANCE = {"enabled": Field("bool"), "drain": Field("str", choices=DRAIN_MODES, required=False)}


def node_view(node: dict[str, Any], leader_addr: str | None) -> dict[str, Any]:
    view = dict(node)
    view["leader"] = node["raft_addr"] is not None and node["raft_addr"] == leader_addr
    return view


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    @guarded
    async def nodes_list(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            raise CloudError("invalid", f"status must be one of: {', '.join(STATUSES)}")
        role = request.query_params.get("role")
        leader = runtime.raft.leader_addr
        with runtime.raft.lock:
            items = [
                node_view(n, leader)
                for n in runtime.raft.state.nodes.values()
                if (status is None or n["status"] == status) and (role is None or role in n["roles"])
            ]
        items.sort(key=lambda n: n["name"])
        return json_response(page(items, request))

    @guarded
    async def nodes_show(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        name = request.path_params["name"]
        with runtime.raft.lock:
            node = runtime.raft.state.nodes.get(name)
            view = None if node is None else node_view(node, runtime.raft.leader_addr)
        if view is None:
            raise CloudError("not_found", f"node {name} not found")
        return json_response(view)

    @guarded
    async def nodes_maintenance(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, NODE_MAINTENANCE)
        result, index = await api.commit(
            request, principal, "node.maintenance_set", {"name": request.path_params["name"], **body}
        )
        return json_response(result, index=index)

    return [
        ApiRoute("/api/v1/nodes", nodes_list, "GET", Doc(
            "Nodes with their roles, inventory, status and lease", "admin", "nodes", response="Node", paged=True,
            query={
                "status": Param("only nodes with this status", {"type": "string", "enum": list(STATUSES)}),
                "role": Param(f"only nodes with this role ({' or '.join(ROLES)})"),
            },
        )),
        ApiRoute("/api/v1/nodes/{name}", nodes_show, "GET", Doc("One node: roles, inventory, status, lease, usage", "admin", "nodes", response="Node")),
        ApiRoute("/api/v1/nodes/{name}/maintenance", nodes_maintenance, "POST", Doc(
            "Put a node into maintenance (no new VMs; its VMs drained away) or take it out", "admin", "nodes", body=NODE_MAINTENANCE,
            response=obj(["name", "maintenance"], name=STR, maintenance=BOOL, drain=STR),
            description="`drain` (with enabled=true): `live` (default) moves the stopped VMs and the running ones that can migrate live; "
            "`all` also shuts down, moves and restarts the others; `none` moves nothing. The leader moves them as migrations within the "
            "cluster's limits; a VM that finds no room stays and is tried again. Taking the node out of maintenance stops the drain.",
        )),
    ]
