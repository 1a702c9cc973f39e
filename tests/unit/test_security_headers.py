"""Every HTTP answer of the app says ``X-Content-Type-Options: nosniff``; noVNC's files
are served with the UI's security headers, and noVNC's own HTML apps not at all."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from cloudd.web.app import create_app
from cloudd.web.console import DEBIAN_NOVNC
from cloudd.web.security_headers import SecurityHeaders
from cloudd.web.ui import PAGE_HEADERS


def get(app: ASGIApp, *paths: str) -> list[httpx.Response]:
    async def fetch() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cloudd") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def app() -> Starlette:
    return create_app(SimpleNamespace(raft=None, config=None))  # type: ignore[arg-type]


def test_json_answers_static_files_and_errors_of_the_app_say_nosniff(app: Starlette) -> None:
    api, static, missing = get(app, "/api/v1/openapi.json", "/static/style.css", "/api/v1/no-such-thing")
    assert (api.status_code, static.status_code, missing.status_code) == (200, 200, 404)
    assert api.headers["content-type"] == "application/json" and static.headers["content-type"].startswith("text/css")
    for reply in (api, static, missing):
        assert reply.headers["x-content-type-options"] == "nosniff", reply.url


def test_a_header_the_response_sets_itself_is_kept_once() -> None:
    async def own(request: object) -> Response:
        return Response("x", headers={"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN"})

    async def plain(request: object) -> Response:
        return JSONResponse({"ok": True})

    headers = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
    app = SecurityHeaders(Starlette(routes=[Route("/own", own), Route("/plain", plain)]), headers)
    mine, theirs = get(app, "/own", "/plain")
    assert mine.headers.get_list("x-content-type-options") == ["nosniff"] and mine.headers["x-frame-options"] == "SAMEORIGIN"
    assert theirs.headers["x-content-type-options"] == "nosniff" and theirs.headers["x-frame-options"] == "DENY"


def test_novnc_serves_its_client_modules_only_with_the_uis_security_headers(app: Starlette) -> None:
    page, lite, ui_js = get(app, "/static/novnc/vnc.html", "/static/novnc/vnc_lite.html", "/static/novnc/app/ui.js")
    assert page.status_code == lite.status_code == ui_js.status_code == 404
    assert page.headers["x-content-type-options"] == "nosniff"
    if not (DEBIAN_NOVNC / "core" / "rfb.js").is_file():
        pytest.skip("Debian's novnc is not installed here (tests/unit/test_console_proxy.py covers the mount with its own files)")
    rfb, pako = get(app, "/static/novnc/core/rfb.js", "/static/novnc/vendor/pako/lib/zlib/inflate.js")
    assert rfb.status_code == pako.status_code == 200
    for reply in (rfb, pako):
        assert "javascript" in reply.headers["content-type"]
        for name in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy"):
            assert reply.headers[name] == PAGE_HEADERS[name], (reply.url, name)


def test_novnc_files_are_what_console_js_imports() -> None:
    """``core/`` and ``vendor/`` are enough: noVNC's modules import nothing else."""
    if not (DEBIAN_NOVNC / "core" / "rfb.js").is_file():
        pytest.skip("Debian's novnc is not installed here")
    outside = []
    for module in [*DEBIAN_NOVNC.glob("core/**/*.js"), *DEBIAN_NOVNC.glob("vendor/**/*.js")]:
        for target in re.findall(r"""(?:from|import)\s*\(?\s*["']([^"']+\.js)["']""", module.read_text()):
            resolved = (module.parent / target).resolve()
            if not any(resolved.is_relative_to(DEBIAN_NOVNC / part) for part in ("core", "vendor")):
                outside.append(f"{module} imports {target}")
    assert outside == []
    assert "/static/novnc/core/" in (Path(__file__).resolve().parents[2] / "static" / "console.js").read_text()
