"""The web UI over HTTP against a real cluster: login and sessions, CSRF refusal, field
errors that change nothing, 404 for other users' VMs, admin pages refused to users,
escaping. (The browser flows are in tests/ui.)"""

from __future__ import annotations

import re
from typing import Any, Iterator

import httpx
import pytest

from tests.cluster.harness import LocalCluster, add_ui_catalog, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def ui_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node cluster on 127.0.0.200-202 with a flavor, an OS image, an ISO, a public network
    and two users (alice in pool team)."""
    c = LocalCluster(tmp_path_factory.mktemp("ui"), first_host=200)
    try:
        c.init(3)
        with c.api("node1") as admin:
            add_ui_catalog(admin)
            admin.post("/api/v1/pools", json={"name": "team", "limits": {"vcpus": 2, "vms": 3}}).raise_for_status()
            admin.post("/api/v1/networks", json={"name": "public", "subnet": "192.0.2.0/24"}).raise_for_status()
            for name in ("alice", "bob"):
                admin.post("/api/v1/users", json={"name": name, "password": f"{name}-pass-1"}).raise_for_status()
            admin.patch("/api/v1/users/alice", json={"pool": "team"}).raise_for_status()
        yield c
    finally:
        c.close()


class Browser:
    """An httpx client that logs in through the login form and reads CSRF values off pages."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=20)
        self.csrf = ""

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    def login(self, username: str, password: str) -> httpx.Response:
        form = self.client.get("/login")
        token = CSRF_RE.search(form.text)
        assert token is not None
        reply = self.client.post("/login", data={"username": username, "password": password, "csrf": token.group(1)}, follow_redirects=False)
        if reply.status_code == 303:
            self.get("/ui/account")
        return reply

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        reply = self.client.get(path, **kwargs)
        found = CSRF_RE.search(reply.text)
        if found:
            self.csrf = found.group(1)
        return reply

    def post(self, path: str, data: dict[str, Any] | None = None, csrf: bool = True, **kwargs: Any) -> httpx.Response:
        body = dict(data or {})
        if csrf:
            body["csrf"] = self.csrf
        kwargs.setdefault("follow_redirects", False)
        return self.client.post(path, data=body, **kwargs)


def field_error(html: str, field: str) -> str | None:
    found = re.search(rf'<span class="field-error" role="alert" data-field="{re.escape(field)}">([^<]*)</span>', html)
    return found.group(1) if found else None


def logged_in(cluster: LocalCluster, node: str, user: str, password: str) -> Browser:
    browser = Browser(cluster.nodes[node].url)
    reply = browser.login(user, password)
    assert reply.status_code == 303, reply.text
    return browser


def api_vms(cluster: LocalCluster, user: str) -> list[dict[str, Any]]:
    with cluster.api("node1") as admin:
        return list(admin.get("/api/v1/vms", params={"owner": user}).json()["items"])


