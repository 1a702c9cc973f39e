"""Schemas of the API's answers (OpenAPI components).

They list the fields clients rely on, with their types; objects may carry more fields
(``additionalProperties`` stays open so that adding a field is not a breaking change).
The schemathesis test checks real answers against them.
"""

from __future__ import annotations

from typing import Any

from cloudd.commands.pools import LIMIT_KEYS
from cloudd.model.tasks import FINAL
from cloudd.model.vm import STATES

STR: dict[str, Any] = {"type": "string"}
NSTR: dict[str, Any] = {"type": "string", "nullable": True}
INT: dict[str, Any] = {"type": "integer"}
NINT: dict[str, Any] = {"type": "integer", "nullable": True}
NUM: dict[str, Any] = {"type": "number"}
NNUM: dict[str, Any] = {"type": "number", "nullable": True}
BOOL: dict[str, Any] = {"type": "boolean"}
OBJ: dict[str, Any] = {"type": "object"}
STRS: dict[str, Any] = {"type": "array", "items": STR}


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


TASK = obj(
    ["id", "op", "vm", "owner", "state", "progress", "message", "created_at"],
    id=STR,
    op=STR,
    vm=STR,
    vm_name=STR,
    owner=STR,
    requested_by=OBJ,
    state={"type": "string", "enum": ["running", *FINAL]},
    progress={"type": "integer", "minimum": 0, "maximum": 100},
    message=STR,
    detail=OBJ,
    created_at=NUM,
    updated_at=NUM,
    finished_at=NNUM,
)
LIMITS = {"type": "object", "properties": {k: NNUM for k in LIMIT_KEYS}}
USAGE = {"type": "object", "properties": {k: NUM for k in LIMIT_KEYS}}

SCHEMAS: dict[str, Any] = {
    "Error": obj(["error"], error=obj(["code", "message"], code=STR, message=STR, details={"nullable": True})),
    "Ok": OBJ,
    "Health": obj(["status", "node"], status={"type": "string", "enum": ["ok", "degraded"]}, node=STR, role=STR, caught_up=BOOL),
    "Cluster": obj(
        ["cluster", "this_node", "term", "commit_index", "has_quorum", "members"],
        cluster=OBJ,
        this_node=STR,
        leader={"type": "object", "nullable": True},
        term=INT,
        commit_index=INT,
        last_applied=INT,
        has_quorum=BOOL,
        members={"type": "array", "items": obj(["name", "status"], name=STR, membership=STR, raft_addr=NSTR, api_addr=STR, status=STR, leader=BOOL, connected=BOOL)},
    ),
    "Digest": obj(["applied_index"], applied_index=INT),
    "JoinToken": obj(["token"], token=STR, expires_at=NUM),
    "Node": obj(
        ["name", "status", "roles"],
        name=STR,
        status=STR,
        roles=STRS,
        membership=STR,
        raft_addr=NSTR,
        api_addr=STR,
        maintenance=BOOL,
        inventory={"type": "object", "nullable": True},
        lease_seq=INT,
        leader=BOOL,
    ),
    "User": obj(["name", "role"], name=STR, role={"type": "string", "enum": ["admin", "user"]}, disabled=BOOL, pool=NSTR, created_at=NUM),
    "Whoami": obj(["kind", "name", "role"], kind=STR, name=STR, role=STR, pool=NSTR),
    "Session": obj(["token", "token_id", "user"], token=STR, token_id=STR, user=STR, role=STR, expires_at=NNUM, name=STR),
    "Token": obj(["id", "user", "name", "kind"], id=STR, user=STR, name=STR, kind={"type": "string", "enum": ["api", "session"]}, created_at=NUM, expires_at=NNUM),
    "NewToken": obj(["token", "token_id", "user"], token=STR, token_id=STR, user=STR, name=STR, expires_at=NNUM),
    "Event": obj(["seq", "ts", "op", "outcome"], seq=INT, ts=NUM, op=STR, target={"nullable": True}, actor=OBJ, request_id=STR, index=INT, outcome=STR, message=NSTR),
    "Flavor": obj(["name", "vcpus", "ram_mb", "disk_gb"], name=STR, vcpus=INT, ram_mb=INT, disk_gb=NUM),
    "Image": obj(
        ["id", "name", "owner", "public", "format"],
        id=STR,
        name=STR,
        owner=STR,
        public=BOOL,
        format={"type": "string", "enum": ["qcow2", "raw", "kernel", "iso"]},
        state={"type": "string", "enum": ["uploading", "ready", "error"]},
        size_gb=NUM,
        min_disk_gb=NUM,
        min_ram_mb=INT,
        os=NSTR,
        copies=STRS,
        default=BOOL,
    ),
    "Vm": obj(
        ["id", "name", "owner", "state", "vcpus", "ram_mb", "disk_gb", "desired", "observed"],
        id=STR,
        name=STR,
        owner=STR,
        state={"type": "string", "enum": list(STATES)},
        state_reason=NSTR,
        node=NSTR,
        flavor=NSTR,
        vcpus=INT,
        ram_mb=INT,
        disk_gb=NUM,
        swap_mb=INT,
        image=NSTR,
        iso=NSTR,
        disks={"type": "array", "items": obj(["id", "size_gb", "target"], id=STR, size_gb=NUM, target=STR)},
        ha=BOOL,
        desired=OBJ,
        observed=OBJ,
        error=NSTR,
        has_user_data=BOOL,
        tasks=STRS,
    ),
    "Accepted": obj(["id", "task"], id=STR, state=STR, task=ref("Task")),
    "Task": TASK,
    "Pool": obj(
        ["name", "limits", "networks", "usage"],
        name=STR,
        description=STR,
        limits=LIMITS,
        networks=STRS,
        usage=USAGE,
        members=STRS,
        over={"type": "array", "items": STR},
    ),
}
