"""Forms of the web UI: CSRF tokens, form parsing, and errors placed next to their field.

CSRF: a logged-in form carries ``csrf``, an HMAC of the session token's id under the
cluster secret, so every node can check it without shared session storage. The login
form (no session yet) uses a double-submit value: a random ``cloudd_csrf`` cookie that
the hidden field must repeat. A cross-site page can read neither.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import parse_qs

from starlette.requests import Request

from cloudd.errors import CloudError
from cloudd.web.http import read_body

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 64
CSRF_FIELD = "csrf"
PRE_SESSION_COOKIE = "cloudd_csrf"
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def csrf_token(secret: str, token_id: str) -> str:
    """The CSRF value of one login session (stable for the session, different per session)."""
    return hmac.new(secret.encode(), f"ui-csrf:{token_id}".encode(), hashlib.sha256).hexdigest()[:40]


def new_pre_session_value() -> str:
    return secrets.token_urlsafe(24)


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


@dataclass
class Form:
    """A parsed ``application/x-www-form-urlencoded`` body (every value of every name)."""

    fields: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return list(self.fields.get(name, ()))

    def text(self, name: str, max_len: int = 256) -> str:
        return self.get(name).strip()[:max_len]

    def values(self) -> dict[str, str]:
        """The first value of every field but the CSRF token (to refill a form)."""
        return {k: v[0] for k, v in self.fields.items() if k != CSRF_FIELD and v}


async def read_form(request: Request) -> Form:
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise CloudError("invalid", "malformed form") from None
    return Form(parsed)


def segment(value: str) -> str:
    """A value that goes into an API path: ids and names only (no '/', no '..')."""
    if not SEGMENT_RE.fullmatch(value) or value in (".", ".."):
        raise CloudError("not_found", "no such object")
    return value


def parse_number(form: Form, name: str, errors: dict[str, str], integer: bool = False, required: bool = True) -> float | int | None:
    raw = form.get(name).strip()
    if not raw:
        if required:
            errors[name] = "required"
        return None
    try:
        return int(raw) if integer else (int(raw) if raw.isdigit() else float(raw))
    except ValueError:
        errors[name] = "must be a whole number" if integer else "must be a number"
        return None


QUOTA_FIELDS = {"vcpus": "flavor", "ram_mb": "flavor", "disk_gb": "flavor", "vms": "name", "public_ips": "network"}


def field_of(exc: CloudError, fields: Iterable[str], aliases: dict[str, str] | None = None, prefixes: dict[str, str] | None = None) -> str:
    """The form field an API error is about ("" when none fits): ``details.field`` (or a
    quota's ``limit``) when the API names it (``aliases`` renames API fields to form
    fields), else the field whose name (or a ``prefixes`` key) starts the message."""
    fields = list(fields)
    aliases = aliases or {}
    details: Any = exc.details if isinstance(exc.details, dict) else {}
    named = details.get("field") or (QUOTA_FIELDS.get(details.get("limit", "")) if exc.code == "quota_exceeded" else None)
    candidates: list[str] = []
    if isinstance(named, str):
        base = re.split(r"[\[.]", named)[0]
        leaf = re.split(r"[\].]", named)[-1]
        for name in (named, leaf, base):
            candidates += [aliases.get(name, ""), name]
    message = exc.message.lower()
    for prefix, target in (prefixes or {}).items():
        if message.startswith(prefix):
            candidates.append(target)
    for name in fields:
        if message.startswith((name.replace("_", " ") + " ", name + " ")):
            candidates.append(name)
    for candidate in candidates:
        if candidate and candidate in fields:
            return candidate
    return ""


def errors_from(exc: CloudError, fields: Iterable[str], aliases: dict[str, str] | None = None, prefixes: dict[str, str] | None = None) -> dict[str, str]:
    """``{field: message}`` for an API error (field "" when it is about the whole form)."""
    return {field_of(exc, fields, aliases, prefixes): exc.message}