def test_anonymous_visitors_are_sent_to_the_login_page(ui_cluster: LocalCluster) -> None:
    url = ui_cluster.nodes["node2"].url
    assert httpx.get(url + "/", follow_redirects=False).headers["location"] == "/login"
    for path in ("/ui/vms", "/ui/admin", "/ui/account"):
        reply = httpx.get(url + path, follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"] == "/login?next=" + path.replace("/", "%2F"), path
    page = httpx.get(url + "/login")
    assert page.status_code == 200 and 'name="password"' in page.text and 'name="csrf"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
    assert httpx.get(url + "/static/style.css").status_code == 200
    assert httpx.get(url + "/static/ui.js").status_code == 200
    # a write without a session changes nothing and says so
    assert httpx.post(url + "/ui/vms/new", data={"name": "x"}).status_code == 403


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(ui_cluster: LocalCluster) -> None:
    with Browser(ui_cluster.nodes["node3"].url) as browser:
        bad = browser.login("admin", "wrong")
        assert bad.status_code == 401 and "wrong username or password" in bad.text
        ok = browser.login("admin", ui_cluster.password)
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # plain HTTP here
        token = browser.client.cookies["cloudd_session"]
        page = browser.get("/", follow_redirects=True)
        assert page.status_code == 200 and 'id="leader"' in page.text and "admin (admin)" in page.text
        for name in ("node1", "node2", "node3"):
            assert name in page.text
        # logout needs the CSRF token too
        assert browser.post("/logout", csrf=False).status_code == 403
        assert browser.get("/ui/vms").status_code == 200
        out = browser.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert browser.get("/", follow_redirects=False).status_code == 303
    # the session token is revoked on the server, not only forgotten by the browser
    assert httpx.get(ui_cluster.nodes["node1"].url + "/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_login_returns_to_the_page_asked_for_and_only_to_this_site(ui_cluster: LocalCluster) -> None:
    with Browser(ui_cluster.nodes["node1"].url) as browser:
        asked = browser.client.get("/ui/account", follow_redirects=True)
        assert 'name="next" value="/ui/account"' in asked.text
        token = CSRF_RE.search(asked.text)
        assert token is not None
        reply = browser.client.post("/login", data={"username": "bob", "password": "bob-pass-1", "csrf": token.group(1), "next": "/ui/account"})
        assert reply.status_code == 303 and reply.headers["location"] == "/ui/account"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        with Browser(ui_cluster.nodes["node1"].url) as browser:
            form = browser.client.get("/login", params={"next": evil})
            assert "evil" not in form.text
            token = CSRF_RE.search(form.text)
            assert token is not None
            reply = browser.client.post("/login", data={"username": "bob", "password": "bob-pass-1", "csrf": token.group(1), "next": evil})
            assert reply.status_code == 303 and reply.headers["location"] == "/", evil


def test_a_login_post_without_the_form_token_is_refused(ui_cluster: LocalCluster) -> None:
    reply = httpx.post(ui_cluster.nodes["node1"].url + "/login", data={"username": "admin", "password": ui_cluster.password}, follow_redirects=False)
    assert reply.status_code == 403 and "cloudd_session" not in reply.headers.get("set-cookie", "")


def test_a_forged_post_without_the_csrf_token_is_refused_and_changes_nothing(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node1", "alice", "alice-pass-1") as alice:
        before = api_vms(ui_cluster, "alice")
        forged = alice.post("/ui/vms/new", {"name": "forged1", "flavor": "tiny"}, csrf=False)
        assert forged.status_code == 403 and "CSRF" in forged.text
        wrong = alice.client.post("/ui/vms/new", data={"name": "forged2", "flavor": "tiny", "csrf": "0" * 40})
        assert wrong.status_code == 403
        # another session's token does not work either
        with logged_in(ui_cluster, "node1", "bob", "bob-pass-1") as bob:
            crossed = alice.client.post("/ui/vms/new", data={"name": "forged3", "flavor": "tiny", "csrf": bob.csrf})
            assert crossed.status_code == 403
        assert api_vms(ui_cluster, "alice") == before
        # password change and token creation are refused the same way
        assert alice.post("/ui/account/password", {"current_password": "alice-pass-1", "password": "hijacked-1", "password_again": "hijacked-1"}, csrf=False).status_code == 403
    logged_in(ui_cluster, "node2", "alice", "alice-pass-1").client.close()  # the password is unchanged


def test_bad_input_shows_the_message_next_to_the_field_and_creates_nothing(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node2", "alice", "alice-pass-1") as alice:
        form = alice.get("/ui/vms/new")
        assert form.status_code == 200 and "busybox" in form.text and "rescue-cd" in form.text and "team" in form.text
        before = api_vms(ui_cluster, "alice")
        bad_name = alice.post("/ui/vms/new", {"name": "Not A Hostname!", "flavor": "tiny", "power": "running"})
        assert bad_name.status_code == 400
        assert "name" in (field_error(bad_name.text, "name") or "")
        assert 'value="Not A Hostname!"' in bad_name.text  # the form keeps what was typed
        no_flavor = alice.post("/ui/vms/new", {"name": "ok-name"})
        assert no_flavor.status_code == 400 and field_error(no_flavor.text, "flavor")
        swap = alice.post("/ui/vms/new", {"name": "ok-name", "flavor": "tiny", "swap_mb": "lots"})
        assert swap.status_code == 400 and field_error(swap.text, "swap_mb") == "must be a whole number"
        missing = alice.post("/ui/vms/new", {"name": "ok-name", "flavor": "huge"})
        assert missing.status_code == 404 and "huge" in (field_error(missing.text, "flavor") or "")
        assert api_vms(ui_cluster, "alice") == before
        # the pool allows 2 vCPUs: the third tiny VM is over the quota, named next to the flavor
        for name in ("quota1", "quota2"):
            assert alice.post("/ui/vms/new", {"name": name, "flavor": "tiny"}).status_code == 303
        over = alice.post("/ui/vms/new", {"name": "quota3", "flavor": "tiny"})
        assert over.status_code == 403 and "vcpus" in (field_error(over.text, "flavor") or "")
        assert sorted(v["name"] for v in api_vms(ui_cluster, "alice")) == sorted([*(v["name"] for v in before), "quota1", "quota2"])
        dup = alice.post("/ui/vms/new", {"name": "quota1", "flavor": "tiny"})
        assert dup.status_code == 409 and "quota1" in (field_error(dup.text, "name") or "")
        vm_id = next(v["id"] for v in api_vms(ui_cluster, "alice") if v["name"] == "quota1")
        disk = alice.post(f"/ui/vms/{vm_id}/disks", {"size_gb": "-3"})
        assert disk.status_code == 400 and field_error(disk.text, "size_gb")
        pw = alice.post("/ui/account/password", {"current_password": "wrong-one", "password": "new-pass-123", "password_again": "new-pass-123"})
        assert pw.status_code == 403 and field_error(pw.text, "current_password")
        short = alice.post("/ui/account/password", {"current_password": "alice-pass-1", "password": "short", "password_again": "short"})
        assert short.status_code == 400 and "at least 8" in (field_error(short.text, "password") or "")
    with logged_in(ui_cluster, "node1", "alice", "alice-pass-1") as alice:
        for v in api_vms(ui_cluster, "alice"):
            alice.get(f"/ui/vms/{v['id']}/delete")
            assert alice.post(f"/ui/vms/{v['id']}/delete", {"confirm_name": v["name"]}).status_code == 303


def test_another_users_vm_is_not_found(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node1", "bob", "bob-pass-1") as bob:
        created = bob.post("/ui/vms/new", {"name": "bobs-vm", "flavor": "tiny", "power": "running"})
        assert created.status_code == 303
        vm_id = created.headers["location"].split("/")[3].split("?")[0]
        assert bob.get(f"/ui/vms/{vm_id}").status_code == 200
    with logged_in(ui_cluster, "node2", "alice", "alice-pass-1") as alice:
        for path in (f"/ui/vms/{vm_id}", "/ui/vms/bobs-vm", f"/ui/vms/{vm_id}/delete"):
            assert alice.get(path).status_code == 404, path
        alice.get("/ui/vms")
        for path, data in ((f"/ui/vms/{vm_id}/power/stop", {}), (f"/ui/vms/{vm_id}/delete", {"confirm_name": "bobs-vm"}),
                           (f"/ui/vms/{vm_id}/iso", {"image": "rescue-cd"}), (f"/ui/vms/{vm_id}/disks", {"size_gb": "1"})):
            assert alice.post(path, data).status_code == 404, path
        assert "bobs-vm" not in alice.get("/ui/vms").text
    assert [v["name"] for v in api_vms(ui_cluster, "bob")] == ["bobs-vm"]
    with logged_in(ui_cluster, "node3", "admin", ui_cluster.password) as admin:
        page = admin.get(f"/ui/vms/{vm_id}")
        assert page.status_code == 200 and "bobs-vm" in page.text
        assert "bobs-vm" in admin.get("/ui/admin/vms", params={"owner": "bob"}).text
        assert "bobs-vm" not in admin.get("/ui/admin/vms", params={"owner": "alice"}).text


def test_admin_pages_refuse_users(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node3", "alice", "alice-pass-1") as alice:
        home = alice.get("/", follow_redirects=True)
        assert home.status_code == 200 and "My VMs" in home.text
        assert "node2" not in home.text and "/ui/admin" not in home.text
        for path in ("/ui/admin", "/ui/admin/users", "/ui/admin/vms", "/ui/admin/rebalance", "/ui/admin/events"):
            assert alice.get(path).status_code == 403, path
        alice.get("/ui/vms")
        for path, data in (("/ui/admin/users", {"name": "mallory", "password": "mallory-pass-1", "role": "admin"}),
                           ("/ui/admin/nodes/node2/maintenance", {"enabled": "true"}),
                           ("/ui/admin/users/alice", {"pool": "", "role": "admin"}),
                           ("/ui/admin/rebalance", {"apply": "true"})):
            assert alice.post(path, data).status_code == 403, path
    with ui_cluster.api("node1") as admin:
        assert "mallory" not in [u["name"] for u in admin.get("/api/v1/users").json()["items"]]
        assert admin.get("/api/v1/users/alice").json()["role"] == "user"
        assert admin.get("/api/v1/nodes/node2").json()["maintenance"] is False


def test_admin_manages_users_and_pools_with_field_errors(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node2", "admin", ui_cluster.password) as admin:
        page = admin.get("/ui/admin/users")
        assert page.status_code == 200 and "alice" in page.text and "team" in page.text
        bad = admin.post("/ui/admin/users", {"name": "carol", "password": "short", "role": "user"})
        assert bad.status_code == 400 and field_error(bad.text, "password")
        bad_pool = admin.post("/ui/admin/pools", {"pool_name": "lab", "limit_vcpus": "many"})
        assert bad_pool.status_code == 400 and field_error(bad_pool.text, "limit_vcpus")
        assert admin.post("/ui/admin/users", {"name": "carol", "password": "carol-pass-1", "role": "user"}).status_code == 303
        assert admin.post("/ui/admin/pools", {"pool_name": "lab", "limit_vcpus": "4", "limit_ram_mb": "", "description": "the lab"}).status_code == 303
        admin.get("/ui/admin/users")
        assert admin.post("/ui/admin/users/carol", {"pool": "lab", "disabled": "true", "role": "user"}).status_code == 303
        assert admin.post("/ui/admin/pools/lab", {"limit_vcpus": "8", "limit_vms": "2", "description": "bigger"}).status_code == 303
        assert admin.post("/ui/admin/pools/team", {"limit_vcpus": "2", "limit_vms": "3", "networks": "public"}).status_code == 303
        last_admin = admin.post("/ui/admin/users/admin", {"pool": "", "disabled": "true", "role": "admin"})
        assert last_admin.status_code == 409 and field_error(last_admin.text, "user:admin")
    with ui_cluster.api("node1") as api:
        carol = api.get("/api/v1/users/carol").json()
        assert carol["pool"] == "lab" and carol["disabled"] is True
        lab = api.get("/api/v1/pools/lab").json()
        assert lab["limits"]["vcpus"] == 8 and lab["limits"]["vms"] == 2 and lab["limits"].get("ram_mb") is None and lab["description"] == "bigger"
        assert api.get("/api/v1/users/admin").json()["disabled"] is False
        assert api.get("/api/v1/pools/team").json()["networks"] == ["public"]
    assert Browser(ui_cluster.nodes["node1"].url).login("carol", "carol-pass-1").status_code == 401  # disabled


def test_markup_in_names_is_escaped(ui_cluster: LocalCluster) -> None:
    with Browser(ui_cluster.nodes["node1"].url) as browser:
        page = browser.login("<script>x</script>", "nope")
        assert "<script>x</script>" not in page.text and "&lt;script&gt;" in page.text
    with logged_in(ui_cluster, "node1", "bob", "bob-pass-1") as bob:
        bob.get("/ui/account")
        created = bob.post("/ui/account/tokens", {"name": '<img src=x onerror="alert(1)">'})
        assert created.status_code == 201 and "cdt." in created.text
        assert '<img src=x' not in created.text and "&lt;img src=x" in created.text
        bad = bob.post("/ui/vms/new", {"name": "<b>bold</b>", "flavor": "tiny"})
        assert bad.status_code == 400 and "<b>bold</b>" not in bad.text and "&lt;b&gt;bold&lt;/b&gt;" in bad.text


def test_the_session_expires_with_its_token(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node1", "bob", "bob-pass-1") as bob:
        token_id = bob.client.cookies["cloudd_session"].split(".")[1]
        with ui_cluster.api("node1") as admin:
            assert admin.delete(f"/api/v1/tokens/{token_id}").status_code == 200
        wait_for(lambda: bob.get("/ui/vms", follow_redirects=False).status_code == 303, what="the revoked session refused")


def test_a_vm_page_acts_through_the_api_and_shows_refusals(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node3", "bob", "bob-pass-1") as bob:
        network = next(n for n in bob.get("/api/v1/networks").json()["items"] if n["name"] == "public")
        bob.get("/ui/vms/new")
        created = bob.post("/ui/vms/new", {"name": "worker", "flavor": "tiny", "network": network["id"]})
        assert created.status_code == 303 and "?task=t" in created.headers["location"]
        vm_id = created.headers["location"].split("/")[3].split("?")[0]
        wait_for(lambda: bob.client.get(f"/api/v1/vms/{vm_id}").json()["state"] == "stopped", what="worker created")
        address = bob.client.get(f"/api/v1/vms/{vm_id}").json()["nics"][0]["ips"][0]
        assert address in bob.get("/ui/vms").text and address in bob.get("/ui/resources").text
        page = bob.get(f"/ui/vms/{vm_id}")
        assert page.status_code == 200 and f'href="/ui/vms/{vm_id}/console"' in page.text and "node1" not in page.text
        # a refused transition shows the API's message and changes nothing
        refused = bob.post(f"/ui/vms/{vm_id}/power/reset")
        assert refused.status_code == 409 and "needs it running" in refused.text
        assert bob.post(f"/ui/vms/{vm_id}/power/explode").status_code == 404
        added = bob.post(f"/ui/vms/{vm_id}/disks", {"size_gb": "2"})
        assert added.status_code == 303
        disks = bob.client.get(f"/api/v1/vms/{vm_id}").json()["disks"]
        assert [d["size_gb"] for d in disks] == [2]
        assert disks[0]["target"] in bob.get(f"/ui/vms/{vm_id}").text
        assert bob.post(f"/ui/vms/{vm_id}/disks/{disks[0]['id']}/remove").status_code == 303
        assert bob.client.get(f"/api/v1/vms/{vm_id}").json()["disks"] == []
        iso = bob.post(f"/ui/vms/{vm_id}/iso", {"image": "rescue-cd"})
        assert iso.status_code == 303
        assert "Inserted: <strong>rescue-cd</strong>" in bob.get(f"/ui/vms/{vm_id}").text
        assert bob.post(f"/ui/vms/{vm_id}/iso/detach").status_code == 303
        assert bob.client.get(f"/api/v1/vms/{vm_id}").json()["iso"] is None
        again = bob.post(f"/ui/vms/{vm_id}/iso/detach")
        assert again.status_code == 409 and 'class="banner bad" role="alert"' in again.text
        no_iso = bob.post(f"/ui/vms/{vm_id}/iso", {"image": "no-such-cd"})
        assert no_iso.status_code == 404 and field_error(no_iso.text, "image")
        started = bob.post(f"/ui/vms/{vm_id}/power/start")
        assert started.status_code == 303
        wait_for(lambda: bob.client.get(f"/api/v1/vms/{vm_id}").json()["state"] == "running", what="worker running")
        page = bob.get(f"/ui/vms/{vm_id}")
        assert 'data-action="shutdown"' in page.text and 'data-action="start"' not in page.text
        # deleting needs the name typed in
        bob.get(f"/ui/vms/{vm_id}/delete")
        wrong = bob.post(f"/ui/vms/{vm_id}/delete", {"confirm_name": "nope"})
        assert wrong.status_code == 400 and field_error(wrong.text, "confirm_name")
        assert bob.client.get(f"/api/v1/vms/{vm_id}").status_code == 200
        assert bob.post(f"/ui/vms/{vm_id}/delete", {"confirm_name": "worker"}).status_code == 303
        wait_for(lambda: bob.client.get(f"/api/v1/vms/{vm_id}").status_code == 404, what="worker gone")


def test_api_tokens_are_created_shown_once_and_revoked(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node2", "bob", "bob-pass-1") as bob:
        bob.get("/ui/account")
        created = bob.post("/ui/account/tokens", {"name": "ci", "ttl_days": "1"})
        token = re.search(r'<code class="secret">(cdt\.[^<]+)</code>', created.text)
        assert created.status_code == 201 and token is not None
        assert httpx.get(ui_cluster.nodes["node1"].url + "/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token.group(1)}"}).json()["name"] == "bob"
        assert token.group(1) not in bob.get("/ui/account").text  # shown once
        token_id = token.group(1).split(".")[1]
        assert bob.post(f"/ui/account/tokens/{token_id}/revoke").status_code == 303
        wait_for(lambda: httpx.get(ui_cluster.nodes["node1"].url + "/api/v1/auth/whoami", headers={"Authorization": f"Bearer {token.group(1)}"}).status_code == 401, what="token revoked")
        bad = bob.post("/ui/account/tokens", {"name": "x", "ttl_days": "soon"})
        assert bad.status_code == 400 and field_error(bad.text, "ttl_days")


def test_admin_previews_a_rebalance_and_reads_the_audit_log(ui_cluster: LocalCluster) -> None:
    with logged_in(ui_cluster, "node1", "admin", ui_cluster.password) as admin:
        assert "No plan was applied yet" in admin.get("/ui/admin/rebalance").text
        bad = admin.post("/ui/admin/rebalance", {"max_moves": "lots", "apply": "false"})
        assert bad.status_code == 400 and field_error(bad.text, "max_moves")
        too_many = admin.post("/ui/admin/rebalance", {"max_moves": "5000", "apply": "false"})
        assert too_many.status_code == 400 and "1000" in (field_error(too_many.text, "max_moves") or "")
        preview = admin.post("/ui/admin/rebalance", {"max_moves": "3", "apply": "false"})
        assert preview.status_code == 200 and 'id="preview-result"' in preview.text and "Score" in preview.text
        assert admin.post("/ui/admin/rebalance", {"max_moves": "3", "apply": "true"}).status_code == 303
        log = admin.get("/ui/admin/events", params={"op": "user.create"})
        assert log.status_code == 200 and "<code>user.create</code>" in log.text and "<code>vm.create</code>" not in log.text
        assert "alice" in log.text
        # the notices after a change are fixed sentences: a crafted link cannot make the page say something else
        crafted = admin.get("/ui/admin", params={"done": "maintenance", "name": "Your session expired: go to evil.example"})
        assert "evil.example" not in crafted.text
        assert "node2 is in maintenance" in admin.get("/ui/admin", params={"done": "maintenance", "name": "node2"}).text
        assert "evil" not in admin.get("/ui/admin/users", params={"notice": "evil", "done": "evil"}).text
        overview = admin.get("/ui/admin")
        assert overview.status_code == 200 and overview.text.count('class="meter"') == 9 and "No alerts." in overview.text
