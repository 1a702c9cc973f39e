"""The server-rendered web UI (a first page: login and the cluster dashboard).

Sessions are the same tokens as the API's (kind "session"), carried in an HttpOnly,
SameSite=Strict cookie, so a cross-site form cannot ride on them.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cloudd.errors import CloudError
from cloudd.web.api import Api
from cloudd.web.auth import SESSION_COOKIE, user_from_token
from cloudd.web.routes_nodes import node_view
from cloudd.web.http import read_body
from cloudd.web.routes_users import SESSION_TTL_S, password_login

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
MAX_FORM_BYTES = 16 * 1024


def render(name: str, status: int = 200, **context: object) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status)


async def read_form(request: Request) -> dict[str, str]:
    body = await read_body(request, MAX_FORM_BYTES)
    try:
        fields = parse_qs(body.decode(), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise CloudError("invalid", "malformed form") from None
    return {k: v[0] for k, v in fields.items()}


def routes(api: Api) -> list[Route | Mount]:
    runtime = api.runtime

    def session_user(request: Request):  # type: ignore[no-untyped-def]
        token = request.cookies.get(SESSION_COOKIE)
        return user_from_token(runtime, token, time.time()) if token else None

    async def dashboard(request: Request) -> Response:
        user = session_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        if not user.is_admin:
            return render("home.html", user=user, this_node=runtime.config.name)
        status = runtime.raft.raft_status()
        with runtime.raft.lock:
            cluster = dict(runtime.raft.state.cluster)
            nodes = sorted((node_view(n, status["leader"]) for n in runtime.raft.state.nodes.values()), key=lambda n: n["name"])
        return render("dashboard.html", user=user, this_node=runtime.config.name, cluster=cluster, raft=status, leader=runtime.leader(), nodes=nodes)

    async def login_page(request: Request) -> Response:
        if session_user(request) is not None:
            return RedirectResponse("/", status_code=303)
        return render("login.html", user=None, error=None, username="")

    async def login_submit(request: Request) -> Response:
        try:
            form = await read_form(request)
            username, password = form.get("username", ""), form.get("password", "")
            data = await password_login(api, request, username[:64], password[:1024])
        except CloudError as exc:
            status = 429 if exc.code == "rate_limited" else 401 if exc.code == "unauthenticated" else exc.status
            return render("login.html", status=status, user=None, error=exc.message, username=form.get("username", "")[:64] if "form" in locals() else "")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, data["token"], max_age=int(SESSION_TTL_S), httponly=True, samesite="strict")
        return response

    async def logout(request: Request) -> Response:
        user = session_user(request)
        if user is not None and user.token_id:
            try:
                await api.commit(request, user, "token.revoke", {"token_id": user.token_id})
            except CloudError:
                pass
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    return [
        Route("/", dashboard, methods=["GET"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
    ]
