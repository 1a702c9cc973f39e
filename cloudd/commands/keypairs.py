"""SSH keypairs (the OpenStack API's ``os-keypairs``): public keys kept by name in the
user's record (``user["keypairs"]``), so they go with the user. Private keys are never
stored: a generated pair's private half is handed to the caller once by the API."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cloudd.commands.common import USER_NAME, get_user
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import Field

MAX_KEYPAIRS_PER_USER = 100
MAX_PUBLIC_KEY = 4 << 10  # bytes; an RSA 16384 key is under 3 KiB
# one line: type, base64 blob, optional comment (no regular-expression backtracking here)
PUBLIC_KEY_RE = re.compile(r"(ssh-(?:rsa|ed25519|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-[a-z0-9@.-]+) ([A-Za-z0-9+/]+={0,3})(?: [^\r\n]*)?")


def public_key_problem(text: str) -> str | None:
    """Why ``text`` is not an OpenSSH public key line (None: it is one): at most 4 KiB,
    ``<type> <base64 blob> [comment]``, and the blob begins with the same type as an
    RFC 4253 string (a 4-byte big-endian length, then the name)."""
    if len(text.encode()) > MAX_PUBLIC_KEY:
        return f"is longer than {MAX_PUBLIC_KEY} bytes"
    match = PUBLIC_KEY_RE.fullmatch(text)
    if match is None:
        return "is not an OpenSSH public key (one line: type, base64 key, optional comment)"
    try:
        blob = base64.b64decode(match[2], validate=True)
    except binascii.Error:
        return "has a key that is not valid base64"
    kind = match[1].encode()
    if int.from_bytes(blob[:4], "big") != len(kind) or blob[4 : 4 + len(kind)] != kind:
        return f"has a key that is not of its type {match[1]}"
    return None


KEYPAIR_NAME = Field("str", pattern=re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,254}$"))
PUBLIC_KEY = Field("str", max_len=MAX_PUBLIC_KEY, check=public_key_problem)
FINGERPRINT = Field("str", pattern=re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){15}$"))


@command("keypair.create", {"user": USER_NAME, "name": KEYPAIR_NAME, "public_key": PUBLIC_KEY, "fingerprint": FINGERPRINT})
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
