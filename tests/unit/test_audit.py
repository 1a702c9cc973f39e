"""Writes refused before they reach the Raft log still leave a line on the refusing node."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.web.audit import RefusedWriteAudit
from cloudd.web.auth import Principal


async def refuse(request: Request) -> Response:
    if request.headers.get("x-who"):
        request.state.principal = Principal("user", request.headers["x-who"], "user")
    return Response('{"error": {}}', status_code=int(request.query_params["status"]), headers={"X-Cloudd-Index": "7"} if "committed" in request.query_params else {})


def send(method: str, url: str, **kw: object) -> None:
    app = Starlette(routes=[Route("/api/v1/x", refuse, methods=["GET", "POST", "DELETE"])], middleware=[Middleware(RefusedWriteAudit)])

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("192.0.2.7", 5555)), base_url="http://t") as client:
            await client.request(method, url, **kw)  # type: ignore[arg-type]

    asyncio.run(go())


def test_refused_writes_are_logged_with_who_from_where_and_the_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudd.audit")
    send("POST", "/api/v1/x?status=403", headers={"x-who": "bob", "Authorization": "Bearer cdt.secret.value"}, json={"password": "hunter22"})
    send("DELETE", "/api/v1/x?status=401")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "method=POST path=/api/v1/x status=403 actor=user:bob addr=192.0.2.7" in lines[0]
    assert "actor=anonymous" in lines[1] and "status=401" in lines[1]
    assert not any("hunter22" in line or "secret" in line for line in lines)


def test_reads_successes_and_committed_outcomes_are_not_logged_here(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudd.audit")
    send("GET", "/api/v1/x?status=404")
    send("POST", "/api/v1/x?status=200")
    send("POST", "/api/v1/x?status=409&committed=1")  # its event is in the replicated log
    assert caplog.records == []
