"""The HTTP API on a real cluster: authentication, authorization and bad input."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from cloudd.web.app import create_app
from tests.cluster.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PUBLIC = {("POST", "/api/v1/auth/login"), ("POST", "/api/v1/cluster/join"), ("GET", "/api/v1/openapi.json")}
ADMIN_ONLY = [
    ("GET", "/api/v1/cluster"),
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/node1"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("DELETE", "/api/v1/users/admin"),
    ("POST", "/api/v1/cluster/join-tokens"),
    ("GET", "/api/v1/cluster/digest"),
    ("POST", "/api/v1/nodes/node1/maintenance"),
    ("DELETE", "/api/v1/cluster/nodes/node3"),
]


def all_routes() -> list[tuple[str, str]]:
    app = create_app(SimpleNamespace(raft=None, config=None))  # type: ignore[arg-type]
    out = []
    for route in app.routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue  # the web UI (redirects to /login) and static files: tests/cluster/test_ui.py
        for method in sorted(route.methods or []):
            if method != "HEAD":
                out.append((method, re.sub(r"\{[^}]+\}", "x", route.path)))
    return out


@pytest.fixture(scope="module")
def alice(shared_cluster: LocalCluster) -> str:
    with shared_cluster.api("node1") as client:
        assert client.post("/api/v1/users", json={"name": "alice", "password": "alice-pass-1"}).status_code == 201
    reply = httpx.post(shared_cluster.nodes["node1"].url + "/api/v1/auth/login", json={"username": "alice", "password": "alice-pass-1"})
    assert reply.status_code == 200 and reply.json()["role"] == "user"
    return str(reply.json()["token"])


def resources(cluster: LocalCluster) -> dict[str, Any]:
    with cluster.api("node1") as client:
        users = client.get("/api/v1/users", params={"limit": 1000}).json()["items"]
        tokens = client.get("/api/v1/tokens", params={"all": "true", "limit": 1000}).json()["items"]
        nodes = client.get("/api/v1/nodes").json()["items"]
        events = client.get("/api/v1/events", params={"limit": 1000}).json()["items"]
    return {
        "users": users,
        "tokens": tokens,
        "nodes": [{k: n[k] for k in ("name", "maintenance", "roles", "membership")} for n in nodes],
        "ok_events": [e["seq"] for e in events if e["outcome"] == "ok"],
    }


def test_every_endpoint_but_the_public_ones_needs_authentication(shared_cluster: LocalCluster) -> None:
    routes = all_routes()
    assert len(routes) >= 17
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        for headers in ({}, {"Authorization": "Bearer cdt.nope.nope"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}, {"X-Cloudd-Node": "node1:1:00"}):
            reply = httpx.request(method, shared_cluster.nodes["node2"].url + path, headers=headers, json={})
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.json()["error"]["code"] == "unauthenticated"


def test_users_are_refused_admin_endpoints(shared_cluster: LocalCluster, alice: str) -> None:
    before = resources(shared_cluster)
    for method, path in ADMIN_ONLY:
        reply = httpx.request(method, shared_cluster.nodes["node3"].url + path, headers={"Authorization": f"Bearer {alice}"}, json={"enabled": True})
        assert reply.status_code == 403, (method, path, reply.text)
    assert resources(shared_cluster) == before


def test_users_cannot_see_or_touch_other_users_objects(shared_cluster: LocalCluster, alice: str) -> None:
    headers = {"Authorization": f"Bearer {alice}"}
    url = shared_cluster.nodes["node1"].url
    admin_token_id = shared_cluster.token.split(".")[1]
    assert httpx.get(url + "/api/v1/users/admin", headers=headers).status_code == 404
    assert httpx.post(url + "/api/v1/users/admin/password", headers=headers, json={"password": "hijacked-1"}).status_code == 404
    assert httpx.delete(url + f"/api/v1/tokens/{admin_token_id}", headers=headers).status_code == 404
    mine = httpx.get(url + "/api/v1/tokens", headers=headers, params={"all": "true"}).json()["items"]
    assert mine and {t["user"] for t in mine} == {"alice"}
    assert all("secret_sha256" not in t for t in mine)
    events = httpx.get(url + "/api/v1/events", headers=headers).json()["items"]
    assert all(e["actor"].get("user") == "alice" for e in events)
    assert httpx.get(url + "/api/v1/users/alice", headers=headers).json()["name"] == "alice"


BAD_REQUESTS = [
    ("POST", "/api/v1/users", b"{not json", 400),
    ("POST", "/api/v1/users", b"[1, 2]", 400),
    ("POST", "/api/v1/users", b'{"name": "bob", "password": "pass-word-1", "admin": true}', 400),
    ("POST", "/api/v1/users", b'{"name": 7, "password": "pass-word-1"}', 400),
    ("POST", "/api/v1/users", b'{"name": "Bob Smith", "password": "pass-word-1"}', 400),
    ("POST", "/api/v1/users", b'{"name": "bob", "password": "short"}', 400),
    ("POST", "/api/v1/users", b'{"name": "bob", "role": "root", "password": "pass-word-1"}', 400),
    ("POST", "/api/v1/users", b'{"name": "admin", "password": "pass-word-1"}', 409),
    ("POST", "/api/v1/nodes/node1/maintenance", b'{"enabled": "yes"}', 400),
    ("POST", "/api/v1/nodes/node1/maintenance", b"{}", 400),
    ("POST", "/api/v1/nodes/no-such-node/maintenance", b'{"enabled": true}', 404),
    ("GET", "/api/v1/nodes/no-such-node", b"", 404),
    ("GET", "/api/v1/nodes?status=sleepy", b"", 400),
    ("GET", "/api/v1/nodes?limit=0", b"", 400),
    ("GET", "/api/v1/nodes?limit=abc", b"", 400),
    ("GET", "/api/v1/nodes?min_index=-1", b"", 400),
    ("DELETE", "/api/v1/users/nobody", b"", 404),
    ("DELETE", "/api/v1/tokens/nope", b"", 404),
    ("DELETE", "/api/v1/cluster/nodes/nobody", b"", 404),
    ("POST", "/api/v1/tokens", b'{"name": "x", "ttl_seconds": 1}', 400),
    ("POST", "/api/v1/cluster/join-tokens", b'{"ttl_seconds": "long"}', 400),
    ("GET", "/api/v1/no-such-thing", b"", 404),
    ("PUT", "/api/v1/users", b"{}", 405),
    ("POST", "/api/v1/users", b"x" * ((1 << 20) + 1), 413),
]


@pytest.mark.parametrize("method, path, body, status", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_with_a_message_and_changes_nothing(shared_cluster: LocalCluster, method: str, path: str, body: bytes, status: int) -> None:
    before = resources(shared_cluster)
    reply = httpx.request(
        method, shared_cluster.nodes["node2"].url + path, content=body or None,
        headers={"Authorization": f"Bearer {shared_cluster.token}", "Content-Type": "application/json"}, timeout=20,
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["code"]
    after = resources(shared_cluster)
    assert after == before


def test_form_bodies_are_refused(shared_cluster: LocalCluster) -> None:
    reply = httpx.post(shared_cluster.nodes["node1"].url + "/api/v1/auth/login", data={"username": "admin", "password": "x"})
    assert reply.status_code == 415


def test_wrong_password_and_rate_limit(shared_cluster: LocalCluster) -> None:
    url = shared_cluster.nodes["node3"].url + "/api/v1/auth/login"
    codes = [httpx.post(url, json={"username": "ratelimited", "password": f"guess-{i}"}).status_code for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]


def test_request_id_makes_a_retried_write_apply_once(shared_cluster: LocalCluster) -> None:
    headers = {"X-Request-Id": "retry-me-1"}
    with shared_cluster.api("node1") as a, shared_cluster.api("node3") as b:
        first = a.post("/api/v1/users", json={"name": "once", "password": "pass-word-1"}, headers=headers)
        second = b.post("/api/v1/users", json={"name": "once", "password": "pass-word-1"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.headers["X-Cloudd-Index"] == second.headers["X-Cloudd-Index"]
    with shared_cluster.api("node1") as client:
        events = client.get("/api/v1/events", params={"op": "user.create", "limit": 1000}).json()["items"]
    assert len([e for e in events if e["target"] == "once"]) == 1


def test_tokens_can_be_created_used_and_revoked(shared_cluster: LocalCluster) -> None:
    with shared_cluster.api("node2") as client:
        created = client.post("/api/v1/tokens", json={"name": "ci", "ttl_seconds": 3600})
        assert created.status_code == 201
        token = created.json()["token"]
        index = created.headers["X-Cloudd-Index"]
    assert httpx.get(shared_cluster.nodes["node3"].url + "/api/v1/auth/whoami", params={"min_index": index}, headers={"Authorization": f"Bearer {token}"}).json()["name"] == "admin"
    with shared_cluster.api("node2") as client:
        revoked = client.delete(f"/api/v1/tokens/{created.json()['token_id']}")
        assert revoked.status_code == 200
    after = httpx.get(shared_cluster.nodes["node1"].url + "/api/v1/auth/whoami", params={"min_index": revoked.headers["X-Cloudd-Index"]}, headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 401


def test_changing_your_own_password_needs_the_current_one(shared_cluster: LocalCluster) -> None:
    with shared_cluster.api("node1") as admin:
        assert admin.post("/api/v1/users", json={"name": "dora", "password": "dora-pass-1"}).status_code == 201
    url = shared_cluster.nodes["node1"].url
    token = httpx.post(url + "/api/v1/auth/login", json={"username": "dora", "password": "dora-pass-1"}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(url + "/api/v1/users/dora/password", headers=headers, json={"password": "new-pass-12"}).status_code == 400
    assert httpx.post(url + "/api/v1/users/dora/password", headers=headers, json={"password": "new-pass-12", "current_password": "wrong-one"}).status_code == 403
    ok = httpx.post(url + "/api/v1/users/dora/password", headers=headers, json={"password": "new-pass-12", "current_password": "dora-pass-1"})
    assert ok.status_code == 200
    assert httpx.post(url + "/api/v1/auth/login", json={"username": "dora", "password": "new-pass-12"}).status_code == 200


def test_real_answers_match_the_schemas_of_the_served_document(shared_cluster: LocalCluster) -> None:
    from openapi_schema_validator import OAS30Validator

    url = shared_cluster.nodes["node2"].url
    doc = httpx.get(url + "/api/v1/openapi.json").json()

    def check(name: str, value: Any) -> None:
        validator = OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})
        assert [e.message for e in validator.iter_errors(value)] == [], (name, value)

    check("Health", httpx.get(url + "/healthz").json())
    check("Session", httpx.post(url + "/api/v1/auth/login", json={"username": "admin", "password": shared_cluster.password}).json())
    with shared_cluster.api("node2") as client:
        check("Cluster", client.get("/api/v1/cluster").json())
        check("Digest", client.get("/api/v1/cluster/digest").json())
        check("Whoami", client.get("/api/v1/auth/whoami").json())
        check("JoinToken", client.post("/api/v1/cluster/join-tokens", json={}).json())
        check("NewToken", client.post("/api/v1/tokens", json={"name": "schema-check"}).json())
        for path, name in (("/api/v1/nodes", "Node"), ("/api/v1/users", "User"), ("/api/v1/tokens", "Token"), ("/api/v1/events", "Event")):
            items = client.get(path).json()["items"]
            assert items, path
            for item in items:
                check(name, item)
