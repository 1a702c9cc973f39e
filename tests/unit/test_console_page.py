"""The console page and the token answer: what they show, their headers, their refusals,
and the noVNC files served beside them (a noVNC tree of the test's own)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette

from cloudd.errors import CloudError
from cloudd.security import sha256_hex
from cloudd.web import console
from cloudd.web.api import Api
from cloudd.web.auth import SESSION_COOKIE, Principal
from cloudd.web.console import ConsoleService, merged_csp
from cloudd.web.console_sessions import ConsoleSessions
from cloudd.web.ui import PAGE_HEADERS
from tests.factories import Replica
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm

with warnings.catch_warnings():  # Starlette 1.x would like httpx2 for its test client; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PASSWORD = "Kn0wnPw9"


def csp(header: str) -> dict[str, str]:
    return {name: value.strip() for name, _, value in (part.strip().partition(" ") for part in header.split(";")) if name}


@dataclass
class World:
    replica: Replica
    service: ConsoleService
    client: TestClient
    cookies: dict[str, str]  # user → session cookie value
    bearers: dict[str, str]


def novnc_tree(root: Path) -> Path:
    """noVNC as Debian lays it out, in miniature: client modules and the apps beside them."""
    for name, text in {
        "core/rfb.js": "export default class RFB {}",
        "vendor/pako/lib/zlib/inflate.js": "export function inflate() {}",
        "vnc.html": "<html>noVNC app</html>",
        "vnc_lite.html": "<html>noVNC lite</html>",
        "app/ui.js": "// the full app",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def world_of(tmp_path: Path, service_type: type[ConsoleService] = ConsoleService, sessions: ConsoleSessions | None = None) -> World:
    """Node n1: bob's VM vm1 (VNC password ``PASSWORD``) runs on n1, his vm2 is stopped;
    bob and admin have UI sessions and API tokens."""
    replica = cluster_with_hypervisor()
    new_vm(replica, "vm1", vnc_password=PASSWORD)
    new_vm(replica, "vm2", vnc_password=PASSWORD)
    replica.state.vms["vm1"].update(state="running", node="n1")
    replica.state.vms["vm1"]["observed"]["vnc_port"] = 5901
    replica.state.vms["vm2"]["state"] = "stopped"
    cookies: dict[str, str] = {}
    bearers: dict[str, str] = {}
    for user in ("bob", "admin"):
        for kind, into in (("session", cookies), ("api", bearers)):
            token_id, secret = f"{kind}-{user}", f"secret-{kind}-{user}"
            replica.ok("token.create", {
                "token_id": token_id, "user": user, "secret_sha256": sha256_hex(secret), "name": kind, "expires_at": time.time() + 3600, "kind": kind,
            })
            into[user] = f"cdt.{token_id}.{secret}"
    runtime = SimpleNamespace(
        raft=SimpleNamespace(lock=threading.RLock(), state=replica.state),
        config=SimpleNamespace(name="n1", compute=SimpleNamespace(vnc_listen="127.0.0.1")),
        secret="cluster-secret", api_addr_of=lambda name: None,
    )
    service = service_type(runtime, sessions=sessions)  # type: ignore[arg-type]
    app = Starlette(routes=console.routes(Api(runtime), service, novnc=novnc_tree(tmp_path / "novnc")))  # type: ignore[arg-type]
    return World(replica, service, TestClient(app, base_url="http://n1"), cookies, bearers)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return world_of(tmp_path)


def page_of(w: World, user: str | None, vm: str = "vm1") -> Any:
    w.client.cookies.clear()
    if user is not None:
        w.client.cookies.set(SESSION_COOKIE, w.cookies[user])
    return w.client.get(f"/ui/vms/{vm}/console", follow_redirects=False)


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """What the console page hands its template, page by page."""
    seen: list[dict[str, Any]] = []
    real = console.page

    def recording(request: Any, session: Any, name: str, status: int = 200, **context: Any) -> Any:
        seen.append(context)
        return real(request, session, name, status, **context)

    monkeypatch.setattr(console, "page", recording)
    yield seen


def test_the_console_page_keeps_the_uis_policy_and_adds_its_own(world: World) -> None:
    reply = page_of(world, "bob")
    assert reply.status_code == 200 and 'id="console-screen"' in reply.text
    policy, ui_policy = csp(reply.headers["content-security-policy"]), csp(PAGE_HEADERS["Content-Security-Policy"])
    assert {k: policy.get(k) for k in ui_policy} == ui_policy  # script-src, object-src 'none', base-uri 'none', form-action …
    assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'" and policy["form-action"] == "'self'"
    assert (policy["default-src"], policy["connect-src"], policy["img-src"]) == ("'self'", "'self'", "'self' data:")
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["x-frame-options"] == "DENY" and reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-store"


def test_merged_csp_replaces_a_directive_both_name_and_keeps_the_rest() -> None:
    merged = merged_csp("script-src 'self'; object-src 'none'; upgrade-insecure-requests", {"script-src": "'none'", "img-src": "data:"})
    assert merged == "script-src 'none'; object-src 'none'; upgrade-insecure-requests; img-src data:"


def test_the_page_never_gets_the_vms_vnc_password(world: World, contexts: list[dict[str, Any]]) -> None:
    shown = {(user, vm): page_of(world, user, vm) for user in ("bob", "admin") for vm in ("vm1", "vm2")}
    assert {key: reply.status_code for key, reply in shown.items()} == {
        ("bob", "vm1"): 200, ("bob", "vm2"): 409, ("admin", "vm1"): 200, ("admin", "vm2"): 409,
    }
    for reply in shown.values():
        assert PASSWORD not in reply.text and "vnc_password" not in reply.text
    assert len(contexts) == 4
    for context in contexts:
        assert PASSWORD not in repr(context) and set(context["vm"]) <= {"id", "name", "node"}
    bob_running, _, admin_running, _ = contexts
    assert bob_running["vm"] == {"id": "vm1", "name": "web-vm1"}  # a user is not told which node runs the VM
    assert admin_running["vm"] == {"id": "vm1", "name": "web-vm1", "node": "n1"}
    assert "Running on n1" in shown["admin", "vm1"].text and "Running on" not in shown["bob", "vm1"].text


def test_the_token_answer_and_issue_carry_no_password(world: World) -> None:
    reply = world.client.post("/api/v1/vms/web-vm1/console", headers={"Authorization": f"Bearer {world.bearers['bob']}"})
    assert reply.status_code == 200 and PASSWORD not in reply.text
    assert set(reply.json()) == {"url", "token", "expires_at"} and reply.json()["url"].startswith("ws://n1/console/ws?vm=vm1&token=")
    vm, _, _ = world.service.issue(Principal("user", "bob", "user", "t"), "vm1")
    assert vm == {"id": "vm1", "name": "web-vm1"}


def test_without_a_session_the_page_sends_to_the_login_and_back_here(world: World) -> None:
    reply = page_of(world, None)
    assert reply.status_code == 303 and reply.headers["location"] == "/login?next=%2Fui%2Fvms%2Fvm1%2Fconsole"


class DeletedMeanwhile(ConsoleService):
    """The VM stops and is deleted between the token's refusal and the page's lookup."""

    def issue(self, principal: Principal, ref: str) -> tuple[dict[str, Any], str, Any]:
        self.runtime.raft.state.vms.pop("vm1", None)
        raise CloudError("conflict", "VM web-vm1 is stopped: its console opens when it runs", {"state": "stopped"})


def test_a_vm_deleted_while_its_page_is_made_is_a_404_page(tmp_path: Path) -> None:
    reply = page_of(world_of(tmp_path, DeletedMeanwhile), "bob")
    assert reply.status_code == 404 and "VM vm1 not found" in reply.text and 'href="/ui/vms"' in reply.text


def test_a_user_with_every_session_slot_taken_gets_no_new_token(tmp_path: Path) -> None:
    w = world_of(tmp_path, sessions=ConsoleSessions(max_per_user=1, max_per_vm=4))
    held = w.service.sessions.open("bob", "vm1", "web-vm1")
    reply = page_of(w, "bob")
    assert reply.status_code == 429 and "you have 1 console sessions open" in reply.text and 'href="/ui/vms/vm1"' in reply.text
    assert 'id="console-screen"' not in reply.text and len(w.service.tokens) == 0
    assert page_of(w, "admin").status_code == 200  # another user's slots are their own
    held.close()
    assert page_of(w, "bob").status_code == 200


def test_novnc_serves_its_client_modules_only_with_the_uis_headers(world: World) -> None:
    for path in ("/static/novnc/core/rfb.js", "/static/novnc/vendor/pako/lib/zlib/inflate.js"):
        reply = world.client.get(path)
        assert reply.status_code == 200 and "javascript" in reply.headers["content-type"], path
        for name in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy"):
            assert reply.headers[name] == PAGE_HEADERS[name], (path, name)
    for path in ("/static/novnc/vnc.html", "/static/novnc/vnc_lite.html", "/static/novnc/app/ui.js", "/static/novnc/", "/static/novnc/core/../vnc.html"):
        assert world.client.get(path).status_code == 404, path
