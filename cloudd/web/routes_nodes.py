"""/api/v1/nodes: the nodes, their status, inventory and maintenance flag."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.commands.nodes import STATUSES
from cloudd.errors import CloudError
from cloudd.validate import Field
from cloudd.web.api import Api, page
from cloudd.web.auth import require_admin
from cloudd.web.http import guarded, json_response, read_json


def node_view(node: dict[str, Any], leader_addr: str | None) -> dict[str, Any]:
    view = dict(node)
    view["leader"] = node["raft_addr"] is not None and node["raft_addr"] == leader_addr
    return view


def routes(api: Api) -> list[Route]:
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
        body = await read_json(request, {"enabled": Field("bool")})
        result, index = await api.commit(
            request, principal, "node.maintenance_set", {"name": request.path_params["name"], "enabled": body["enabled"]}
        )
        return json_response(result, index=index)

    return [
        Route("/api/v1/nodes", nodes_list, methods=["GET"]),
        Route("/api/v1/nodes/{name}", nodes_show, methods=["GET"]),
        Route("/api/v1/nodes/{name}/maintenance", nodes_maintenance, methods=["POST"]),
    ]
