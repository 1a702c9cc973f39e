"""JSON in and out, the one error shape, and read-your-writes waits."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cloudd.errors import CloudError
from cloudd.validate import Field, check_args

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
INDEX_HEADER = "X-Cloudd-Index"
MIN_INDEX_HEADER = "X-Cloudd-Min-Index"
REQUEST_ID_HEADER = "X-Request-Id"


def json_response(data: Any, status: int = 200, index: int | None = None, headers: Mapping[str, str] | None = None) -> Response:
    out_headers = dict(headers or {})
    if index is not None:
        out_headers[INDEX_HEADER] = str(index)
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=out_headers)


def error_response(exc: CloudError, headers: Mapping[str, str] | None = None) -> Response:
    """The one error shape; a command refused inside the log also says its index."""
    return json_response({"error": exc.to_dict()}, status=exc.status, headers=headers, index=exc.index)


def is_number(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and len(raw) <= 18


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, read in chunks and refused past ``limit`` (chunked bodies too)."""
    if hasattr(request, "_body"):
        body: bytes = request._body
        return body
    declared = request.headers.get("content-length")
    if declared is not None and is_number(declared) and int(declared) > limit:
        raise CloudError("payload_too_large", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise CloudError("payload_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    request._body = b"".join(chunks)
    return request._body


async def read_json(request: Request, spec: Mapping[str, Field]) -> dict[str, Any]:
    """Parse and validate a JSON object body; 4xx ``CloudError`` on any problem.

    A non-empty body must say ``Content-Type: application/json``: browsers cannot send
    that cross-origin without a preflight, so HTML forms elsewhere cannot post here.
    """
    body = await read_body(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body.strip() and content_type != "application/json":
        raise CloudError("unsupported_media_type", "the body must be application/json")
    if not body.strip():
        data: Any = {}
    else:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise CloudError("invalid", f"the body is not valid JSON: {exc}") from None
    return check_args(data, spec)


def request_id(request: Request) -> str | None:
    """A client-chosen idempotency key: retrying with it never applies twice."""
    value = request.headers.get(REQUEST_ID_HEADER)
    if value is None:
        return None
    from cloudd.validate import ID_RE

    if not ID_RE.fullmatch(value):
        raise CloudError("invalid", f"{REQUEST_ID_HEADER} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def min_index(request: Request) -> int | None:
    raw = request.query_params.get("min_index") or request.headers.get(MIN_INDEX_HEADER)
    if raw is None:
        return None
    if not is_number(raw):
        raise CloudError("invalid", "min_index must be a non-negative integer")
    return int(raw)


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(handler: Endpoint) -> Endpoint:
    """Turn CloudError into the error shape and any other exception into a logged 500."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except CloudError as exc:
            return error_response(exc)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            return error_response(CloudError("internal", "internal error; see the node's log"))

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper
