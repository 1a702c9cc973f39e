"""Rebuilding a cluster from a backup (disaster recovery when quorum is lost for good).

``cloudd restore`` starts a new single-voter Raft log and replays the backup into it as
ordinary commands, in pieces that fit the command size: ``cluster.restore_begin`` on an
empty state, ``cluster.restore_put`` per batch of records, ``cluster.restore_finish``. No API is
served while that runs, commands that create things refuse a state being restored
(``State.initialized`` is false), and a restore can never start on a state that holds
anything, so these commands cannot touch a live cluster.

Records are checked for the fields the rest of the code relies on; a backup that lacks
them is refused with the record named, before anything is kept. After the restore the
restoring node is the only voter; every other node keeps its record (VMs stay assigned
to it) but must ``cloudd join`` again, under the same name, with a new join token.
"""

from __future__ import annotations

from typing import Any

from cloudd.commands.cluster import new_node
from cloudd.commands.common import ADDRESS, NODE_NAME, OBJECT_ID, TIMESTAMP
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import Field, check_value

# per kind: the key field, and the fields every record must have (with their kinds)
RECORDS: dict[str, tuple[str, dict[str, str]]] = {
    "nodes": ("name", {"name": "str", "membership": "str", "api_addr": "str", "roles": "list", "status": "str", "lease_seq": "int", "maintenance": "bool"}),
    "users": ("name", {"name": "str", "role": "str", "password_hash": "str"}),
    "tokens": ("id", {"id": "str", "user": "str", "secret_sha256": "str", "kind": "str", "name": "str"}),
    "flavors": ("name", {"name": "str", "vcpus": "int", "ram_mb": "int", "disk_gb": "num"}),
    "images": ("id", {"id": "str", "name": "str", "owner": "str", "public": "bool", "format": "str"}),
    "pools": ("name", {"name": "str", "limits": "dict", "networks": "list"}),
    "tasks": ("id", {"id": "str", "op": "str", "owner": "str", "state": "str", "progress": "int"}),
    "storage_pools": ("name", {"name": "str", "node": "str", "backend": "str", "config": "dict"}),
    "volumes": ("id", {"id": "str", "name": "str", "owner": "str", "pool": "str", "node": "str", "size_gb": "num", "state": "str", "attached_to": "any", "observed": "dict"}),
    "networks": ("id", {"id": "str", "name": "str", "owner": "any", "segment": "str", "segment_id": "int", "subnet": "str", "dhcp_ip": "str", "pool": "dict"}),
    "ports": ("id", {"id": "str", "vm": "str", "owner": "str", "network": "str", "mac": "str", "ips": "list", "slot": "int"}),
    "vms": ("id", {
        "id": "str", "name": "str", "owner": "str", "state": "str", "node": "any", "vcpus": "int", "ram_mb": "int",
        "disk_gb": "num", "desired": "dict", "observed": "dict", "disks": "list",
    }),
}
EVENT_FIELDS = {"ts": "num", "op": "str", "outcome": "str", "actor": "dict"}
KINDS = (*RECORDS, "events", "default_image")


def _check_record(kind: str, key: str, record: Any, fields: dict[str, str], key_field: str | None) -> None:
    where = f"{kind}[{key}]"
    if not isinstance(record, dict):
        raise CloudError("invalid", f"{where} must be an object", {"field": where})
    for name, kind_of in fields.items():
        if name not in record:
            raise CloudError("invalid", f"{where} has no {name}", {"field": f"{where}.{name}"})
        check_value(f"{where}.{name}", Field(kind_of, nullable=kind_of == "any"), record[name])
    if key_field is not None and record[key_field] != key:
        raise CloudError("invalid", f"{where} is filed under another key than its {key_field}", {"field": where})


def _restoring(state: State) -> None:
    if not state.cluster.get("restoring"):
        raise CloudError("conflict", "no restore is under way")


