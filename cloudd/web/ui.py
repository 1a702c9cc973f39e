"""The server-rendered web UI: routing, sessions, page rendering and the shared helpers.

Sessions are the same tokens as the API's (kind "session", 12 h), carried in an
HttpOnly, SameSite=Strict cookie (Secure when the request came over TLS). Pages read
and act through the node's own API (``ui_api``), so they authorize exactly like it;
every form carries a CSRF token (``ui_forms``). The user pages are in ``ui_user``, the
admin pages in ``ui_admin`` and ``ui_catalog`` (flavors, images).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from cloudd.errors import CloudError
from cloudd.runtime import NodeRuntime
from cloudd.web.api import Api
from cloudd.web.auth import SESSION_COOKIE, Principal, user_from_token
from cloudd.web.routes_users import SESSION_TTL_S, password_login
from cloudd.web.ui_api import ApiAnswer, api_path, call_api
from cloudd.web.ui_forms import CSRF_FIELD, PRE_SESSION_COOKIE, Form, csrf_token, new_pre_session_value, same
from cloudd.web.ui_forms import read_form as read_ui_form

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
# scripts only from this origin (none inline): an injected <script> or on* attribute does not run
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
}


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "never"
    age = max(0.0, (now or time.time()) - ts)
    if age < 90:
        return f"{age:.0f} s"
    if age < 5400:
        return f"{age / 60:.0f} min"
    if age < 172800:
        return f"{age / 3600:.0f} h"
    return f"{age / 86400:.0f} d"


def fmt_mib(mb: float | None) -> str:
    if mb is None:
        return "-"
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def fmt_num(value: float | None) -> str:
    """1.0 → "1", 2.25 → "2.2": quotas and sizes without float noise."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def pct(used: float | None, total: float | None) -> int:
    if not total or used is None:
        return 0
    return max(0, min(100, round(100 * used / total)))


TEMPLATES.filters.update(time=fmt_time, age=fmt_age, mib=fmt_mib, num=fmt_num)
TEMPLATES.globals.update(pct=pct, new_rid=lambda: secrets.token_hex(12))


def render(name: str, status: int = 200, **context: object) -> HTMLResponse:
    return HTMLResponse(
        TEMPLATES.get_template(name).render(**context), status_code=status,
        headers=PAGE_HEADERS,
    )


@dataclass(frozen=True)
class Session:
    """A logged-in browser: who it is, the token the cookie carries, its CSRF value."""

    principal: Principal
    token: str
    csrf: str
    node: str

    @property
    def is_admin(self) -> bool:
        return self.principal.is_admin

    @property
    def name(self) -> str:
        return self.principal.name


def session_of(runtime: NodeRuntime, request: Request) -> Session | None:
    """The session of the request's cookie, or None (no cookie, expired, revoked, disabled)."""
    token = request.cookies.get(SESSION_COOKIE)
    principal = user_from_token(runtime, token, time.time()) if token else None
    if principal is None or principal.token_id is None:
        return None
    return Session(principal, token or "", csrf_token(runtime.secret, principal.token_id), runtime.config.name)


