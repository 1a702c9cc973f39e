"""JSON log lines, request ids from HTTP requests into commands, and the trail that
lets agents log under the request that changed their object."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudd.logging_setup import (
    RequestIdMiddleware,
    RequestTrail,
    command_id,
    current_request,
    request_scope,
    set_node,
    setup,
)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_json_lines_carry_the_request_id_and_escape_newlines(captured: io.StringIO) -> None:
    setup("json", "info", stream=captured)
    set_node("node2")
    log = logging.getLogger("cloudd.test")
    log.info("plain %s", "line")
    with request_scope("req-123", vm="vm-9"):
        log.warning("two\nlines")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log.debug("not shown at info")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["msg"] == "plain line" and first["level"] == "info" and first["logger"] == "cloudd.test" and first["node"] == "node2"
    assert "request_id" not in first and first["time"].endswith("Z")
    assert second["msg"] == "two\nlines" and second["request_id"] == "req-123" and second["vm"] == "vm-9"
    assert third["level"] == "error" and "ValueError: boom" in third["exc"]


def test_text_lines_name_the_request(captured: io.StringIO) -> None:
    setup("text", "debug", stream=captured)
    with request_scope("abc"):
        logging.getLogger("cloudd.x").debug("hello")
    assert captured.getvalue().rstrip().endswith("cloudd.x: hello [req=abc]")
    with pytest.raises(ValueError):
        setup("xml")


def test_request_scopes_nest_and_restore() -> None:
    with request_scope("outer"):
        with request_scope("inner"):
            assert current_request.get() == "inner"
        assert current_request.get() == "outer"
    assert current_request.get() is None


def test_the_trail_remembers_user_requests_per_object() -> None:
    trail = RequestTrail(size=2)
    created = orjson.dumps({"op": "vm.create", "v": 1, "id": "req-a", "ts": 1, "actor": {"user": "alice"}, "args": {"name": "web"}})
    trail.note_command(5, created, {"index": 5, "result": {"id": "vm-1", "name": "web"}})
    assert trail.of("vm-1") == "req-a"
    started = orjson.dumps({"op": "vm.start", "v": 1, "id": "req-b", "ts": 2, "actor": {"user": "alice"}, "args": {"id": "vm-1"}})
    trail.note_command(6, started, {"index": 6, "result": {}})
    assert trail.of("vm-1") == "req-b"
    report = orjson.dumps({"op": "vm.report", "v": 1, "id": "agent-x", "ts": 3, "actor": {"node": "n1"}, "args": {"id": "vm-1"}})
    trail.note_command(7, report, {"index": 7, "result": {}})  # the agent's own report: not a request
    refused = orjson.dumps({"op": "vm.stop", "v": 1, "id": "req-c", "ts": 4, "actor": {"user": "bob"}, "args": {"id": "vm-1"}})
    trail.note_command(8, refused, {"index": 8, "error": {"code": "forbidden"}})
    assert trail.of("vm-1") == "req-b"
    for n in range(3):
        trail.note(f"other-{n}", "r")
    assert trail.of("vm-1") is None and len(trail._ids) == 2  # bounded


def app_with(seen: list[tuple[str | None, str | None]]) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        seen.append((current_request.get(), command_id(request.state)))
        command_id(request.state)
        return JSONResponse({"second": command_id(request.state)})

    return Starlette(routes=[Route("/x", endpoint, methods=["POST"])], middleware=[])


def test_the_middleware_sets_and_echoes_the_request_id() -> None:
    seen: list[tuple[str | None, str | None]] = []
    app = app_with(seen)
    app.add_middleware(RequestIdMiddleware)

    async def calls() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cloudd") as client:
            given = await client.post("/x", headers={"X-Request-Id": "client-chosen-1"})
            assert given.headers["x-request-id"] == "client-chosen-1"
            assert seen[-1] == ("client-chosen-1", "client-chosen-1")
            assert given.json()["second"] == "client-chosen-1-3"  # further commands of one request
            fresh = await client.post("/x")
            generated = fresh.headers["x-request-id"]
            assert len(generated) == 16 and seen[-1] == (generated, generated)
            bad = await client.post("/x", headers={"X-Request-Id": "has spaces/and slashes"})
            assert bad.headers["x-request-id"] != "has spaces/and slashes"  # replaced for logging

    asyncio.run(calls())
    assert current_request.get() is None


def test_command_id_outside_a_request_is_none() -> None:
    class State:
        pass

    assert command_id(State()) is None

    async def inside() -> str | None:
        with request_scope("r1"):
            return command_id(State())

    assert asyncio.run(inside()) == "r1"
