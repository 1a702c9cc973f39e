"""The one error type of cloudd and its mapping to HTTP statuses.

Command handlers return errors as values (see ``cloudd.commands.registry``); the API and
the CLI turn them into ``{"error": {"code", "message", "details"}}`` bodies.
"""

from __future__ import annotations

from typing import Any

HTTP_STATUS: dict[str, int] = {
    "invalid": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "quota_exceeded": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "gone": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
    "insufficient_storage": 507,
    "timeout": 504,
}


class CloudError(Exception):
    """An error with a stable machine code, a human message and optional details."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.details = details
        self.index: int | None = None  # the log index, when a committed command refused

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CloudError":
        return cls(data.get("code", "internal"), data.get("message", ""), data.get("details"))
