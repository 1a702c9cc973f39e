"""/api/v1/auth, /api/v1/users, /api/v1/tokens, /api/v1/events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.common import USER_NAME
from cloudd.commands.pools import POOL_NAME_RE
from cloudd.commands.users import USER_ROLES
from cloudd.errors import CloudError
from cloudd.security import derived_token, hash_password, new_token, sha256_hex, verify_password
from cloudd.validate import Field
from cloudd.web.api import Api, page
from cloudd.web.auth import SESSION_COOKIE, TOKEN_PREFIX, Principal, require_admin
from cloudd.web.http import guarded, json_response, read_json, request_id
from cloudd.web.openapi import ApiRoute, Doc, Param
from cloudd.web.schemas import BOOL, INT, STR, obj

PASSWORD = Field("str", max_len=1024, check=lambda v: None if len(v) >= 8 else "must be at least 8 characters")
LOGIN = {"username": Field("str", max_len=64), "password": Field("str", max_len=1024)}
USER_CREATE = {"name": USER_NAME, "role": Field("str", choices=USER_ROLES, required=False), "password": PASSWORD}
USER_PASSWORD = {"password": PASSWORD, "current_password": Field("str", max_len=1024, required=False)}
USER_UPDATE = {
    "pool": Field("str", pattern=POOL_NAME_RE, nullable=True, required=False),
    "disabled": Field("bool", required=False),
    "role": Field("str", choices=USER_ROLES, required=False),
}
SESSION_TTL_S = 12 * 3600.0
MAX_TOKEN_TTL_S = 10 * 365 * 86400.0
TOKEN_CREATE = {"name": Field("str", max_len=64), "ttl_seconds": Field("num", min=60, max=MAX_TOKEN_TTL_S, required=False)}
# a hash to verify against when the user does not exist, so timing tells nothing
_DUMMY_HASH = hash_password("cloudd-dummy-password")


# what /api/v1/users shows of a user record: never the password hash, and not the
# keypairs (up to 100 keys each; a user's own are at /compute/v2.1/os-keypairs)
USER_FIELDS = ("name", "role", "disabled", "pool", "created_at", "updated_at", "password_changed_at")


def user_view(user: dict[str, Any]) -> dict[str, Any]:
    return {k: user[k] for k in USER_FIELDS if k in user}


def token_view(token: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in token.items() if k != "secret_sha256"}


async def issue_token(api: Api, request: Request, principal: Principal | None, user: str, name: str, kind: str, ttl: float | None) -> tuple[dict[str, Any], int]:
    rid = request_id(request)
    token = derived_token(api.runtime.secret, TOKEN_PREFIX, user, rid) if rid else new_token(TOKEN_PREFIX)
    expires_at = None if ttl is None else time.time() + ttl
    args = {
        "token_id": token.token_id,
        "user": user,
        "secret_sha256": sha256_hex(token.secret),
        "name": name,
        "expires_at": expires_at,
        "kind": kind,
    }
    actor_principal = principal or Principal("user", user, "user")
    result, index = await api.commit(request, actor_principal, "token.create", args)
    return {"token": str(token), "token_id": token.token_id, "user": user, "expires_at": expires_at, "name": name}, index


async def password_checked(api: Api, request: Request, username: str, password: str) -> dict[str, Any]:
    """The record of ``username`` once ``password`` is checked against it (rate-limited
    per user and address); 401 for a wrong password or an unknown or disabled user."""
    runtime = api.runtime
    now = time.time()
    addr = request.client.host if request.client else "?"
    keys = [f"user:{username}", f"addr:{addr}"]
    api.login_limiter.check(keys, now)
    # count the attempt before the (slow) check, so concurrent guesses are counted too
    api.login_limiter.fail(keys, now)
    with runtime.raft.lock:
        user = runtime.raft.state.users.get(username)
        user = None if user is None else dict(user)
    encoded = user["password_hash"] if user and not user.get("disabled") else _DUMMY_HASH
    async with api.password_checks:  # each check takes 16 MiB and ~50 ms of a core
        valid = await asyncio.to_thread(verify_password, password, encoded)
    if not valid or user is None or user.get("disabled"):
        raise CloudError("unauthenticated", "wrong username or password")
    api.login_limiter.succeed(keys)
    return user


async def password_login_indexed(api: Api, request: Request, username: str, password: str) -> tuple[dict[str, Any], int]:
    """Check a password and issue a session token (at the user's token cap it replaces
    their oldest session: ``token.create``)."""
    user = await password_checked(api, request, username, password)
    data, index = await issue_token(api, request, None, user["name"], "login", "session", SESSION_TTL_S)
    data["role"] = user["role"]
    return data, index


async def password_login(api: Api, request: Request, username: str, password: str) -> dict[str, Any]:
    return (await password_login_indexed(api, request, username, password))[0]


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    @guarded
    async def login(request: Request) -> Response:
        body = await read_json(request, LOGIN)
        data, index = await password_login_indexed(api, request, body["username"], body["password"])
        response = json_response(data, index=index)
        response.set_cookie(SESSION_COOKIE, data["token"], max_age=int(SESSION_TTL_S), httponly=True, samesite="strict")
        return response

    @guarded
    async def logout(request: Request) -> Response:
        principal = await api.principal(request)
        if principal.token_id is None:
            raise CloudError("invalid", "only a token can log out")
        _, index = await api.commit(request, principal, "token.revoke", {"token_id": principal.token_id})
        response = json_response({"logged_out": True}, index=index)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @guarded
    async def whoami(request: Request) -> Response:
        principal = await api.principal(request)
        with runtime.raft.lock:
            user = runtime.raft.state.users.get(principal.name) if principal.kind == "user" else None
            pool = user.get("pool") if user else None
        return json_response({"kind": principal.kind, "name": principal.name, "role": principal.role, "pool": pool})

    @guarded
    async def users_list(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        with runtime.raft.lock:
            items = [user_view(u) for u in runtime.raft.state.users.values()]
        items.sort(key=lambda u: u["name"])
        return json_response(page(items, request))

    @guarded
    async def users_create(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, USER_CREATE)
        password_hash = await asyncio.to_thread(hash_password, body["password"])
        args = {"name": body["name"], "role": body.get("role", "user"), "password_hash": password_hash}
        result, index = await api.commit(request, principal, "user.create", args)
        return json_response(result, status=201, index=index)

    @guarded
    async def users_show(request: Request) -> Response:
        principal = await api.principal(request)
        name = request.path_params["name"]
        if not principal.is_admin and principal.name != name:
            raise CloudError("not_found", f"user {name} not found")
        await api.fresh(request)
        with runtime.raft.lock:
            user = runtime.raft.state.users.get(name)
            view = None if user is None else user_view(user)
        if view is None:
            raise CloudError("not_found", f"user {name} not found")
        return json_response(view)

    @guarded
    async def users_delete(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        result, index = await api.commit(request, principal, "user.delete", {"name": request.path_params["name"]})
        return json_response(result, index=index)

    @guarded
    async def users_update(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, USER_UPDATE)
        result, index = await api.commit(request, principal, "user.update", {"name": request.path_params["name"], **body})
        return json_response(user_view(result), index=index)

    @guarded
    async def users_password(request: Request) -> Response:
        principal = await api.principal(request)
        name = request.path_params["name"]
        if not principal.is_admin and principal.name != name:
            raise CloudError("not_found", f"user {name} not found")
        body = await read_json(request, USER_PASSWORD)
        if principal.kind == "user" and principal.name == name:
            # a stolen session must not be enough to take the account over
            if "current_password" not in body:
                raise CloudError("invalid", "current_password is required to change your own password")
            with runtime.raft.lock:
                user = runtime.raft.state.users.get(name)
                encoded = user["password_hash"] if user else _DUMMY_HASH
            async with api.password_checks:
                valid = await asyncio.to_thread(verify_password, body["current_password"], encoded)
            if not valid:
                raise CloudError("forbidden", "current_password is wrong")
        password_hash = await asyncio.to_thread(hash_password, body["password"])
        args: dict[str, Any] = {"name": name, "password_hash": password_hash}
        if principal.kind == "user" and principal.name == name and principal.token_id:
            args["keep_token_id"] = principal.token_id
        result, index = await api.commit(request, principal, "user.password_set", args)
        return json_response(result, index=index)

    @guarded
    async def tokens_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        everyone = principal.is_admin and request.query_params.get("all") == "true"
        with runtime.raft.lock:
            items = [token_view(t) for t in runtime.raft.state.tokens.values() if everyone or t["user"] == principal.name]
        items.sort(key=lambda t: (t["user"], t["created_at"]))
        return json_response(page(items, request))

    @guarded
    async def tokens_create(request: Request) -> Response:
        principal = await api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "only users hold API tokens")
        body = await read_json(request, TOKEN_CREATE)
        data, index = await issue_token(api, request, principal, principal.name, body["name"], "api", body.get("ttl_seconds"))
        return json_response(data, status=201, index=index)

    @guarded
    async def tokens_revoke(request: Request) -> Response:
        principal = await api.principal(request)
        args: dict[str, Any] = {"token_id": request.path_params["token_id"]}
        if not principal.is_admin:
            args["user"] = principal.name
        result, index = await api.commit(request, principal, "token.revoke", args)
        return json_response(result, index=index)

    @guarded
    async def events_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        op = request.query_params.get("op")
        target = request.query_params.get("target")  # e.g. a VM's id: its history
        with runtime.raft.lock:
            events = [
                e
                for e in reversed(runtime.raft.state.events)
                if (principal.is_admin or e["actor"].get("user") == principal.name)
                and (op is None or e["op"] == op)
                and (target is None or e.get("target") == target)
            ]
        return json_response(page(events, request))

    return [
        ApiRoute("/api/v1/auth/login", login, "POST", Doc(
            "Log in with a password: a session token (12 h), also set as the cloudd_session cookie", "public", "auth", body=LOGIN, response="Session",
            description="10 failures per 5 minutes per user or per address: 429 until the window passes. A user holds at most 100 unexpired "
            "tokens: at that cap a new session replaces the user's oldest session (API tokens are never replaced; 409 if all 100 are API tokens).",
        )),
        ApiRoute("/api/v1/auth/logout", logout, "POST", Doc("Revoke the token this request uses", "user", "auth", response=obj(["logged_out"], logged_out=BOOL))),
        ApiRoute("/api/v1/auth/whoami", whoami, "GET", Doc("Who the credentials belong to", "user", "auth", response="Whoami", fresh=False)),
        ApiRoute("/api/v1/users", users_list, "GET", Doc("Users (never password hashes)", "admin", "users", response="User", paged=True)),
        ApiRoute("/api/v1/users", users_create, "POST", Doc("Create a user (role user by default)", "admin", "users", body=USER_CREATE, response="User", status=201)),
        ApiRoute("/api/v1/users/{name}", users_show, "GET", Doc("One user (a user: only themselves)", "owner", "users", response="User")),
        ApiRoute("/api/v1/users/{name}", users_delete, "DELETE", Doc(
            "Delete a user and revoke their tokens", "admin", "users", response="Named",
            description="Refused (409) for the last admin and for a user who still owns VMs.",
        )),
        ApiRoute("/api/v1/users/{name}", users_update, "PATCH", Doc(
            "Put a user in a pool (null: none), disable or enable them, change their role", "admin", "users", body=USER_UPDATE, response="User",
            description="Disabling ends the user's login sessions; the last enabled admin cannot be disabled or demoted (409).",
        )),
        ApiRoute("/api/v1/users/{name}/password", users_password, "POST", Doc(
            "Set a user's password; their other login sessions end", "owner", "users", body=USER_PASSWORD,
            response=obj(["name", "sessions_ended"], name=STR, sessions_ended=INT),
            description="Changing your own password needs `current_password` (403 when wrong). API tokens stay valid.",
        )),
        ApiRoute("/api/v1/tokens", tokens_list, "GET", Doc(
            "Your tokens (login sessions and API tokens)", "user", "tokens", response="Token", paged=True,
            query={"all": Param("`true`: everyone's tokens (admins; ignored for users)")},
        )),
        ApiRoute("/api/v1/tokens", tokens_create, "POST", Doc(
            "Create an API token; its secret is shown once", "user", "tokens", body=TOKEN_CREATE, response="NewToken", status=201,
            description="409 when the user already holds 100 unexpired tokens (sessions and API tokens together).",
        )),
        ApiRoute("/api/v1/tokens/{token_id}", tokens_revoke, "DELETE", Doc("Revoke a token", "owner", "tokens", response=obj(["token_id"], token_id=STR))),
        ApiRoute("/api/v1/events", events_list, "GET", Doc(
            "Audit events, newest first (a user: the ones they caused)", "user", "events", response="Event", paged=True,
            query={"op": Param("only this command, e.g. vm.create"), "target": Param("only events about this object, e.g. a VM's id: its history")},
        )),
    ]
