"""Keystone v3 over a fake node: version documents, password tokens, scope, revocation,
expiry, and the catalog's absolute URLs of the node that answered."""

from __future__ import annotations

import time

import pytest

from tests.openstack.fake import HOST, PASSWORD, Cloud


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


def password_auth(user: str, password: str, project: dict | None = None, domain: str = "Default") -> dict:
    auth: dict = {"identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": domain}, "password": password}}}}
    if project is not None:
        auth["scope"] = {"project": project}
    return {"auth": auth}


def test_version_documents_need_no_token(cloud: Cloud) -> None:
    root = cloud.request("GET", "/identity")
    assert root.status_code == 300
    [v3] = root.json()["versions"]["values"]
    assert v3["id"].startswith("v3.") and v3["links"][0]["href"] == f"{HOST}/identity/v3/"
    assert cloud.request("GET", "/identity/v3").json()["version"]["status"] == "stable"


def test_a_password_gives_a_token_with_the_catalog_of_this_node(cloud: Cloud) -> None:
    reply = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("alice", PASSWORD, {"name": "alice", "domain": {"name": "Default"}}))
    assert reply.status_code == 201, reply.text
    token = reply.headers["X-Subject-Token"]
    body = reply.json()["token"]
    assert body["methods"] == ["password"] and body["user"]["name"] == "alice" and body["project"]["name"] == "alice"
    assert body["expires_at"].endswith("Z") and time.strptime(body["expires_at"][:19], "%Y-%m-%dT%H:%M:%S").tm_year >= 2024
    services = {s["type"]: s["endpoints"][0]["url"] for s in body["catalog"]}
    assert {"identity", "compute", "image", "network", "block-storage"} <= set(services)
    assert services["compute"] == f"{HOST}/compute/v2.1" and all(url.startswith(HOST + "/") for url in services.values())
    # the token is cloudd's own: it works on every OpenStack route of every node
    assert cloud.request("GET", "/compute/v2.1/servers", token).status_code == 200


def test_bob_is_scoped_to_his_pool(cloud: Cloud) -> None:
    reply = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("bob", PASSWORD, {"id": "pool-small"}))
    assert reply.status_code == 201 and reply.json()["token"]["project"] == {"id": "pool-small", "name": "small", "domain": {"id": "default", "name": "Default"}}
    tokens = set(cloud.state.tokens)
    refused = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("bob", PASSWORD, {"name": "alice", "domain": {"id": "default"}}))
    assert refused.status_code == 401 and "small" in refused.json()["error"]["message"]
    assert set(cloud.state.tokens) == tokens  # the session the password made is revoked again