@command(
    "cluster.restore_begin",
    {
        "cluster": Field("obj", spec={"id": OBJECT_ID, "name": Field("str", max_len=64), "max_voters": Field("int", choices=(1, 3, 5)), "created_at": TIMESTAMP}),
        "node": Field("obj", spec={"name": NODE_NAME, "raft_addr": ADDRESS, "api_addr": ADDRESS}),
        "backup": Field("obj", spec={"applied_index": Field("int", min=0), "taken_at": TIMESTAMP}),
    },
    target=None,
    audit=False,  # the restored audit log comes first; restore_finish leaves the event
)
def restore_begin(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Start filling an empty state from a backup."""
    if state.cluster:
        raise CloudError("conflict", "a restore needs an empty state: this cluster already holds one")
    state.cluster = {**args["cluster"], "restoring": True, "restore": {**args["backup"], "node": args["node"], "started_at": ctx.ts}}
    return {"cluster_id": args["cluster"]["id"]}


@command(
    "cluster.restore_put",
    {"kind": Field("str", choices=KINDS), "items": Field("any")},
    target="kind",
    audit=False,
)
def restore_put(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Add one batch of records (an object keyed like the state; events: a list)."""
    _restoring(state)
    kind, items = args["kind"], args["items"]
    if kind == "default_image":
        check_value("items", Field("str", pattern=OBJECT_ID.pattern, nullable=True), items)
        state.cluster["default_image"] = items
        return {"kind": kind, "count": 1}
    if kind == "events":
        check_value("items", Field("list"), items)
        for i, event in enumerate(items):
            _check_record(kind, str(i), event, EVENT_FIELDS, None)
        for event in items:
            state.add_event(dict(event))
        return {"kind": kind, "count": len(items)}
    check_value("items", Field("dict"), items)
    key_field, fields = RECORDS[kind]
    target: dict[str, Any] = getattr(state, kind)
    for key, record in items.items():
        _check_record(kind, key, record, fields, key_field)
        if key in target:
            raise CloudError("conflict", f"{kind}[{key}] came twice", {"field": f"{kind}[{key}]"})
    for key, record in items.items():
        if kind == "vms":
            state.add_vm(record)
        else:
            target[key] = record
    return {"kind": kind, "count": len(items)}


@command("cluster.restore_finish", {}, target=None)
def restore_finish(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """End the restore: this node is the only voter, the others must join again."""
    _restoring(state)
    _check_references(state)
    restore = state.cluster.pop("restore")
    me = restore["node"]
    for node in state.nodes.values():
        if node["name"] != me["name"]:
            node.update(membership="replica", raft_addr=None, status="down", status_since=ctx.ts, rejoin=True)
    old = state.nodes.get(me["name"])
    fresh = new_node(me["name"], me["raft_addr"], me["api_addr"], "voter", ctx.ts)
    if old is not None:
        fresh.update({k: old[k] for k in ("roles", "inventory", "maintenance", "admitted_at") if k in old})
    state.nodes[me["name"]] = fresh
    for vm in state.vms.values():  # no VM may point at an open task that is not there
        vm["tasks"] = [t for t in vm.get("tasks", []) if t in state.tasks]
    state.join_tokens.clear()
    del state.cluster["restoring"]
    state.cluster["restored"] = {"from_index": restore["applied_index"], "taken_at": restore["taken_at"], "at": ctx.ts, "by_node": me["name"]}
    return {"cluster_id": state.cluster["id"], "nodes": len(state.nodes), "vms": len(state.vms), "users": len(state.users)}


def _check_references(state: State) -> None:
    """Every record names things that exist (checked before the restore is final)."""
    problems = [f"vms[{vid}] belongs to unknown user {vm['owner']}" for vid, vm in state.vms.items() if vm["owner"] not in state.users]
    problems += [f"vms[{vid}] is on unknown node {vm['node']}" for vid, vm in state.vms.items() if vm["node"] is not None and vm["node"] not in state.nodes]
    problems += [f"tokens[{tid}] belongs to unknown user {tok['user']}" for tid, tok in state.tokens.items() if tok["user"] not in state.users]
    problems += [f"users[{name}] is in unknown pool {u['pool']}" for name, u in state.users.items() if u.get("pool") and u["pool"] not in state.pools]
    problems += [f"images[{iid}] belongs to unknown user {img['owner']}" for iid, img in state.images.items() if img["owner"] not in state.users]
    problems += [f"volumes[{vid}] belongs to unknown user {v['owner']}" for vid, v in state.volumes.items() if v["owner"] not in state.users]
    problems += [f"volumes[{vid}] is in unknown storage pool {v['pool']}" for vid, v in state.volumes.items() if v["pool"] not in state.storage_pools]
    problems += [f"volumes[{vid}] is attached to unknown VM {v['attached_to']}" for vid, v in state.volumes.items() if v["attached_to"] and v["attached_to"] not in state.vms]
    problems += [f"networks[{nid}] belongs to unknown user {n['owner']}" for nid, n in state.networks.items() if n["owner"] is not None and n["owner"] not in state.users]
    problems += [f"ports[{pid}] is on unknown network {p['network']}" for pid, p in state.ports.items() if p["network"] not in state.networks]
    problems += [f"ports[{pid}] belongs to unknown VM {p['vm']}" for pid, p in state.ports.items() if p["vm"] not in state.vms]
    problems += [f"storage_pools[{name}] is on unknown node {p['node']}" for name, p in state.storage_pools.items() if p["node"] not in state.nodes]
    if not any(u["role"] == "admin" and not u.get("disabled") for u in state.users.values()):
        problems.append("no enabled admin user")
    if problems:
        raise CloudError("invalid", f"the backup is inconsistent: {problems[0]}", {"problems": problems[:20]})
