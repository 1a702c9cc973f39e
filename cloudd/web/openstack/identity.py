"""Keystone v3 under ``/identity``: version documents, password tokens, the catalog.

A Keystone token is a cloudd login session (``routes_users``: the same rate-limited
password check, the same replicated ``token.create``) of one hour: clients log in again
for every command, so these pile up, and at the user's token cap the newest replaces the
oldest session. Every node accepts it and ``DELETE /identity/v3/auth/tokens``
(``token.revoke``) ends it everywhere. The project a token is scoped to is the user's pool
or their own project (``mapping.project_of``), checked before the session is made.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.errors import CloudError
from cloudd.security import parse_token
from cloudd.validate import Field, check_args
from cloudd.web.auth import TOKEN_PREFIX, Principal, user_from_token
from cloudd.web.http import json_response
from cloudd.web.openstack.common import (
    SUBJECT_TOKEN_HEADER,
    OsApi,
    base_url,
    read_wrapped,
)
from cloudd.web.openstack.errors import keystone_guarded
from cloudd.web.openstack.mapping import DOMAIN, REGION, iso_micro, project_of
from cloudd.web.routes_users import issue_token, password_checked

V3_UPDATED = "2024-04-01T00:00:00Z"
NO_EXPIRY_S = 365 * 86400.0  # what a token without expiry claims (clients want a date)
KEYSTONE_TTL_S = 3600.0
KEYSTONE_TOKEN_NAME = "openstack"
NAMED = {"id": Field("str", max_len=255, required=False), "name": Field("str", max_len=255, required=False)}
DOMAIN_REF = Field("obj", spec=NAMED, required=False)
USER = Field("obj", spec={**NAMED, "domain": DOMAIN_REF, "password": Field("str", max_len=1024)})
IDENTITY = {
    "methods": Field("list", max_len=2, item=Field("str", max_len=32)),
    "password": Field("obj", spec={"user": USER}, required=False),
    "token": Field("obj", spec={"id": Field("str", max_len=255)}, required=False),
}
SCOPE = {
    "project": Field("obj", spec={**NAMED, "domain": DOMAIN_REF}, required=False),
    "domain": Field("dict", required=False),
    "system": Field("dict", required=False),
}
AUTH = {"identity": Field("obj", spec=IDENTITY), "scope": Field("obj", spec=SCOPE, required=False)}

# (catalog type, name, path on this node)
SERVICES = (
    ("identity", "keystone", "/identity"),
    ("compute", "nova", "/compute/v2.1"),
    ("image", "glance", "/image"),
    ("network", "neutron", "/network"),
    ("block-storage", "cinder", "/volume/v3"),
    ("volumev3", "cinderv3", "/volume/v3"),
)


def v3_document(base: str) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": V3_UPDATED,
        "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }


def catalog(base: str) -> list[dict[str, Any]]:
    """Every service at this node's own absolute URL (the node the client asked)."""
    out = []
    for kind, name, path in SERVICES:
        service_id = hashlib.sha256(kind.encode()).hexdigest()[:32]
        endpoint = {"id": service_id[:16] + "public", "interface": "public", "region": REGION, "region_id": REGION, "url": base + path}
        out.append({"id": service_id, "type": kind, "name": name, "endpoints": [endpoint]})
    return out


def _domain_ok(domain: dict[str, Any] | None) -> bool:
    if domain is None:
        return True
    return domain.get("id", "default") == DOMAIN["id"] and domain.get("name", DOMAIN["name"]).lower() == DOMAIN["name"].lower()


