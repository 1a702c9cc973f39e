"""/api/v1/pools (quotas) and /api/v1/tasks (progress of long operations).

Admins manage pools and put users in them (``PATCH /api/v1/users/{name}``); a user sees
the pool they are in, with its usage, and nothing of other pools. Tasks are visible to
the owner of their VM and to admins.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.pools import DESCRIPTION, LIMIT_KEYS, LIMITS, NETWORKS, POOL_NAME, members, pool_usage
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.model.tasks import FINAL
from cloudd.web.api import Api, page
from cloudd.web.auth import Principal, require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import ApiRoute, Doc, Param

POOL_CREATE = {"name": POOL_NAME, "limits": LIMITS, "networks": NETWORKS, "description": DESCRIPTION}
POOL_UPDATE = {"limits": LIMITS, "networks": NETWORKS, "description": DESCRIPTION}
TASK_STATES = ("running", *FINAL)


def pool_view(state: State, pool: dict[str, Any], with_members: bool) -> dict[str, Any]:
    """A pool with its usage now and the limits that usage exceeds (after a lowering)."""
    usage = pool_usage(state, pool["name"]).to_dict()
    view = dict(pool)
    view["usage"] = usage
    view["over"] = [k for k in LIMIT_KEYS if pool["limits"].get(k) is not None and usage[k] > pool["limits"][k]]
    if with_members:
        view["members"] = members(state, pool["name"])
    return view


def task_visible(task: dict[str, Any], principal: Principal) -> bool:
    return principal.is_admin or task["owner"] == principal.name


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    def my_pool(principal: Principal) -> str | None:
        user = runtime.raft.state.users.get(principal.name) if principal.kind == "user" else None
        return user.get("pool") if user else None

    @guarded
    async def pools_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            mine = my_pool(principal)
            items = [
                pool_view(state, p, principal.is_admin)
                for p in state.pools.values()
                if principal.is_admin or p["name"] == mine
            ]
        items.sort(key=lambda p: p["name"])
        return json_response(page(items, request))

    @guarded
    async def pools_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        name = request.path_params["name"]
        with runtime.raft.lock:
            state = runtime.raft.state
            pool = state.pools.get(name)
            visible = pool is not None and (principal.is_admin or my_pool(principal) == name)
            view = pool_view(state, pool, principal.is_admin) if pool is not None and visible else None
        if view is None:
            raise CloudError("not_found", f"pool {name} not found")
        return json_response(view)

    @guarded
    async def pools_create(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, POOL_CREATE)
        result, index = await api.commit(request, principal, "pool.create", body)
        return json_response(result, status=201, index=index)

    @guarded
    async def pools_update(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, POOL_UPDATE)
        result, index = await api.commit(request, principal, "pool.update", {"name": request.path_params["name"], **body})
        return json_response(result, index=index)

    @guarded
    async def pools_delete(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        result, index = await api.commit(request, principal, "pool.delete", {"name": request.path_params["name"]})
        return json_response(result, index=index)

    @guarded
    async def tasks_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        wanted = request.query_params.get("state")
        if wanted is not None and wanted not in TASK_STATES:
            raise CloudError("invalid", f"state must be one of: {', '.join(TASK_STATES)}")
        vm = request.query_params.get("vm")
        volume = request.query_params.get("volume")
        with runtime.raft.lock:
            items = [
                dict(t)
                for t in reversed(runtime.raft.state.tasks.values())
                if task_visible(t, principal) and (wanted is None or t["state"] == wanted) and (vm is None or t["vm"] == vm)
                and (volume is None or t.get("volume") == volume)
            ]
        return json_response(page(items, request))

    @guarded
    async def tasks_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        task_id = request.path_params["task_id"]
        with runtime.raft.lock:
            task = runtime.raft.state.tasks.get(task_id)
            view = dict(task) if task is not None and task_visible(task, principal) else None
        if view is None:
            raise CloudError("not_found", f"task {task_id} not found")
        return json_response(view)

    return [
        ApiRoute("/api/v1/pools", pools_list, "GET", Doc("List pools with their usage (a user: their own pool)", "user", "pools", response="Pool", paged=True)),
        ApiRoute("/api/v1/pools", pools_create, "POST", Doc(
            "Create a pool; a limit left out or null is unlimited", "admin", "pools", body=POOL_CREATE, response="Pool", status=201,
            description=f"Limits: {', '.join(LIMIT_KEYS)}. `networks` locks members to those networks (empty: any).",
        )),
        ApiRoute("/api/v1/pools/{name}", pools_show, "GET", Doc("One pool with its usage (members: admins only); a user sees only their own", "owner", "pools", response="Pool")),
        ApiRoute("/api/v1/pools/{name}", pools_update, "PATCH", Doc("Change limits (only those given; null lifts one), networks, description", "admin", "pools", body=POOL_UPDATE, response="Pool")),
        ApiRoute("/api/v1/pools/{name}", pools_delete, "DELETE", Doc("Delete a pool without members", "admin", "pools", response="Named")),
        ApiRoute("/api/v1/tasks", tasks_list, "GET", Doc(
            "Tasks of long operations, newest first (a user: tasks of their VMs)", "user", "tasks", response="Task", paged=True,
            query={"state": Param("running, succeeded, failed or superseded", {"type": "string", "enum": list(TASK_STATES)}), "vm": Param("a VM id"), "volume": Param("a volume id")},
        )),
        ApiRoute("/api/v1/tasks/{task_id}", tasks_show, "GET", Doc("One task: state, progress 0-100, message", "owner", "tasks", response="Task")),
    ]
