"""Users and API tokens. Secrets arrive already hashed; no handler sees a password."""

from __future__ import annotations

from typing import Any

from cloudd.commands.common import (
    OBJECT_ID,
    PASSWORD_HASH,
    SHA256_HEX,
    USER_NAME,
    get_user,
    require_initialized,
)
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import Field

USER_ROLES = ("admin", "user")
MAX_TOKENS_PER_USER = 100


@command("user.create", {"name": USER_NAME, "role": Field("str", choices=USER_ROLES), "password_hash": PASSWORD_HASH}, volatile=("password_hash",))
def user_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Create a user with an already hashed password."""
    require_initialized(state)
    if args["name"] in state.users:
        raise CloudError("conflict", f"user {args['name']} already exists")
    state.users[args["name"]] = {
        "name": args["name"],
        "role": args["role"],
        "password_hash": args["password_hash"],
        "created_at": ctx.ts,
        "disabled": False,
    }
    return {"name": args["name"], "role": args["role"]}


@command("user.delete", {"name": USER_NAME})
def user_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Delete a user and revoke all of their tokens; the last admin cannot go."""
    user = get_user(state, args["name"])
    if user["role"] == "admin" and sum(1 for u in state.users.values() if u["role"] == "admin") <= 1:
        raise CloudError("conflict", "cannot delete the last admin")
    for kind, records in (("VMs", state.vms), ("volumes", state.volumes), ("images", state.images), ("networks", state.networks)):
        owned = sorted(r["name"] for r in records.values() if r["owner"] == args["name"])
        if owned:
            raise CloudError("conflict", f"user {args['name']} still owns {kind}: {', '.join(owned[:5])}", {kind.lower(): owned})
    del state.users[args["name"]]
    for token_id in [t for t, tok in state.tokens.items() if tok["user"] == args["name"]]:
        del state.tokens[token_id]
    return {"name": args["name"]}


@command(
    "user.password_set",
    {"name": USER_NAME, "password_hash": PASSWORD_HASH, "keep_token_id": Field("str", pattern=OBJECT_ID.pattern, required=False)},
    volatile=("password_hash",),
)
def user_password_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Replace a user's password hash and end their login sessions (but ``keep_token_id``).

    API tokens stay: they were created on purpose and are revoked on purpose.
    """
    user = get_user(state, args["name"])
    user["password_hash"] = args["password_hash"]
    user["password_changed_at"] = ctx.ts
    ended = [
        t for t, tok in state.tokens.items()
        if tok["user"] == args["name"] and tok["kind"] == "session" and t != args.get("keep_token_id")
    ]
    for token_id in ended:
        del state.tokens[token_id]
    return {"name": args["name"], "sessions_ended": len(ended)}


@command(
    "token.create",
    {
        "token_id": OBJECT_ID,
        "user": USER_NAME,
        "secret_sha256": SHA256_HEX,
        "name": Field("str", max_len=64),
        "expires_at": Field("num", min=0, nullable=True),
        "kind": Field("str", choices=("api", "session"), required=False),
    },
    target="token_id",
    volatile=("expires_at",),
)
def token_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Store an API or session token's hash for a user.

    A user holds at most ``MAX_TOKENS_PER_USER`` unexpired tokens. At that cap a new
    login session takes the place of the user's oldest one (earliest ``created_at``, then
    lowest id), so logging in always works and the cap still bounds what a user holds;
    API tokens are made on purpose and never evicted: a new one at the cap is a 409, and
    so is a login when every token held is an API token.
    """
    get_user(state, args["user"])
    if args["token_id"] in state.tokens:
        raise CloudError("conflict", "token id already exists")
    if args["expires_at"] is not None and args["expires_at"] <= ctx.ts:
        raise CloudError("invalid", "expires_at must be in the future")
    kind = args.get("kind", "api")

    def expired(tok: dict[str, Any]) -> bool:
        return tok["expires_at"] is not None and tok["expires_at"] <= ctx.ts

    held = [(tok["created_at"], t, tok["kind"]) for t, tok in state.tokens.items() if tok["user"] == args["user"] and not expired(tok)]
    over = len(held) + 1 - MAX_TOKENS_PER_USER
    evicted: list[str] = []
    if over > 0:
        sessions = sorted((created, t) for created, t, held_kind in held if held_kind == "session")
        if kind != "session" or len(sessions) < over:
            raise CloudError(
                "conflict",
                f"user {args['user']} already has {MAX_TOKENS_PER_USER} tokens"
                + (": revoke an API token first" if kind == "session" else " (login sessions make room for new logins, API tokens do not): revoke one first"),
            )
        evicted = [t for _, t in sessions[:over]]
    for token_id in [t for t, tok in state.tokens.items() if expired(tok)] + evicted:
        del state.tokens[token_id]
    state.tokens[args["token_id"]] = {
        "id": args["token_id"],
        "user": args["user"],
        "secret_sha256": args["secret_sha256"],
        "name": args["name"],
        "kind": kind,
        "created_at": ctx.ts,
        "expires_at": args["expires_at"],
    }
    result: dict[str, Any] = {"token_id": args["token_id"], "user": args["user"], "expires_at": args["expires_at"]}
    if evicted:
        result["sessions_ended"] = evicted
    return result


@command("token.revoke", {"token_id": OBJECT_ID, "user": Field("str", pattern=USER_NAME.pattern, required=False)}, target="token_id")
def token_revoke(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Revoke a token; with ``user`` given, only that user's token."""
    token = state.tokens.get(args["token_id"])
    if token is None or ("user" in args and token["user"] != args["user"]):
        raise CloudError("not_found", f"token {args['token_id']} not found")
    del state.tokens[args["token_id"]]
    return {"token_id": args["token_id"]}