def routes(os_api: OsApi) -> list[Route]:
    api = os_api.api
    runtime = os_api.runtime

    def token_body(principal: Principal, methods: list[str], base: str) -> dict[str, Any]:
        with runtime.raft.lock:
            state = runtime.raft.state
            project = project_of(state, principal.name)
            token = state.tokens.get(principal.token_id or "") or {}
        issued = float(token.get("created_at") or time.time())
        expires = token.get("expires_at") or time.time() + NO_EXPIRY_S
        roles = [{"id": "member", "name": "member"}, {"id": "reader", "name": "reader"}]
        if principal.is_admin:
            roles.append({"id": "admin", "name": "admin"})
        return {
            "token": {
                "methods": methods,
                "user": {"id": principal.name, "name": principal.name, "domain": dict(DOMAIN), "password_expires_at": None},
                "project": project,
                "roles": roles,
                "is_domain": False,
                "issued_at": iso_micro(issued),
                "expires_at": iso_micro(float(expires)),
                "audit_ids": [principal.token_id],
                "catalog": catalog(base),
            }
        }

    def check_scope(user: str, scope: dict[str, Any] | None) -> None:
        """A token is scoped to the user's own project only (401 otherwise, as Keystone)."""
        if not scope:
            return
        if "project" not in scope:
            raise CloudError("unauthenticated", "only project-scoped tokens are issued here")
        wanted = scope["project"]
        with runtime.raft.lock:
            project = project_of(runtime.raft.state, user)
        if not _domain_ok(wanted.get("domain")) or wanted.get("id", project["id"]) != project["id"] or wanted.get("name", project["name"]) != project["name"]:
            raise CloudError("unauthenticated", f"user {user} has no access to that project (theirs is {project['name']}, id {project['id']})")

    def subject(request: Request) -> Principal:
        """The token ``X-Subject-Token`` names, if still valid (404 otherwise)."""
        principal = user_from_token(runtime, request.headers.get(SUBJECT_TOKEN_HEADER, "").strip(), time.time())
        if principal is None:
            raise CloudError("not_found", "the subject token is invalid, expired or revoked")
        return principal

    @keystone_guarded
    async def versions(request: Request) -> Response:
        return json_response({"versions": {"values": [v3_document(base_url(request))]}}, status=300)

    @keystone_guarded
    async def v3(request: Request) -> Response:
        return json_response({"version": v3_document(base_url(request))})

    @keystone_guarded
    async def tokens_create(request: Request) -> Response:
        """Password auth (user by name or id, domain Default), or a token for a token."""
        auth = await read_wrapped(request, "auth", AUTH)
        identity = auth["identity"]
        methods = identity["methods"]
        if "password" in methods and "password" in identity:
            user = identity["password"]["user"]
            name = user.get("id") or user.get("name")
            if not name or not _domain_ok(user.get("domain")):
                raise CloudError("unauthenticated", "wrong username or password")
            record = await password_checked(api, request, name, user["password"])
            check_scope(record["name"], auth.get("scope"))  # before a session is made (one may take the oldest's place)
            data, index = await issue_token(api, request, None, record["name"], KEYSTONE_TOKEN_NAME, "session", KEYSTONE_TTL_S)
            await api.runtime.proposer.wait_applied(index)
            token = data["token"]
            principal = user_from_token(runtime, token, time.time())
        elif "token" in methods and "token" in identity:
            token = identity["token"]["id"]
            principal = user_from_token(runtime, token, time.time())
            if principal is not None:
                check_scope(principal.name, auth.get("scope"))
        else:
            raise CloudError("invalid", "use the password (or token) method")
        if principal is None:
            raise CloudError("unauthenticated", "the token is invalid, expired or revoked")
        body = token_body(principal, [m for m in methods if m in ("password", "token")], base_url(request))
        return json_response(body, status=201, headers={SUBJECT_TOKEN_HEADER: token})

    @keystone_guarded
    async def tokens_show(request: Request) -> Response:
        """Validate ``X-Subject-Token`` (one's own, or anyone's for an admin); HEAD too."""
        caller = await os_api.principal(request)
        target = subject(request)
        if target.name != caller.name and not caller.is_admin:
            raise CloudError("not_found", "the subject token is invalid, expired or revoked")
        return json_response(token_body(target, ["password"], base_url(request)), headers={SUBJECT_TOKEN_HEADER: request.headers[SUBJECT_TOKEN_HEADER]})

    @keystone_guarded
    async def tokens_revoke(request: Request) -> Response:
        """Revoke ``X-Subject-Token`` (one's own, or anyone's for an admin): 204."""
        caller = await os_api.principal(request)
        target = subject(request)
        parts = parse_token(request.headers[SUBJECT_TOKEN_HEADER].strip(), TOKEN_PREFIX)
        if parts is None or (target.name != caller.name and not caller.is_admin):
            raise CloudError("not_found", "the subject token is invalid, expired or revoked")
        args: dict[str, Any] = {"token_id": parts.token_id}
        if not caller.is_admin:
            args["user"] = caller.name
        check_args(args, {"token_id": Field("str", max_len=64), "user": Field("str", max_len=64, required=False)})
        await api.commit(request, caller, "token.revoke", args)
        return Response(status_code=204)

    @keystone_guarded
    async def catalog_show(request: Request) -> Response:
        await os_api.principal(request)
        return json_response({"catalog": catalog(base_url(request)), "links": {"self": f"{base_url(request)}/identity/v3/auth/catalog"}})

    @keystone_guarded
    async def projects_mine(request: Request) -> Response:
        principal = await os_api.principal(request)
        with runtime.raft.lock:
            project = project_of(runtime.raft.state, principal.name)
        entry = {**project, "domain_id": DOMAIN["id"], "enabled": True, "is_domain": False, "parent_id": DOMAIN["id"], "description": ""}
        return json_response({"projects": [entry], "links": {"self": f"{base_url(request)}/identity/v3/auth/projects"}})

    @keystone_guarded
    async def user_show(request: Request) -> Response:
        principal = await os_api.principal(request)
        name = request.path_params["user_id"]
        if name != principal.name and not principal.is_admin:
            raise CloudError("forbidden", "you may only look at yourself")
        with runtime.raft.lock:
            user = runtime.raft.state.users.get(name)
            project = project_of(runtime.raft.state, name) if user else None
        if user is None or project is None:
            raise CloudError("not_found", f"user {name} not found")
        view = {"id": name, "name": name, "domain_id": DOMAIN["id"], "enabled": not user.get("disabled"), "default_project_id": project["id"], "password_expires_at": None}
        return json_response({"user": view})

    return [
        Route("/identity", versions, methods=["GET"]),
        Route("/identity/", versions, methods=["GET"]),
        Route("/identity/v3", v3, methods=["GET"]),
        Route("/identity/v3/", v3, methods=["GET"]),
        Route("/identity/v3/auth/tokens", tokens_create, methods=["POST"]),
        Route("/identity/v3/auth/tokens", tokens_show, methods=["GET"]),
        Route("/identity/v3/auth/tokens", tokens_revoke, methods=["DELETE"]),
        Route("/identity/v3/auth/catalog", catalog_show, methods=["GET"]),
        Route("/identity/v3/auth/projects", projects_mine, methods=["GET"]),
        Route("/identity/v3/users/{user_id}", user_show, methods=["GET"]),
    ]
