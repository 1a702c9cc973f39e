"""Cluster-wide commands: creating the cluster and admitting new nodes."""

from __future__ import annotations

from typing import Any

from cloudd.commands.common import (
    ADDRESS,
    NODE_NAME,
    OBJECT_ID,
    PASSWORD_HASH,
    TIMESTAMP,
    USER_NAME,
    get_node,
    require_initialized,
)
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import HEX_RE, Field

ROLES = ("hypervisor", "storage")
MEMBERSHIPS = ("voter", "replica")


def new_node(name: str, raft_addr: str | None, api_addr: str, membership: str, ts: float) -> dict[str, Any]:
    return {
        "name": name,
        "raft_addr": raft_addr,
        "api_addr": api_addr,
        "membership": membership,
        "roles": [],
        "inventory": {},
        "maintenance": False,
        "status": "down",
        "status_since": ts,
        "lease_seq": 0,
        "last_heartbeat": None,
        "admitted_at": ts,
        "registered_at": None,
        "usage": {},
    }


@command(
    "cluster.init",
    {
        "cluster_id": OBJECT_ID,
        "name": Field("str", max_len=64),
        "max_voters": Field("int", choices=(1, 3, 5)),
        "admin": Field("obj", spec={"name": USER_NAME, "password_hash": PASSWORD_HASH}),
        "node": Field("obj", spec={"name": NODE_NAME, "raft_addr": ADDRESS, "api_addr": ADDRESS}),
    },
    target="cluster_id",
)
def cluster_init(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Create the cluster once: its identity, the first admin and the first (voting) node."""
    if state.cluster:  # initialized, or being restored
        raise CloudError("conflict", "the cluster is already initialized", {"cluster_id": state.cluster.get("id")})
    state.cluster = {
        "id": args["cluster_id"],
        "name": args["name"],
        "max_voters": args["max_voters"],
        "created_at": ctx.ts,
    }
    admin = args["admin"]
    state.users[admin["name"]] = {
        "name": admin["name"],
        "role": "admin",
        "password_hash": admin["password_hash"],
        "created_at": ctx.ts,
        "disabled": False,
    }
    node = args["node"]
    state.nodes[node["name"]] = new_node(node["name"], node["raft_addr"], node["api_addr"], "voter", ctx.ts)
    return {"cluster_id": args["cluster_id"]}


@command(
    "cluster.join_token_create",
    {
        "token_id": OBJECT_ID,
        "key": Field("str", pattern=HEX_RE, max_len=128),
        "expires_at": TIMESTAMP,
    },
    target="token_id",
    volatile=("expires_at",),
)
def join_token_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Store a one-time join token (its key never leaves the replicas)."""
    require_initialized(state)
    if args["token_id"] in state.join_tokens:
        raise CloudError("conflict", "join token id already exists")
    if args["expires_at"] <= ctx.ts:
        raise CloudError("invalid", "expires_at must be in the future")
    # drop expired tokens so the table stays small
    for token_id in [t for t, v in state.join_tokens.items() if v["expires_at"] <= ctx.ts or v["used_by"]]:
        del state.join_tokens[token_id]
    state.join_tokens[args["token_id"]] = {
        "key": args["key"],
        "expires_at": args["expires_at"],
        "created_at": ctx.ts,
        "created_by": ctx.actor.get("user"),
        "used_by": None,
    }
    return {"token_id": args["token_id"], "expires_at": args["expires_at"]}


@command(
    "node.admit",
    {
        "name": NODE_NAME,
        "raft_addr": Field("str", pattern=ADDRESS.pattern, nullable=True),
        "api_addr": ADDRESS,
        "membership": Field("str", choices=MEMBERSHIPS),
        "join_token_id": OBJECT_ID,
    },
)
def node_admit(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Admit a node that presented a valid join token; the token is used up."""
    require_initialized(state)
    token = state.join_tokens.get(args["join_token_id"])
    if token is None or token["used_by"] is not None:
        raise CloudError("forbidden", "join token is unknown or already used")
    if token["expires_at"] <= ctx.ts:
        raise CloudError("forbidden", "join token has expired")
    old = state.nodes.get(args["name"])
    if old is not None and not old.get("rejoin"):
        raise CloudError("conflict", f"node {args['name']} already exists")
    if args["membership"] == "voter":
        if args["raft_addr"] is None:
            raise CloudError("invalid", "a voter needs a raft_addr")
        voters = [n for n in state.nodes.values() if n["membership"] == "voter"]
        if len(voters) >= state.cluster["max_voters"]:
            raise CloudError("conflict", f"the cluster already has {len(voters)} voters")
    for other in state.nodes.values():
        if other["name"] == args["name"]:
            continue
        if args["raft_addr"] is not None and other["raft_addr"] == args["raft_addr"]:
            raise CloudError("conflict", f"raft address {args['raft_addr']} is used by node {other['name']}")
        if other["api_addr"] == args["api_addr"]:
            raise CloudError("conflict", f"API address {args['api_addr']} is used by node {other['name']}")
    token["used_by"] = args["name"]
    node = new_node(args["name"], args["raft_addr"], args["api_addr"], args["membership"], ctx.ts)
    if old is not None:  # a node of a restored cluster comes back: it keeps what it had
        node.update({k: old[k] for k in ("roles", "inventory", "maintenance", "lease_seq", "usage") if k in old})
    state.nodes[args["name"]] = node
    return {"name": args["name"], "membership": args["membership"], "rejoined": old is not None}


@command("node.remove", {"name": NODE_NAME})
def node_remove(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Forget a node (its Raft membership is changed separately, before this)."""
    require_initialized(state)
    node = get_node(state, args["name"])
    if node["membership"] == "voter":
        voters = [n for n in state.nodes.values() if n["membership"] == "voter"]
        if len(voters) <= 1:
            raise CloudError("conflict", "cannot remove the last voting node")
    del state.nodes[args["name"]]
    return {"name": args["name"]}
