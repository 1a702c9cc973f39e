"""Who is calling: a user (bearer token or session cookie) or a cluster node (signature).

Every endpoint but ``/healthz``, login and the token-proven join needs a principal.
Token checks read the local replica: a hash lookup, no Raft round trip.
"""

from __future__ import annotations

import hmac
import time
from collections import deque
from dataclasses import dataclass

from starlette.requests import Request

from cloudd.errors import CloudError
from cloudd.runtime import NodeRuntime
from cloudd.security import NODE_SIGNATURE_WINDOW_S, parse_node_signature, parse_token, sha256_hex, verify_node_request
from cloudd.web.http import read_body

TOKEN_PREFIX = "cdt"
SESSION_COOKIE = "cloudd_session"
NODE_HEADER = "X-Cloudd-Node"


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" or "node"
    name: str
    role: str  # "admin", "user" or "node"
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in ("admin", "node")

    def actor(self, request: Request) -> dict[str, str]:
        actor = {self.kind: self.name}
        if request.client is not None:
            actor["addr"] = request.client.host
        return actor


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise CloudError("unauthenticated", "use 'Authorization: Bearer <token>'")
        return value.strip()
    # The session cookie authenticates reads only: a write needs the bearer header, which
    # no form or cross-site page can set (the web UI's own forms have their own routes).
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(SESSION_COOKIE)
    return None


def user_from_token(runtime: NodeRuntime, text: str, now: float) -> Principal | None:
    parts = parse_token(text, TOKEN_PREFIX)
    if parts is None:
        return None
    with runtime.raft.lock:
        token = runtime.raft.state.tokens.get(parts.token_id)
        if token is None:
            return None
        if not hmac.compare_digest(token["secret_sha256"].encode(), sha256_hex(parts.secret).encode()):
            return None
        if token["expires_at"] is not None and token["expires_at"] <= now:
            return None
        user = runtime.raft.state.users.get(token["user"])
        if user is None or user.get("disabled"):
            return None
        return Principal("user", user["name"], user["role"], parts.token_id)


class ReplayGuard:
    """Signatures seen within their validity window: a captured request is not accepted twice."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def first_use(self, mac: str, now: float) -> bool:
        if len(self.seen) > 10_000:
            self.seen = {m: t for m, t in self.seen.items() if now - t < NODE_SIGNATURE_WINDOW_S * 2}
        if mac in self.seen:
            return False
        self.seen[mac] = now
        return True


REPLAY_GUARD = ReplayGuard()


def signed_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def authenticate(request: Request, runtime: NodeRuntime) -> Principal:
    signature = request.headers.get(NODE_HEADER)
    if signature is not None:
        parsed = parse_node_signature(signature)
        if parsed is None:
            raise CloudError("unauthenticated", "invalid or stale node signature")
        body = await read_body(request)
        node = verify_node_request(runtime.secret, signature, request.method, signed_path(request), body)
        if node is None:
            raise CloudError("unauthenticated", "invalid or stale node signature")
        with runtime.raft.lock:
            known = node in runtime.raft.state.nodes
        if not known:
            raise CloudError("unauthenticated", f"node {node} is not a member of this cluster")
        if not REPLAY_GUARD.first_use(parsed[2], time.time()):
            raise CloudError("unauthenticated", "this signed request was already used")
        request.state.principal = Principal("node", node, "node")
        return request.state.principal
    token = _bearer(request)
    if not token:
        raise CloudError("unauthenticated", "authentication required: log in or send a bearer token")
    principal = user_from_token(runtime, token, time.time())
    if principal is None:
        raise CloudError("unauthenticated", "the token is invalid, expired or revoked")
    request.state.principal = principal  # for the audit of refused writes
    return principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise CloudError("forbidden", "this needs the admin role")


class LoginLimiter:
    """Failed logins per user and per address in a sliding window (local to this node)."""

    def __init__(self, max_failures: int = 10, window_s: float = 300.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self.failures.setdefault(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def check(self, keys: list[str], now: float) -> None:
        for key in keys:
            if len(self._recent(key, now)) >= self.max_failures:
                raise CloudError("rate_limited", "too many failed logins; try again later")

    def fail(self, keys: list[str], now: float) -> None:
        if len(self.failures) > 100_000:
            self.failures.clear()
        for key in keys:
            self._recent(key, now).append(now)

    def succeed(self, keys: list[str]) -> None:
        for key in keys:
            self.failures.pop(key, None)