def page(request: Request, session: Session | None, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page with the layout's context: the user, this node, the CSRF value, the section."""
    context.setdefault("errors", {})
    context.setdefault("values", {})
    csrf = session.csrf if session else ""
    field = Markup('<input type="hidden" name="{}" value="{}"><input type="hidden" name="rid" value="{}">')
    return render(
        name, status, user=session.principal if session else None, session=session, this_node=session.node if session else "",
        csrf=csrf, csrf_field=lambda: field.format(CSRF_FIELD, csrf, secrets.token_hex(12)), path=request.url.path, **context,
    )


class Ui:
    """What the UI's handlers share: the runtime and the API, in-process."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.runtime = api.runtime

    async def get(self, request: Request, session: Session, *parts: str, **query: Any) -> Any:
        return (await call_api(request, session.token, "GET", api_path(*parts), query=query)).data

    async def send(self, request: Request, session: Session, method: str, path: str, body: dict[str, Any] | None = None, form: Form | None = None) -> ApiAnswer:
        rid = form.get("rid") if form is not None else ""
        return await call_api(request, session.token, method, path, body=body, request_id=rid if rid.isalnum() and len(rid) <= 64 else None)


Handler = Callable[[Request, Session, Form | None], Awaitable[Response]]

ERROR_TITLES = {404: "Not found", 403: "Not allowed", 409: "Conflict", 400: "Invalid request"}


def error_page(request: Request, session: Session | None, exc: CloudError) -> HTMLResponse:
    status = exc.status
    return page(request, session, "error.html", status=status, title=ERROR_TITLES.get(status, "Error"), message=exc.message)


def guarded_page(ui: Ui, handler: Handler, admin: bool = False, write: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A UI endpoint: a session (else to the login page), the admin role where asked,
    and for a write a form whose CSRF field matches the session (else 403, nothing done).
    A ``CloudError`` becomes an error page with the API's status."""

    async def endpoint(request: Request) -> Response:
        session = session_of(ui.runtime, request)
        if session is None:
            if write:
                return page(request, None, "error.html", status=403, title="Not allowed", message="your session has ended: log in again")
            return RedirectResponse(login_url(request), status_code=303)
        try:
            form = None
            if write:
                form = await read_ui_form(request)
                if not same(form.get(CSRF_FIELD), session.csrf):
                    return page(request, session, "error.html", status=403, title="Not allowed",
                                message="this form is not from this session (missing or wrong CSRF token): reload the page and try again")
            if admin and not session.is_admin:
                raise CloudError("forbidden", "this page is for admins")
            return await handler(request, session, form)
        except CloudError as exc:
            return error_page(request, session, exc)

    endpoint.__name__ = handler.__name__
    return endpoint


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of this site only (never another host)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value and len(value) <= 300 and value.isprintable():
        return value
    return "/"


def login_url(request: Request) -> str:
    """The login page, remembering the page asked for (only UI pages: ``next``)."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login" if safe_next(wanted) == "/" else "/login?" + urlencode({"next": wanted})


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, token, max_age=int(SESSION_TTL_S), httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/",
    )


def routes(api: Api) -> list[BaseRoute]:
    from cloudd.web import ui_admin, ui_catalog, ui_user

    ui = Ui(api)

    async def home(request: Request) -> Response:
        session = session_of(ui.runtime, request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse("/ui/admin" if session.is_admin else "/ui/vms", status_code=303)

    def login_form(request: Request, status: int = 200, error: str | None = None, username: str = "", next_path: str = "/") -> Response:
        value = request.cookies.get(PRE_SESSION_COOKIE) or new_pre_session_value()
        response = render(
            "login.html", status=status, user=None, error=error, username=username, login_csrf=value, csrf_name=CSRF_FIELD, next_path=next_path,
        )
        response.set_cookie(PRE_SESSION_COOKIE, value, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/login")
        return response

    async def login_page(request: Request) -> Response:
        next_path = safe_next(request.query_params.get("next"))
        if session_of(ui.runtime, request) is not None:
            return RedirectResponse(next_path, status_code=303)
        return login_form(request, next_path=next_path)

    async def login_submit(request: Request) -> Response:
        username, next_path = "", "/"
        try:
            form = await read_ui_form(request)
            username, next_path = form.get("username")[:64], safe_next(form.get("next"))
            if not same(form.get(CSRF_FIELD), request.cookies.get(PRE_SESSION_COOKIE)):
                return login_form(request, 403, "the login form expired: please try again", username, next_path)
            data = await password_login(api, request, username, form.get("password")[:1024])
        except CloudError as exc:
            status = 429 if exc.code == "rate_limited" else 401 if exc.code == "unauthenticated" else exc.status
            return login_form(request, status, exc.message, username, next_path)
        response = RedirectResponse(next_path, status_code=303)
        set_session_cookie(request, response, data["token"])
        response.delete_cookie(PRE_SESSION_COOKIE, path="/login")
        return response

    async def logout(request: Request, session: Session, form: Form | None) -> Response:
        try:
            await ui.send(request, session, "POST", "/api/v1/auth/logout")
        except CloudError:
            pass
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    out: list[BaseRoute] = [
        Route("/", home, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", guarded_page(ui, logout, write=True), methods=["POST"]),
    ]
    out += ui_user.routes(ui)
    out += ui_admin.routes(ui)
    out += ui_catalog.routes(ui)
    out.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"))
    return out


__all__ = ["Session", "Ui", "guarded_page", "page", "render", "routes", "session_of"]