@pytest.mark.parametrize(
    "body",
    [
        password_auth("alice", "wrong-password"),
        password_auth("nobody", PASSWORD),
        password_auth("alice", PASSWORD, domain="Other"),
        {"auth": {"identity": {"methods": ["token"], "token": {"id": "cdt.nope.nope"}}}},
    ],
)
def test_bad_credentials_are_401_in_keystone_shape(cloud: Cloud, body: dict) -> None:
    tokens_before = set(cloud.state.tokens)
    reply = cloud.request("POST", "/identity/v3/auth/tokens", json=body)
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert error["code"] == 401 and error["title"] == "Unauthorized" and error["message"]
    assert set(cloud.state.tokens) == tokens_before


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"auth": 3}', b'{"auth": {"identity": {"methods": "password"}}}', b'{"auth": {"identity": {"methods": []}, "x": 1}}'])
def test_malformed_auth_bodies_are_400(cloud: Cloud, raw: bytes) -> None:
    reply = cloud.request("POST", "/identity/v3/auth/tokens", content=raw, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == 400


def test_a_revoked_token_is_401_everywhere_and_only_its_owner_revokes_it(cloud: Cloud) -> None:
    alice, bob = cloud.token("alice"), cloud.token("bob")
    assert cloud.request("DELETE", "/identity/v3/auth/tokens", bob, headers={"X-Subject-Token": alice}).status_code == 404
    assert cloud.request("GET", "/identity/v3/auth/tokens", alice, headers={"X-Subject-Token": alice}).status_code == 200
    assert cloud.request("DELETE", "/identity/v3/auth/tokens", alice, headers={"X-Subject-Token": alice}).status_code == 204
    for path in ("/compute/v2.1/servers", "/image/v2/images", "/volume/v3/volumes"):
        assert cloud.request("GET", path, alice).status_code == 401
    neutron = cloud.request("GET", "/network/v2.0/networks", alice)
    assert neutron.status_code == 401 and neutron.json()["NeutronError"]["type"] == "HTTPUnauthorized"
    assert cloud.request("GET", "/compute/v2.1/servers", bob).status_code == 200


def test_an_expired_token_is_401(cloud: Cloud) -> None:
    token = cloud.token("alice", expires_in=0.3)
    assert cloud.request("GET", "/compute/v2.1/servers", token).status_code == 200
    time.sleep(0.4)
    reply = cloud.request("GET", "/compute/v2.1/servers", token)
    assert reply.status_code == 401 and reply.json()["unauthorized"]["code"] == 401
    assert "Keystone" in reply.headers["WWW-Authenticate"]


def test_no_token_or_a_forged_one_is_401(cloud: Cloud) -> None:
    token = cloud.token("alice")
    forged = token.rsplit(".", 1)[0] + ".AAAA"
    for bad in (None, forged, "garbage", "cdt.x.y"):
        assert cloud.request("GET", "/compute/v2.1/flavors", bad).status_code == 401
        assert cloud.request("GET", "/identity/v3/auth/catalog", bad).status_code == 401


def test_every_route_but_the_version_documents_and_login_needs_a_token(cloud: Cloud) -> None:
    import re

    from starlette.routing import Route

    public = {"/identity", "/identity/", "/identity/v3", "/identity/v3/", "/compute", "/compute/", "/compute/v2.1", "/compute/v2.1/", "/image", "/image/",
              "/image/versions", "/network", "/network/", "/network/v2.0", "/network/v2.0/", "/volume", "/volume/", "/volume/v3", "/volume/v3/"}
    checked = 0
    for route in cloud.app.routes:
        assert isinstance(route, Route)
        if route.path.endswith("{rest:path}"):
            continue  # the per-service 404 for anything else
        for method in sorted(route.methods or ()):
            if method == "HEAD" or (method, route.path) == ("POST", "/identity/v3/auth/tokens"):
                continue
            path = re.sub(r"{(\w+)}", "x", route.path)
            reply = cloud.request(method, path, json={} if method == "POST" else None)
            if route.path in public:
                assert reply.status_code in (200, 300), (method, path)
            else:
                assert reply.status_code == 401, (method, path, reply.status_code)
                checked += 1
    assert checked > 30


def test_a_keystone_token_lives_an_hour_and_logins_past_the_token_cap_replace_the_oldest_session(cloud: Cloud) -> None:
    from cloudd.commands.users import MAX_TOKENS_PER_USER

    api_token = cloud.token("alice", kind="api")
    sessions = [cloud.token("alice") for _ in range(MAX_TOKENS_PER_USER - 1)]
    oldest = min((t for t in cloud.state.tokens.values() if t["kind"] == "session"), key=lambda t: (t["created_at"], t["id"]))
    held = set(cloud.state.tokens)
    wrong_scope = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("alice", PASSWORD, {"id": "pool-small"}))
    assert wrong_scope.status_code == 401 and set(cloud.state.tokens) == held  # refused before a session could take a place
    for n in range(3):  # an openstack CLI run is a login: a user's hundredth is no lockout
        before = time.time()
        reply = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("alice", PASSWORD))
        assert reply.status_code == 201, (n, reply.text)
        record = next(t for t in cloud.state.tokens.values() if reply.headers["X-Subject-Token"].startswith(f"cdt.{t['id']}."))
        assert (record["kind"], record["name"]) == ("session", "openstack")
        assert before + 3600 - 5 <= record["expires_at"] <= time.time() + 3600
        assert sum(1 for t in cloud.state.tokens.values() if t["user"] == "alice") == MAX_TOKENS_PER_USER
    assert oldest["id"] not in cloud.state.tokens
    assert cloud.request("GET", "/compute/v2.1/servers", api_token).status_code == 200  # API tokens are never evicted
    assert cloud.request("GET", "/compute/v2.1/servers", sessions[-1]).status_code == 200


def test_project_ids_keep_a_users_own_project_and_a_pool_of_that_name_apart(cloud: Cloud) -> None:
    from tests.openstack.fake import HASH

    cloud.replica.ok("user.create", {"name": "small", "role": "user", "password_hash": HASH})  # no pool: a project of their own
    own = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("small", PASSWORD, {"name": "small", "domain": {"id": "default"}}))
    assert own.status_code == 201 and own.json()["token"]["project"]["id"] == "user-small"
    pool = cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("bob", PASSWORD, {"name": "small", "domain": {"id": "default"}}))
    assert pool.status_code == 201 and pool.json()["token"]["project"]["id"] == "pool-small"
    for wrong in ({"id": "pool-small"}, {"id": "small"}):
        assert cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("small", PASSWORD, wrong)).status_code == 401, wrong
    assert cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("bob", PASSWORD, {"id": "small"})).status_code == 401
    assert cloud.request("POST", "/identity/v3/auth/tokens", json=password_auth("small", PASSWORD, {"id": "user-small"})).status_code == 201
    token = own.headers["X-Subject-Token"]
    assert cloud.request("GET", "/identity/v3/auth/projects", token).json()["projects"][0]["id"] == "user-small"
    assert cloud.request("GET", "/identity/v3/users/small", token).json()["user"]["default_project_id"] == "user-small"
