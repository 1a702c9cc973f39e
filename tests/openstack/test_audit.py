"""Writes to the OpenStack services that are refused before they reach the Raft log leave
an audit line on the refusing node, as ``/api/v1`` writes do (``cloudd.web.audit``)."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

from cloudd.web.audit import RefusedWriteAudit
from tests.openstack.fake import PASSWORD, Cloud


@pytest.fixture
def cloud() -> Cloud:
    cloud = Cloud()
    cloud.app = Starlette(routes=cloud.app.routes, middleware=[Middleware(RefusedWriteAudit)])
    return cloud


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cloudd.audit"]


def login(user: str, password: str) -> dict:
    return {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}}}}


def test_a_failed_keystone_login_leaves_an_audit_line_without_the_password(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudd.audit")
    assert cloud.request("POST", "/identity/v3/auth/tokens", json=login("alice", "guessed-pass-1")).status_code == 401
    [line] = audit_lines(caplog)
    assert "method=POST path=/identity/v3/auth/tokens status=401 actor=anonymous" in line and "guessed" not in line
    assert cloud.request("POST", "/identity/v3/auth/tokens", json=login("alice", PASSWORD)).status_code == 201
    assert len(audit_lines(caplog)) == 1


@pytest.mark.parametrize(
    "method, path, body, actor",
    [
        ("POST", "/compute/v2.1/servers", {"server": {"name": "Bad Name", "flavorRef": "tiny", "imageRef": "img1"}}, "user:alice"),
        ("DELETE", "/compute/v2.1/os-keypairs/nope", None, "user:alice"),
        ("POST", "/volume/v3/volumes", {"volume": {"size": 0}}, "user:alice"),
        ("DELETE", "/identity/v3/auth/tokens", None, "user:alice"),
        ("POST", "/network/v2.0/networks", {"network": {}}, "anonymous"),  # not served: refused before anyone is asked
        ("PUT", "/image/v2/images/img1", {}, "anonymous"),
    ],
)
def test_refused_openstack_writes_are_audited_with_who_asked(
    cloud: Cloud, caplog: pytest.LogCaptureFixture, method: str, path: str, body: dict | None, actor: str
) -> None:
    caplog.set_level(logging.INFO, logger="cloudd.audit")
    reply = cloud.request(method, path, cloud.token("alice"), json=body)
    assert reply.status_code >= 400
    [line] = audit_lines(caplog)
    assert f"method={method} path={path} status={reply.status_code} actor={actor} " in line


def test_a_refusal_inside_the_log_is_its_event_not_an_audit_line(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cloudd.audit")
    over = cloud.create_server(cloud.token("bob"), "huge", flavor="big")
    assert over.status_code == 403 and over.headers["X-Cloudd-Index"]
    assert audit_lines(caplog) == []
    assert cloud.state.events[-1]["op"] == "vm.create" and cloud.state.events[-1]["outcome"] == "quota_exceeded"
