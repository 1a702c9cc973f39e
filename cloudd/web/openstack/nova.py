"""Plumbing of the Nova surface: microversions, version documents, lookups by id.

Only microversion 2.1 is served (min = max = 2.1): a request without a version header
is 2.1, ``latest`` is 2.1, and any other version is a 406.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable
from typing import Any

import regex  # a timeout on matching, which re lacks: user patterns run here
from starlette.requests import Request
from starlette.responses import Response

from cloudd.errors import CloudError
from cloudd.web.api import find_owned
from cloudd.web.auth import Principal
from cloudd.web.openstack.common import OsApi, base_url
from cloudd.web.openstack.errors import Endpoint, nova_error, nova_guarded

MICROVERSION = "2.1"
VERSION_HEADERS = {
    "OpenStack-API-Version": f"compute {MICROVERSION}",
    "X-OpenStack-Nova-API-Version": MICROVERSION,
    "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
}
VERSION_RE = re.compile(r"^([0-9]{1,4})\.([0-9]{1,4})$")
UPDATED = "2013-07-23T11:33:21Z"
MAX_NAME_FILTER = 255
NAME_FILTER_BUDGET_S = 0.2  # of regular-expression matching per listing
MAX_INTEGER_DIGITS = 18  # int() of a longer string is slow, and past 4300 digits a ValueError
REGEX_SPECIAL = frozenset(".^$*+?{}[]|()\\")
# what re.escape (and a careful hand) puts after a backslash: a character meant literally
ESCAPABLE = frozenset(string.punctuation + " ")
NAME_FILTER_HINT = "a regular expression, not a plain name"  # literal_of's refusal: name_filter then compiles it


def requested_microversion(request: Request) -> str | None:
    """The compute microversion a request asks for (None: none asked)."""
    for item in request.headers.get("openstack-api-version", "").split(","):
        service, _, value = item.strip().partition(" ")
        if service.lower() == "compute" and value.strip():
            return value.strip()
    legacy = request.headers.get("x-openstack-nova-api-version")
    return legacy.strip() if legacy else None


def microversion_problem(request: Request) -> Response | None:
    """A 400 for a malformed version, a 406 for one we do not serve, else None."""
    value = requested_microversion(request)
    if value is None or value.lower() == "latest":
        return None
    match = VERSION_RE.fullmatch(value)
    if match is None:
        return nova_error(400, f"invalid microversion {value[:40]!r}: use the form 2.1")
    if (int(match[1]), int(match[2])) != (2, 1):
        return nova_error(406, f"Version {value} is not supported by the API. Minimum is {MICROVERSION} and maximum is {MICROVERSION}.")
    return None


def nova_endpoint(handler: Endpoint) -> Endpoint:
    """Nova's error shape, the microversion check and the version headers on every answer."""
    guarded = nova_guarded(handler)

    async def wrapper(request: Request) -> Response:
        response = microversion_problem(request) or await guarded(request)
        response.headers.update(VERSION_HEADERS)
        return response

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


def compute_url(request: Request) -> str:
    return f"{base_url(request)}/compute/v2.1"


def v21_document(request: Request) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": MICROVERSION,
        "min_version": MICROVERSION,
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{compute_url(request)}/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }


def name_filter(pattern: str | None, budget_s: float = NAME_FILTER_BUDGET_S) -> Callable[[str], bool]:
    """Nova's ``name`` filter: a regular expression searched in the name.

    The plain forms clients send (a name or part of one, ``^``/``$`` anchors, ``\\.``
    escapes) are matched as literals. Anything else runs in the ``regex`` module, never in
    ``re``: the whole listing gets ``budget_s`` of matching (each search is given what is
    left, with the GIL released), and a pattern that needs more (one that backtracks
    catastrophically) is a 400 instead of a stalled node. Bad syntax is a 400 too."""
    if pattern is None:
        return lambda name: True
    if len(pattern) > MAX_NAME_FILTER:
        raise CloudError("invalid", f"name filter: at most {MAX_NAME_FILTER} characters")
    try:
        literal, at_start, at_end = literal_of(pattern)
    except CloudError:
        return _regex_filter(pattern, budget_s)
    if at_start and at_end:
        return lambda name: name == literal
    if at_start:
        return lambda name: name.startswith(literal)
    if at_end:
        return lambda name: name.endswith(literal)
    return lambda name: literal in name


def _regex_filter(pattern: str, budget_s: float) -> Callable[[str], bool]:
    try:
        compiled = regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise CloudError("invalid", f"name filter: not a regular expression ({str(exc)[:100]})") from None
    deadline: list[float] = []

    def matches(name: str) -> bool:
        if not deadline:
            deadline.append(time.monotonic() + budget_s)
        left = deadline[0] - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return compiled.search(name, timeout=left, concurrent=True) is not None
        except TimeoutError:
            raise CloudError("invalid", f"name filter: the expression takes too long to match (more than {budget_s:g} s in all); simplify it") from None

    return matches


def literal_of(pattern: str) -> tuple[str, bool, bool]:
    """(the literal text, anchored at the start, anchored at the end) of a name filter."""
    at_start = pattern.startswith("^")
    body = pattern[1:] if at_start else pattern
    out: list[str] = []
    at_end = False
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1 : i + 2]
            if escaped == "" or escaped not in ESCAPABLE:
                raise CloudError("invalid", f"name filter: \\{escaped} is not supported; {NAME_FILTER_HINT}")
            out.append(escaped)
            i += 2
            continue
        if char == "$" and i == len(body) - 1:
            at_end = True
        elif char in REGEX_SPECIAL:
            raise CloudError("invalid", f"name filter: {char!r} is not supported; {NAME_FILTER_HINT}")
        else:
            out.append(char)
        i += 1
    return "".join(out), at_start, at_end


def bounded_int(raw: str, name: str, low: int, high: int) -> int:
    """A query parameter that must be an integer in ``low..high`` (400 otherwise, however
    long or strange the text)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_INTEGER_DIGITS and low <= int(raw) <= high):
        raise CloudError("invalid", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def find_server(os_api: OsApi, principal: Principal, server_id: str) -> dict[str, Any]:
    """A VM by id only (a name is a 404: clients then look it up by listing), among the
    ones the caller may see (``find_owned``, as the /api/v1 routes)."""
    with os_api.runtime.raft.lock:
        vms = os_api.runtime.raft.state.vms
        if server_id in vms:
            try:
                return find_owned(vms, principal, server_id, "VM")
            except CloudError:
                pass
    raise CloudError("not_found", f"Instance {server_id} could not be found.")


def page_args(request: Request) -> tuple[int, str | None]:
    """Nova's ``limit`` (1..1000, default 1000) and ``marker`` (the last id seen)."""
    return bounded_int(request.query_params.get("limit", "1000"), "limit", 1, 1000), request.query_params.get("marker")


def paged(items: list[dict[str, Any]], limit: int, marker: str | None) -> list[dict[str, Any]]:
    if marker is not None:
        ids = [item["id"] for item in items]
        if marker not in ids:
            raise CloudError("invalid", f"marker [{marker[:64]}] not found")
        items = items[ids.index(marker) + 1 :]
    return items[:limit]
