"""Shared plumbing of the API handlers: auth, read-your-writes, committing commands."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from cloudd.commands import REGISTRY
from cloudd.errors import CloudError
from cloudd.logging_setup import command_id
from cloudd.runtime import NodeRuntime
from cloudd.web.auth import LoginLimiter, Principal, authenticate
from cloudd.validate import check_args
from cloudd.web.http import json_response, min_index, request_id
from starlette.responses import Response


class Api:
    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.login_limiter = LoginLimiter()
        self.password_checks = asyncio.Semaphore(2)

    async def principal(self, request: Request) -> Principal:
        """Who calls. With ``min_index``, wait for it first: a token created through another
        node must be known here before it is checked."""
        await self.fresh(request)
        return await authenticate(request, self.runtime)

    async def fresh(self, request: Request) -> None:
        """Wait for ``min_index`` (query or header) before reading the local replica."""
        index = min_index(request)
        if index is not None:
            await self.runtime.proposer.wait_applied(index)

    async def commit(self, request: Request, principal: Principal | None, op: str, args: dict[str, Any]) -> tuple[Any, int]:
        """Propose a command on behalf of the caller; raise its error; return (result, index)."""
        check_args(args, REGISTRY[op].args)  # bad input never costs a log entry
        actor = principal.actor(request) if principal else ({"addr": request.client.host} if request.client else {})
        # the HTTP request's id names the command (and its event, and the agents' log lines)
        command = request_id(request) or command_id(request.state)
        return await self.runtime.proposer.submit_ok(op, args, request_id=command, actor=actor)


MAX_OFFSET = 1 << 40


def page_bounds(request: Request) -> tuple[int, int]:
    """``limit`` (1..1000, default 100) and ``offset`` (default 0) of a list request."""
    try:
        limit = int(request.query_params.get("limit", "100"))
        offset = int(request.query_params.get("offset", "0"))
    except ValueError:
        raise CloudError("invalid", "limit and offset must be integers") from None
    if not 1 <= limit <= 1000 or not 0 <= offset <= MAX_OFFSET:
        raise CloudError("invalid", f"limit must be 1..1000 and offset 0..{MAX_OFFSET}")
    return limit, offset


def page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """``limit``/``offset`` pagination of an already filtered list."""
    limit, offset = page_bounds(request)
    return {"items": items[offset : offset + limit], "total": len(items), "limit": limit, "offset": offset}


def accepted(result: dict[str, Any], index: int, view: dict[str, Any] | None = None) -> Response:
    """202 for a long operation: the body carries its ``task``; ``Location`` points at it."""
    body = dict(view if view is not None else result)
    task = result.get("task")
    headers = {}
    if task is not None:
        body["task"] = task
        headers["Location"] = f"/api/v1/tasks/{task['id']}"
    return json_response(body, status=202, index=index, headers=headers)


def find_owned(records: dict[str, dict[str, Any]], principal: Principal, ref: str, kind: str) -> dict[str, Any]:
    """A record by id or by name among the ones the caller may see (admins: all; users:
    their own), as a copy; 404 when there is none, 409 when a name is not unique.
    Call under the replica's lock."""
    record = records.get(ref)
    if record is not None and (principal.is_admin or record["owner"] == principal.name):
        return dict(record)
    named = [r for r in records.values() if r["name"] == ref and (principal.is_admin or r["owner"] == principal.name)]
    if len(named) > 1:
        raise CloudError("conflict", f"several {kind}s are named {ref}: use the id", {"ids": sorted(r["id"] for r in named)})
    if not named:
        raise CloudError("not_found", f"{kind} {ref} not found")
    return dict(named[0])
