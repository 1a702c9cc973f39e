"""The node-local audit trail of writes that never reached the replicated log.

A write that commits leaves an event in the replicated state (who, what, when, from
where, outcome: ``cloudd.commands.registry``). A write refused before it is proposed
(no or a bad token, a user on an admin endpoint, someone else's object, invalid input)
does not: replicating those would let anyone flood the log. This middleware writes one
line per such refusal to the ``cloudd.audit`` logger of the node that refused it, with
the same fields. Request bodies and credentials are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("cloudd.audit")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
INDEX_HEADER = b"x-cloudd-index"
# the cloudd API and the OpenStack services (cloudd.web.openstack.PREFIXES)
AUDITED = ("/api", "/identity", "/compute", "/image", "/network", "/volume")


def audited(path: str) -> bool:
    """Whether ``path`` is under one of the ``AUDITED`` prefixes (whole path segments)."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in AUDITED)


class RefusedWriteAudit:
    """ASGI middleware: log refused or failed writes to the APIs (``AUDITED``: a status of
    400 or more and no log index in the answer), failed Keystone logins among them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITES or not audited(scope["path"]):
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {}

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["committed"] = any(name.lower() == INDEX_HEADER for name, _ in message.get("headers", ()))
            await send(message)

        await self.app(scope, receive, watch)
        status = seen.get("status", 500)
        if status >= 400 and not seen.get("committed"):
            principal = scope.get("state", {}).get("principal")
            client = scope.get("client")
            log.warning(
                "refused write: method=%s path=%s status=%d actor=%s addr=%s ts=%.3f",
                scope["method"],
                scope["path"][:300],
                status,
                f"{principal.kind}:{principal.name}" if principal is not None else "anonymous",
                client[0] if client else "-",
                time.time(),
            )
