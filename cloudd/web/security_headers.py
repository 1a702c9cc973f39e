"""Headers added to every HTTP response of an ASGI app that does not set them itself.

``SecurityHeaders`` wraps the whole application (``X-Content-Type-Options: nosniff`` on
every answer: JSON, pages, static files, errors) and, with more headers, single mounts
such as noVNC's files. A header the response already carries is left as it is; websocket
connections pass untouched.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOSNIFF: Mapping[str, str] = {"X-Content-Type-Options": "nosniff"}


class SecurityHeaders:
    """ASGI middleware: ``headers`` on every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str] = NOSNIFF) -> None:
        self.app = app
        self.headers = dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
