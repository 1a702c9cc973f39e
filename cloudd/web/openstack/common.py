"""What every OpenStack handler shares: who calls (``X-Auth-Token``), the node's own
URL, and JSON bodies wrapped in the resource's key (``{"server": {...}}``).

Tokens are cloudd's own (``cdt.…``), checked against the local replica exactly as the
``/api/v1`` bearer tokens are (``cloudd.web.auth.user_from_token``), so a token issued by
one node is accepted by every node and revoking it ends it everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request

from cloudd.errors import CloudError
from cloudd.runtime import NodeRuntime
from cloudd.validate import Field, check_args
from cloudd.web.api import Api
from cloudd.web.auth import Principal, user_from_token
from cloudd.web.http import read_body

TOKEN_HEADER = "X-Auth-Token"
SUBJECT_TOKEN_HEADER = "X-Subject-Token"


class OsApi:
    """The node's ``Api`` seen from the OpenStack side."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.runtime: NodeRuntime = api.runtime

    async def principal(self, request: Request) -> Principal:
        """The user whose token ``X-Auth-Token`` carries; 401 when absent, unknown,
        expired or revoked. Only users: nodes do not speak OpenStack."""
        token = request.headers.get(TOKEN_HEADER, "").strip()
        if not token:
            raise CloudError("unauthenticated", "authentication required: send a token in X-Auth-Token")
        await self.api.fresh(request)
        principal = user_from_token(self.runtime, token, time.time())
        if principal is None:
            raise CloudError("unauthenticated", "the token is invalid, expired or revoked")
        request.state.principal = principal  # for the audit of refused writes
        return principal


def caller_pool(state: Any, user: str) -> dict[str, Any] | None:
    """The pool of ``user`` (the OpenStack project's limits), or None (call under the lock)."""
    pool_name = (state.users.get(user) or {}).get("pool")
    return state.pools.get(pool_name) if pool_name else None


def base_url(request: Request) -> str:
    """This node as the client reached it (scheme and Host), without a trailing slash."""
    return str(request.base_url).rstrip("/")


async def read_wrapped(request: Request, key: str, spec: Mapping[str, Field], extra: Mapping[str, Field] | None = None) -> dict[str, Any]:
    """The object under ``key`` of a JSON body, checked against ``spec`` (unknown fields
    are a 400); ``extra`` lists other top-level keys the body may carry."""
    body = await read_body(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body.strip() and content_type != "application/json":
        raise CloudError("unsupported_media_type", "the body must be application/json")
    try:
        data = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        raise CloudError("invalid", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise CloudError("invalid", f"the body must be a JSON object with a {key!r} object")
    check_args(data, {key: Field("dict"), **(extra or {})})
    return check_args(data[key], spec, prefix=f"{key}.")


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter the way OpenStack clients write them (True, true, 1)."""
    return request.query_params.get(name, "").lower() in ("1", "true", "yes", "on")
