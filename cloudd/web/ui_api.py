"""The web UI's way to read and change things: the node's own /api/v1, called in process.

Every page and form action goes through the same route handlers (and the same audit
middleware) as an API client would, with the session token as its bearer token, so the
UI authorizes exactly like the API: a user asking for someone else's VM gets the API's
404, a user on an admin page the API's 403.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

import orjson
from starlette.requests import Request
from starlette.types import Message

from cloudd.errors import HTTP_STATUS, CloudError


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    data: Any
    headers: dict[str, str]

    @property
    def task_id(self) -> str | None:
        task = self.data.get("task") if isinstance(self.data, dict) else None
        return task.get("id") if isinstance(task, dict) else None


def api_path(*parts: str) -> str:
    """``/api/v1/`` and path segments, each percent-encoded (a segment never adds a level)."""
    return "/api/v1/" + "/".join(quote(p, safe="") for p in parts)


async def call_api(
    request: Request, token: str, method: str, path: str,
    body: dict[str, Any] | None = None, query: dict[str, Any] | None = None, request_id: str | None = None,
) -> ApiAnswer:
    """Run one API request through this node's application as the session's user.

    Returns the answer of a 2xx; raises the API's ``CloudError`` (code, message, details)
    otherwise.
    """
    payload = orjson.dumps(body) if body is not None else b""
    headers = [
        (b"host", (request.headers.get("host") or "localhost").encode("latin-1")),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    query_string = urlencode({k: v for k, v in (query or {}).items() if v not in (None, "")}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": request.url.scheme,
        "path": unquote(path), "raw_path": path.encode(), "root_path": "", "query_string": query_string,
        "headers": headers, "client": request.scope.get("client"), "server": request.scope.get("server"),
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    answer: dict[str, Any] = {"status": 500, "headers": {}, "body": []}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", ())}
        elif message["type"] == "http.response.body":
            answer["body"].append(message.get("body", b""))

    await request.app(scope, receive, send)
    raw = b"".join(answer["body"])
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        data = None
    status = answer["status"]
    if status >= 400:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("code") in HTTP_STATUS:
            raise CloudError.from_dict(error)
        raise CloudError("internal", f"the API answered {status}")
    return ApiAnswer(status, data, answer["headers"])

