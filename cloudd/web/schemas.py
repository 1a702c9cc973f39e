"""Schemas of the API's answers (OpenAPI components).

They list the fields clients rely on, with their types; objects may carry more fields
(``additionalProperties`` stays open so that adding a field is not a breaking change).
The schemathesis test checks real answers against them.
"""

from __future__ import annotations

from typing import Any

from cloudd.commands.cluster import MEMBERSHIPS, ROLES
from cloudd.commands.nodes import STATUSES
from cloudd.commands.networks import PORT_COUNTERS, PROFILES
from cloudd.commands.pools import LIMIT_KEYS
from cloudd.commands.users import USER_ROLES
from cloudd.model.tasks import FINAL
from cloudd.model.vm import POWER_STATES, STATES

STR: dict[str, Any] = {"type": "string"}
NSTR: dict[str, Any] = {"type": "string", "nullable": True}
INT: dict[str, Any] = {"type": "integer"}
NINT: dict[str, Any] = {"type": "integer", "nullable": True}
NUM: dict[str, Any] = {"type": "number"}
NNUM: dict[str, Any] = {"type": "number", "nullable": True}
BOOL: dict[str, Any] = {"type": "boolean"}
OBJ: dict[str, Any] = {"type": "object"}
STRS: dict[str, Any] = {"type": "array", "items": STR}
PORT_COUNTER_KEYS = tuple(PORT_COUNTERS)


def obj(required: list[str], **props: Any) -> dict[str, Any]:
    """An object schema (``required`` left out when empty: OpenAPI 3.0 wants one name at least)."""
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def enum(*values: Any, nullable: bool = False) -> dict[str, Any]:
    """A string from ``values`` (and null: OpenAPI 3.0 wants it listed in the enum too)."""
    if nullable:
        return {"type": "string", "nullable": True, "enum": [*values, None]}
    return {"type": "string", "enum": list(values)}


TASK = obj(
    ["id", "op", "owner", "state", "progress", "message", "created_at"],
    id=STR,
    op=STR,
    vm=NSTR,
    vm_name=NSTR,
    volume=NSTR,
    volume_name=NSTR,
    owner=STR,
    requested_by=OBJ,
    state=enum("running", *FINAL),
    progress={"type": "integer", "minimum": 0, "maximum": 100},
    message=STR,
    detail=OBJ,
    created_at=NUM,
    updated_at=NUM,
    finished_at=NNUM,
)
LIMITS = {"type": "object", "properties": {k: NNUM for k in LIMIT_KEYS}}
USAGE = {"type": "object", "properties": {k: NUM for k in LIMIT_KEYS}}
VM_DESIRED = obj(["power"], power=enum("running", "stopped"), action=enum("reset", "reboot", nullable=True), action_seq=INT, stop_mode=enum("clean", "force"))
VM_OBSERVED = obj(
    [],
    power=enum(*POWER_STATES, nullable=True),
    ts=NNUM,
    error=NSTR,
    vnc_port=NINT,
    disks={**STRS, "description": "the disk targets the running domain has now"},
    nics={**STRS, "description": "the MACs of the NICs the running domain has now"},
    device_error=NSTR,
)
VM_DISK = obj(["id", "size_gb", "target"], id=STR, size_gb=NUM, target=STR, created_at=NUM)

