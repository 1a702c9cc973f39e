"""Resource pools: the quotas an admin gives a user or a group of users.

A pool caps what its members own together: vCPUs, RAM, disk (OS disks, swap, extra
disks and volumes), VM count and public IPs, and may lock its members to a list of networks. A user
is in at most one pool (``user["pool"]``); a user in no pool has no limits (admins
usually). Limits are checked inside the replicated ``apply`` against the usage of that
moment, so two concurrent creations can never both slip past a limit. Lowering a limit
below the current usage is allowed: what exists stays, nothing new fits until usage
drops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cloudd.alloc.placement import vm_disk_gb
from cloudd.commands.common import USER_NAME, get_user, require_initialized
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.networks import public_ip_count
from cloudd.model.state import State
from cloudd.validate import Field

POOL_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
POOL_NAME = Field("str", pattern=POOL_NAME_RE)
NETWORK_NAME = Field("str", pattern=re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$"))
LIMIT_KEYS = ("vcpus", "ram_mb", "disk_gb", "vms", "public_ips")
LIMIT_FIELDS: dict[str, Field] = {
    "vcpus": Field("int", min=0, max=1 << 20, nullable=True, required=False),
    "ram_mb": Field("int", min=0, max=1 << 40, nullable=True, required=False),
    "disk_gb": Field("num", min=0, max=1 << 40, nullable=True, required=False),
    "vms": Field("int", min=0, max=1 << 20, nullable=True, required=False),
    "public_ips": Field("int", min=0, max=1 << 20, nullable=True, required=False),
}
LIMITS = Field("obj", spec=LIMIT_FIELDS, required=False)
NETWORKS = Field("list", max_len=64, item=NETWORK_NAME, required=False)
DESCRIPTION = Field("str", max_len=500, required=False)
UNITS = {"vcpus": "", "ram_mb": " MiB", "disk_gb": " GB", "vms": "", "public_ips": ""}


@dataclass(frozen=True)
class Usage:
    """What a set of VMs (and later IPs) takes out of a pool."""

    vcpus: int = 0
    ram_mb: int = 0
    disk_gb: float = 0.0
    vms: int = 0
    public_ips: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(*(getattr(self, k) + getattr(other, k) for k in LIMIT_KEYS))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in LIMIT_KEYS}


def usage_of_vms(vms: Iterable[Mapping[str, Any]]) -> Usage:
    total = Usage()
    for vm in vms:
        total = total + Usage(vm["vcpus"], vm["ram_mb"], vm_disk_gb(vm), 1, 0)
    return total


def members(state: State, pool: str) -> list[str]:
    return sorted(name for name, user in state.users.items() if user.get("pool") == pool)


def pool_usage(state: State, pool: str) -> Usage:
    """Everything the pool's members own now: VMs, their disks, volumes, and addresses on
    public networks."""
    who = set(members(state, pool))
    volumes = sum(v["size_gb"] for v in state.volumes.values() if v["owner"] in who)
    vms = usage_of_vms(vm for vm in state.vms.values() if vm["owner"] in who)
    return vms + Usage(disk_gb=volumes, public_ips=public_ip_count(state, who))


def check_quota(state: State, owner: str, extra: Usage) -> None:
    """Refuse (403 ``quota_exceeded``, naming the limit) what would take ``owner``'s pool
    past one of its limits. Only the kinds ``extra`` adds to are checked: a resource
    that shrinks or stays is never refused."""
    user = state.users.get(owner)
    pool_name = user.get("pool") if user else None
    pool = state.pools.get(pool_name) if pool_name else None
    if pool is None:
        return
    now = pool_usage(state, pool["name"])
    for key in LIMIT_KEYS:
        limit = pool["limits"].get(key)
        add = getattr(extra, key)
        if limit is None or add <= 0:
            continue
        have = getattr(now, key)
        if have + add > limit:
            unit = UNITS[key]
            raise CloudError(
                "quota_exceeded",
                f"pool {pool['name']} allows {key}={limit:g}{unit}; {have:g}{unit} in use, {add:g}{unit} more asked",
                {"pool": pool["name"], "limit": key, "max": limit, "used": have, "requested": add},
            )


def check_network_allowed(state: State, owner: str, network: Mapping[str, Any]) -> None:
    """Refuse a network outside the owner's pool lock (no lock: every network allowed).
    A lock names public networks: a private network of the same name does not pass it."""
    user = state.users.get(owner)
    pool = state.pools.get(user.get("pool") or "") if user else None
    if pool is not None and pool["networks"] and not (network["owner"] is None and network["name"] in pool["networks"]):
        raise CloudError(
            "forbidden",
            f"pool {pool['name']} is locked to the networks {', '.join(pool['networks'])}",
            {"pool": pool["name"], "networks": pool["networks"]},
        )


def get_pool(state: State, name: str) -> dict[str, Any]:
    pool = state.pools.get(name)
    if pool is None:
        raise CloudError("not_found", f"pool {name} not found")
    return pool


@command("pool.create", {"name": POOL_NAME, "limits": LIMITS, "networks": NETWORKS, "description": DESCRIPTION})
def pool_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Create a pool; a limit left out or null is unlimited."""
    require_initialized(state)
    if args["name"] in state.pools:
        raise CloudError("conflict", f"pool {args['name']} already exists")
    limits = args.get("limits", {})
    state.pools[args["name"]] = {
        "name": args["name"],
        "description": args.get("description", ""),
        "limits": {k: limits.get(k) for k in LIMIT_KEYS},
        "networks": sorted(set(args.get("networks", []))),
        "created_at": ctx.ts,
    }
    return dict(state.pools[args["name"]])


