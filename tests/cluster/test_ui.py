"""The web UI's first page: login form, session cookie, dashboard, logout."""

from __future__ import annotations

import httpx
import pytest

from tests.cluster.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_anonymous_visitors_are_sent_to_the_login_page(shared_cluster: LocalCluster) -> None:
    url = shared_cluster.nodes["node2"].url
    reply = httpx.get(url + "/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"] == "/login"
    page = httpx.get(url + "/login")
    assert page.status_code == 200 and 'name="password"' in page.text
    assert httpx.get(url + "/static/style.css").status_code == 200


def test_login_shows_the_dashboard_and_logout_ends_the_session(shared_cluster: LocalCluster) -> None:
    with httpx.Client(base_url=shared_cluster.nodes["node3"].url) as browser:
        bad = browser.post("/login", data={"username": "admin", "password": "wrong"})
        assert bad.status_code == 401 and "wrong username or password" in bad.text
        ok = browser.post("/login", data={"username": "admin", "password": shared_cluster.password}, follow_redirects=False)
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        page = browser.get("/")
        assert page.status_code == 200
        for name in ("node1", "node2", "node3"):
            assert name in page.text
        assert "Leader:" in page.text and "admin (admin)" in page.text
        out = browser.post("/logout", follow_redirects=False)
        assert out.status_code == 303
        assert browser.get("/", follow_redirects=False).status_code == 303


def test_markup_in_names_is_escaped(shared_cluster: LocalCluster) -> None:
    with httpx.Client(base_url=shared_cluster.nodes["node1"].url) as browser:
        page = browser.post("/login", data={"username": "<script>x</script>", "password": "nope"})
        assert "<script>x</script>" not in page.text and "&lt;script&gt;" in page.text


def test_a_user_sees_a_home_page_without_the_infrastructure(shared_cluster: LocalCluster) -> None:
    with shared_cluster.api("node1") as client:
        client.post("/api/v1/users", json={"name": "uiuser", "password": "ui-user-pass-1"})
    with httpx.Client(base_url=shared_cluster.nodes["node1"].url) as browser:
        ok = browser.post("/login", data={"username": "uiuser", "password": "ui-user-pass-1"}, follow_redirects=True)
        assert ok.status_code == 200 and "Welcome, uiuser" in ok.text
        assert "node2" not in ok.text and "node3" not in ok.text and "Leader:" not in ok.text
