"""SSH keypairs (the OpenStack API's ``os-keypairs``): public keys kept by name in the
user's record (``user["keypairs"]``), so they go with the user. Private keys are never
stored: a generated pair's private half is handed to the caller once by the API."""

from __future__ import annotations

import re
from typing import Any

from cloudd.commands.common import USER_NAME, get_user
from cloudd.commands.compute import SSH_KEY
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import Field

KEYPAIR_NAME = Field("str", pattern=re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,254}$"))
FINGERPRINT = Field("str", pattern=re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){15}$"))
MAX_KEYPAIRS_PER_USER = 100


@command("keypair.create", {"user": USER_NAME, "name": KEYPAIR_NAME, "public_key": SSH_KEY, "fingerprint": FINGERPRINT})
def keypair_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Keep a public key under a name unique to its user."""
    user = get_user(state, args["user"])
    pairs = user.setdefault("keypairs", {})
    if args["name"] in pairs:
        raise CloudError("conflict", f"Key pair '{args['name']}' already exists.")
    if len(pairs) >= MAX_KEYPAIRS_PER_USER:
        raise CloudError("quota_exceeded", f"user {args['user']} has {MAX_KEYPAIRS_PER_USER} keypairs already (the most one may have)")
    pairs[args["name"]] = {"name": args["name"], "public_key": args["public_key"], "fingerprint": args["fingerprint"], "created_at": ctx.ts}
    return dict(pairs[args["name"]])


@command("keypair.delete", {"user": USER_NAME, "name": KEYPAIR_NAME})
def keypair_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Forget a public key (VMs given it keep it)."""
    user = get_user(state, args["user"])
    pairs = user.get("keypairs") or {}
    if args["name"] not in pairs:
        raise CloudError("not_found", f"Keypair {args['name']} not found.")
    del pairs[args["name"]]
    return {"name": args["name"]}
