"""HTTP client of cloudctl: tries each endpoint in turn, keeps read-your-writes.

A write carries an ``X-Request-Id``; when a node does not answer, the same id is sent to
the next one, so a write is never applied twice. After a write, reads ask for the index
it committed at (``X-Cloudd-Min-Index``), whichever node serves them.
"""

from __future__ import annotations

import secrets
from urllib.parse import quote
from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def q(segment: str) -> str:
    """One path segment, escaped: an argument like '../users/bob' stays one segment."""
    return quote(segment, safe="")


def normalize(endpoint: str) -> str:
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        endpoint = "http://" + endpoint
    return endpoint


class Client:
    def __init__(self, endpoints: list[str], token: str | None = None, timeout: float = 30.0) -> None:
        if not endpoints:
            raise ApiError(0, "config", "no endpoint configured: use --endpoint or 'cloudctl login --endpoint URL'")
        self.endpoints = [normalize(e) for e in endpoints]
        self.token = token
        self.timeout = timeout
        self.min_index: int | None = None
        self.used_endpoint: str | None = None

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if method != "GET":
            headers["X-Request-Id"] = secrets.token_urlsafe(12)
        elif self.min_index is not None:
            headers["X-Cloudd-Min-Index"] = str(self.min_index)
        errors = []
        for endpoint in self.endpoints:
            try:
                reply = httpx.request(
                    method, endpoint + path, json=body if body is not None else ({} if method == "POST" else None),
                    params=params, headers=headers, timeout=self.timeout,
                )
            except httpx.HTTPError as exc:
                errors.append(f"{endpoint}: {exc.__class__.__name__}")
                continue
            if reply.status_code in (502, 503) and endpoint != self.endpoints[-1]:
                errors.append(f"{endpoint}: HTTP {reply.status_code}")
                continue
            self.used_endpoint = endpoint
            return self._decode(reply)
        raise ApiError(0, "unreachable", "no endpoint answered (" + "; ".join(errors) + ")")

    def _decode(self, reply: httpx.Response) -> Any:
        try:
            data = reply.json()
        except ValueError:
            data = None
        if reply.status_code >= 400:
            error = (data or {}).get("error") if isinstance(data, dict) else None
            if isinstance(error, dict):
                raise ApiError(reply.status_code, error.get("code", "error"), error.get("message", ""), error.get("details"))
            raise ApiError(reply.status_code, "http", f"HTTP {reply.status_code}: {reply.text[:200]}")
        index = reply.headers.get("X-Cloudd-Index")
        if index and index.isdigit():
            self.min_index = max(self.min_index or 0, int(index))
        return data