SCHEMAS: dict[str, Any] = {
    "Error": obj(["error"], error=obj(["code", "message"], code=STR, message=STR, details={"nullable": True})),
    "Ok": OBJ,
    "Named": obj(["name"], name=STR),
    "Health": obj(["status", "node"], status=enum("ok", "degraded"), node=STR, role=enum("leader", "follower", "replica"), caught_up=BOOL),
    "Cluster": obj(
        ["cluster", "this_node", "term", "commit_index", "has_quorum", "members"],
        cluster=obj([], id=STR, name=STR, max_voters=INT, created_at=NUM, default_image=NSTR),
        this_node=STR,
        leader={**obj(["name"], name=STR, raft_addr=NSTR, api_addr=STR), "nullable": True},
        term=INT,
        commit_index=INT,
        last_applied=INT,
        has_quorum=BOOL,
        raft={**OBJ, "description": "this node's Raft view: self, role, leader, voters, connected, log_size"},
        members={"type": "array", "items": obj(["name", "status"], name=STR, membership=enum(*MEMBERSHIPS), raft_addr=NSTR, api_addr=STR, status=STR, leader=BOOL, connected=BOOL)},
    ),
    "Digest": obj(["node", "applied_index", "chain", "digest"], node=STR, applied_index=INT, chain=STR, digest=STR),
    "JoinToken": obj(["token", "expires_at"], token=STR, expires_at=NUM),
    "Joined": obj(
        ["cluster_id", "cluster_name", "membership", "voters", "api_addrs", "sealed_secret"],
        cluster_id=STR,
        cluster_name=STR,
        membership=enum(*MEMBERSHIPS),
        voters=STRS,
        api_addrs=STRS,
        sealed_secret={**STR, "description": "the cluster secret, encrypted with the join token's key"},
    ),
    "Node": obj(
        ["name", "status", "roles"],
        name=STR,
        status=enum(*STATUSES),
        status_since=NUM,
        status_reason=NSTR,
        roles={"type": "array", "items": enum(*ROLES)},
        membership=enum(*MEMBERSHIPS),
        raft_addr=NSTR,
        api_addr=STR,
        maintenance=BOOL,
        inventory=OBJ,
        usage=OBJ,
        version=NSTR,
        lease_seq=INT,
        last_heartbeat=NNUM,
        admitted_at=NUM,
        registered_at=NNUM,
        leader=BOOL,
    ),
    "User": obj(
        ["name", "role"], name=STR, role=enum(*USER_ROLES), disabled=BOOL, pool=NSTR, created_at=NUM, updated_at=NUM, password_changed_at=NUM
    ),
    "Whoami": obj(["kind", "name", "role"], kind=enum("user", "node"), name=STR, role=enum(*USER_ROLES, "node"), pool=NSTR),
    "Session": obj(["token", "token_id", "user"], token=STR, token_id=STR, user=STR, role=enum(*USER_ROLES), expires_at=NNUM, name=STR),
    "Token": obj(["id", "user", "name", "kind"], id=STR, user=STR, name=STR, kind=enum("api", "session"), created_at=NUM, expires_at=NNUM),
    "NewToken": obj(["token", "token_id", "user"], token=STR, token_id=STR, user=STR, name=STR, expires_at=NNUM),
    "Event": obj(
        ["seq", "ts", "op", "outcome"],
        seq=INT,
        ts=NUM,
        op=STR,
        target={"nullable": True, "description": "the object acted on (a name or an id), as the command names it"},
        actor=OBJ,
        request_id=STR,
        index=INT,
        outcome={**STR, "description": "ok, or the error code"},
        message=NSTR,
    ),
    "Flavor": obj(["name", "vcpus", "ram_mb", "disk_gb"], name=STR, vcpus=INT, ram_mb=INT, disk_gb=NUM, created_at=NUM),
    "Image": obj(
        ["id", "name", "owner", "public", "format"],
        id=STR,
        name=STR,
        owner=STR,
        public=BOOL,
        format=enum("qcow2", "raw", "kernel", "iso"),
        state=enum("uploading", "ready", "error"),
        error=NSTR,
        path={**STR, "description": "registered images: the file on every hypervisor"},
        size_gb=NUM,
        size_bytes=NINT,
        sha256=NSTR,
        min_disk_gb=NUM,
        min_ram_mb=INT,
        os=NSTR,
        copies={**STRS, "description": "uploaded images: the nodes holding a verified copy"},
        default=BOOL,
        created_at=NUM,
        ready_at=NUM,
    ),
    "Vm": obj(
        ["id", "name", "owner", "state", "vcpus", "ram_mb", "disk_gb", "desired", "observed"],
        id=STR,
        name=STR,
        owner=STR,
        state=enum(*STATES),
        state_since=NUM,
        state_reason=NSTR,
        node=NSTR,
        nics={"type": "array", "items": obj(["port", "network", "mac", "ips"], port=STR, network=STR, mac=STR, ips=STRS, ipv6=NSTR)},
        ports=STRS,
        flavor=NSTR,
        vcpus=INT,
        ram_mb=INT,
        disk_gb=NUM,
        swap_mb=INT,
        image=NSTR,
        iso=NSTR,
        disks={"type": "array", "items": VM_DISK},
        ha=BOOL,
        ha_priority=INT,
        ssh_keys=STRS,
        desired=VM_DESIRED,
        observed=VM_OBSERVED,
        usage={"type": "object", "nullable": True},
        error=NSTR,
        has_user_data=BOOL,
        created_at=NUM,
        tasks={**STRS, "description": "the ids of its open tasks"},
    ),
    "VmCreated": {"allOf": [ref("Vm"), obj(["task"], task=ref("Task"))]},
    "Accepted": obj(
        ["id", "task"],
        id={**STR, "description": "the VM's id"},
        task=ref("Task"),
        state={**STR, "description": "delete and power changes: the VM's state now (deleted: gone already)"},
        action=enum("reset", "reboot"),
        action_seq=INT,
        disk=VM_DISK,
        disk_id=STR,
        iso=NSTR,
        vcpus=INT,
        ram_mb=INT,
        disk_gb=NUM,
    ),
    "Task": TASK,
    "StoragePool": obj(["name", "node", "backend", "config"], name=STR, node=STR, backend=STR, config=OBJ, capacity={"type": "object", "nullable": True}, error=NSTR),
    "Volume": obj(
        ["id", "name", "owner", "pool", "size_gb", "state"],
        id=STR, name=STR, owner=STR, pool=STR, size_gb=NUM, image=NSTR, state=STR, attached_to=NSTR, target=NSTR, error=NSTR,
        observed=OBJ, usage={"type": "object", "nullable": True}, tasks=STRS,
        replica={"type": "object", "description": "drbd pools, admins only: both storage nodes, the primary, minor, port and each side's DRBD status"},
    ),
    "Network": obj(
        ["id", "name", "owner", "public", "segment", "subnet", "gateway", "dhcp_ip", "pool", "dhcp", "profile"],
        id=STR, name=STR, owner=NSTR, public=BOOL, segment=enum("vxlan", "vlan"), segment_id=INT, uplink=NSTR, subnet=STR, gateway=NSTR,
        dhcp_ip={**STR, "description": "the DHCP server's address on every node hosting the network (no VM gets it)"},
        pool=obj(["start", "end"], start=STR, end=STR), ipv6_prefix=NSTR, dhcp=BOOL, dns=STRS, profile=enum(*PROFILES), mtu=NINT, description=STR,
        addresses=obj(["pool", "used"], pool=INT, used=INT), ports={**INT, "description": "ports you can see"}, created_at=NUM,
    ),
    "Port": obj(
        ["id", "vm", "owner", "network", "mac", "ips", "profile", "slot"],
        id=STR, vm=STR, vm_name=NSTR, owner=STR, network=STR, network_name=NSTR, slot=INT, mac=STR, ips=STRS, ipv6=NSTR,
        profile=enum(*PROFILES), usage={**obj([], **{k: INT for k in PORT_COUNTER_KEYS}, ts=NUM, node=STR), "nullable": True}, error=NSTR, created_at=NUM,
    ),
    "PortIps": obj(["id", "ip", "ips"], id=STR, ip=STR, ips=STRS),
    "Ip": obj(
        ["ip", "version", "network", "port", "vm", "mac"],
        ip=STR, version={"type": "integer", "enum": [4, 6]}, primary=BOOL, network=STR, network_name=NSTR, public=BOOL, port=STR, vm=STR, vm_name=NSTR, owner=STR, mac=STR,
        usage={"type": "object", "nullable": True},
    ),
    "ClusterSettings": obj(
        ["policy", "cpu_ratio", "ram_reserve_mb", "shared_vm_storage"],
        policy=enum("resource", "usage", "trend"), cpu_ratio=NUM, ram_reserve_mb=INT, disk_reserve_gb=NUM, trend_horizon_s=NUM,
        rebalance_auto=BOOL, rebalance_max_moves=INT, shared_vm_storage=BOOL, rebalance_interval_s=NUM,
        migrations_per_node=INT, migrations_per_cluster=INT, migration_bandwidth_mib_s=INT, migration_max_downtime_ms=INT,
    ),
    "Capacity": obj(
        ["policy", "n_plus_one", "nodes"],
        policy=STR, flavor=obj(["name", "fits", "per_node"], name=STR, fits=INT, per_node=OBJ),
        n_plus_one=obj(["ok", "at_risk"], ok=BOOL, at_risk={**OBJ, "description": "node -> the VMs that would find no room if it were lost"}),
        nodes={"type": "array", "items": obj(["node", "usable"], node=STR, usable=BOOL, reason=NSTR, vcpus=OBJ, ram_mb=OBJ, disk_gb=OBJ, vms=INT)},
    ),
    "Rebalance": obj(
        ["moves", "score_before", "score_after", "applied"],
        moves={"type": "array", "items": obj(["vm", "from", "to", "gain"], vm=STR, name=STR, **{"from": STR}, to=STR, gain=NUM)},
        score_before=NUM, score_after=NUM, spread_before=OBJ, spread_after=OBJ, n_plus_one_before=BOOL, n_plus_one_after=BOOL, applied=BOOL,
        plan=NSTR,
    ),
    "RebalanceStatus": obj(
        ["plan"],
        plan={**obj(
            ["id", "moves", "finished"], id=STR, auto=BOOL, created_at=NUM, by=NSTR, finished=BOOL,
            moves={"type": "array", "items": obj(
                ["vm", "from", "to", "status"], vm=STR, **{"from": STR}, to=STR, task=NSTR, message=NSTR,
                status={"type": "string", "enum": ["pending", "running", "done", "failed", "gone"]},
            )},
        ), "nullable": True},
    ),
    "Placement": obj(
        ["vm", "node", "candidates", "refused"],
        vm=STR, name=STR, current_node=NSTR, policy=STR, node=NSTR,
        candidates={"type": "array", "items": obj(["node", "total"], node=STR, total=NUM, ram=NUM, cpu=NUM, disk=NUM)},
        refused={"type": "array", "items": obj(["node", "reason"], node=STR, reason=STR)},
    ),
    "Backup": obj(["format", "taken_at", "applied_index", "state"], format=STR, taken_at=NUM, applied_index=INT, state=OBJ),
    "Pool": obj(
        ["name", "limits", "networks"],
        name=STR,
        description=STR,
        limits=LIMITS,
        networks=STRS,
        usage={**USAGE, "description": "what the members own now (not in the answers of POST and PATCH)"},
        over={"type": "array", "items": enum(*LIMIT_KEYS), "description": "the limits usage exceeds (after a lowering)"},
        members={**STRS, "description": "admins only"},
        created_at=NUM,
        updated_at=NUM,
    ),
}