@command("pool.update", {"name": POOL_NAME, "limits": LIMITS, "networks": Field("list", max_len=64, item=NETWORK_NAME, required=False), "description": DESCRIPTION})
def pool_update(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Change limits (only those given; null lifts one), the network lock or the description."""
    pool = get_pool(state, args["name"])
    for key, value in args.get("limits", {}).items():
        pool["limits"][key] = value
    if "networks" in args:
        pool["networks"] = sorted(set(args["networks"]))
    if "description" in args:
        pool["description"] = args["description"]
    pool["updated_at"] = ctx.ts
    return dict(pool)


@command("pool.delete", {"name": POOL_NAME})
def pool_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Delete a pool that has no members left."""
    get_pool(state, args["name"])
    who = members(state, args["name"])
    if who:
        raise CloudError("conflict", f"pool {args['name']} still has members: {', '.join(who[:5])}", {"members": who})
    del state.pools[args["name"]]
    return {"name": args["name"]}


@command(
    "user.update",
    {
        "name": USER_NAME,
        "pool": Field("str", pattern=POOL_NAME_RE, nullable=True, required=False),
        "disabled": Field("bool", required=False),
        "role": Field("str", choices=("admin", "user"), required=False),
    },
)
def user_update(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Put a user in a pool (or none), disable or enable them, change their role.

    Disabling ends the user's login sessions; the last enabled admin cannot be disabled
    or demoted. Joining a pool is allowed even when the user's VMs exceed it (they stay;
    nothing new fits until usage drops).
    """
    user = get_user(state, args["name"])
    if args.get("pool") is not None:
        get_pool(state, args["pool"])
    losing_admin = user["role"] == "admin" and not user.get("disabled") and (args.get("disabled") is True or args.get("role") == "user")
    if losing_admin and sum(1 for u in state.users.values() if u["role"] == "admin" and not u.get("disabled")) <= 1:
        raise CloudError("conflict", "cannot disable or demote the last enabled admin")
    if "pool" in args:
        user["pool"] = args["pool"]
    if "role" in args:
        user["role"] = args["role"]
    if "disabled" in args:
        user["disabled"] = args["disabled"]
        if args["disabled"]:
            for token_id in [t for t, tok in state.tokens.items() if tok["user"] == user["name"] and tok["kind"] == "session"]:
                del state.tokens[token_id]
    user["updated_at"] = ctx.ts
    return {k: v for k, v in user.items() if k not in ("password_hash", "keypairs")}  # results are kept in the request cache
