"""The UI's form helpers without a cluster: API errors placed on form fields, CSRF values,
path segments, and the session cookie's flags."""

from __future__ import annotations

import pytest
from starlette.requests import Request
from starlette.responses import Response

from cloudd.errors import CloudError
from cloudd.web.ui import set_session_cookie
from cloudd.web.ui_forms import Form, csrf_token, errors_from, field_of, parse_number, same, segment

VM_FIELDS = ("name", "flavor", "image", "iso", "network", "swap_mb")


@pytest.mark.parametrize(
    ("error", "field"),
    [
        (CloudError("invalid", "name has an invalid format", {"field": "name"}), "name"),
        (CloudError("invalid", "networks[0].network is required", {"field": "networks[0].network"}), "network"),
        (CloudError("quota_exceeded", "pool team allows 2 vcpus", {"pool": "team", "limit": "vcpus", "max": 2, "used": 2, "requested": 1}), "flavor"),
        (CloudError("not_found", "flavor huge not found"), "flavor"),
        (CloudError("not_found", "image x not found"), "image"),
        (CloudError("conflict", "you already have a VM named web1"), "name"),
        (CloudError("unavailable", "no leader"), ""),
    ],
)
def test_api_errors_land_on_the_field_they_are_about(error: CloudError, field: str) -> None:
    aliases = {"networks": "network", "vcpus": "flavor", "ram_mb": "flavor", "disk_gb": "flavor"}
    assert field_of(error, VM_FIELDS, aliases, prefixes={"you already have a vm named": "name"}) == field
    assert errors_from(error, VM_FIELDS, aliases, {"you already have a vm named": "name"}) == {field: error.message}


def test_csrf_values_are_per_session_and_compared_safely() -> None:
    a, b = csrf_token("secret", "tok1"), csrf_token("secret", "tok2")
    assert a != b and a == csrf_token("secret", "tok1") and a != csrf_token("other", "tok1")
    assert same(a, a) and not same(a, b) and not same("", "") and not same(None, a)


def test_numbers_and_segments() -> None:
    errors: dict[str, str] = {}
    form = Form({"a": ["2"], "b": ["2.5"], "c": ["x"], "d": [""]})
    assert parse_number(form, "a", errors, integer=True) == 2
    assert parse_number(form, "b", errors) == 2.5
    assert parse_number(form, "c", errors) is None and errors == {"c": "must be a number"}
    assert parse_number(form, "d", errors, required=False) is None and "d" not in errors
    assert segment("web-1.a_b") == "web-1.a_b"
    for bad in ("a/b", "..", "", "x" * 200, "a b"):
        with pytest.raises(CloudError):
            segment(bad)


@pytest.mark.parametrize(("scheme", "secure"), [("http", False), ("https", True)])
def test_the_session_cookie_is_http_only_strict_and_secure_behind_tls(scheme: str, secure: bool) -> None:
    request = Request({"type": "http", "method": "POST", "scheme": scheme, "path": "/login", "headers": [], "server": ("h", 443), "query_string": b""})
    response = Response()
    set_session_cookie(request, response, "cdt.a.b")
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=43200" in cookie
    assert ("secure" in cookie) is secure
