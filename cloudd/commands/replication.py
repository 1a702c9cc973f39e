"""DRBD replication of volumes between two storage nodes: which side is Primary.

A volume in a ``drbd`` pool carries ``replica``: the two storage nodes (the pool's node and
its ``config.peer``), the resource's minor and port (the same on both sides, lowest free
among the volumes either node replicates), which node is ``primary`` now, and each side's
last report (``sides``: role, disk state, peer disk state, connection). The primary is
the node that serves the volume over iSCSI: ``volume["node"]`` follows it, so exports,
reports and the hypervisors' iSCSI portal follow a promotion by themselves.

Promotion (``volume.promote``) is the leader's answer to a lost primary: only when the
primary's node is ``down`` at the lease the leader judged (the failover rule: its lease
has been stale for ``fence_after + failover_margin``, so it stopped serving, or its fence
guard stopped it) and only a secondary whose last report says its disk is ``UpToDate``: a
stale or half-synced copy is never handed to a VM. The agent of the new primary then runs
``drbdadm primary`` (``ops.drbd.DrbdVolumes.promote_after_peer_loss``, which checks the
disk state again on the host).

Deleting a replicated volume ends when both copies are gone: the primary's ``volume.report``
and the secondary's ``volume.replica_report`` with role ``Deleted``, in either order (a
secondary that is not up does not hold it back).
"""

from __future__ import annotations

from typing import Any

from cloudd.commands.common import NODE_NAME, OBJECT_ID, get_node
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.ops.drbd import MINOR_RANGE, PORT_RANGE
from cloudd.validate import Field

DRBD_WORD = Field("str", max_len=32, pattern=__import__("re").compile(r"^[A-Za-z]{1,32}$"))


def new_replica(state: State, pool: dict[str, Any]) -> dict[str, Any] | None:
    """The ``replica`` record of a new volume in ``pool`` (None: the pool does not replicate).
    Raises a conflict when no minor or port is free for the pair."""
    if pool["backend"] != "drbd":
        return None
    pair = sorted((pool["node"], pool["config"]["peer"]))
    minors: set[int] = set()
    ports: set[int] = set()
    for volume in state.volumes.values():
        replica = volume.get("replica")
        if replica and set(replica["nodes"]) & set(pair):
            minors.add(replica["minor"])
            ports.add(replica["port"])
    minor = next((m for m in range(MINOR_RANGE[0], MINOR_RANGE[1] + 1) if m not in minors), None)
    port = next((p for p in range(PORT_RANGE[0], PORT_RANGE[1] + 1) if p not in ports), None)
    if minor is None or port is None:
        raise CloudError("conflict", f"no free DRBD {'minor' if minor is None else 'port'} between {pair[0]} and {pair[1]}")
    return {"backend": "drbd", "nodes": pair, "primary": pool["node"], "minor": minor, "port": port, "sides": {}, "promoted": None}


def secondary_of(replica: dict[str, Any]) -> str:
    return next(n for n in replica["nodes"] if n != replica["primary"])


def _replicated(state: State, volume_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = state.volumes.get(volume_id)
    if volume is None:
        raise CloudError("not_found", f"volume {volume_id} not found")
    replica = volume.get("replica")
    if not replica:
        raise CloudError("invalid", f"volume {volume['name']} is not replicated")
    return volume, replica


@command(
    "volume.replica_report",
    {
        "id": OBJECT_ID,
        "node": NODE_NAME,
        "role": DRBD_WORD,
        "disk_state": DRBD_WORD,
        "peer_disk_state": DRBD_WORD,
        "connection_state": DRBD_WORD,
        "error": Field("str", max_len=500, nullable=True, required=False),
    },
    target="id",
    audit=False,
    remember=False,
)
def volume_replica_report(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A storage node reports its side of a replicated volume (``drbdsetup status``), and
why it cannot take the role the state gives it (``error``), if so."""
    volume, replica = _replicated(state, args["id"])
    if args["node"] not in replica["nodes"]:
        raise CloudError("conflict", f"volume {volume['name']} is replicated between {' and '.join(replica['nodes'])}, not on {args['node']}")
    side = {k: args[k] for k in ("role", "disk_state", "peer_disk_state", "connection_state")}
    replica["sides"][args["node"]] = side | {"error": args.get("error"), "ts": ctx.ts}
    observed = volume["observed"]
    if volume["state"] == "deleting" and args["role"] == "Deleted" and not observed["present"] and (observed["ts"] or 0) >= volume["state_since"]:
        # the primary removed its copy already (and waited for this one): the volume is gone
        from cloudd.model.tasks import vm_gone

        del state.volumes[volume["id"]]
        vm_gone(state, volume, ctx.ts)
        return {"id": volume["id"], "state": "deleted"}
    return {"id": volume["id"], "primary": replica["primary"]}


def promotion_refusal(state: State, volume: dict[str, Any], node: str) -> str | None:
    """Why ``node`` must not become the volume's primary now (None: it may)."""
    replica = volume["replica"]
    if node not in replica["nodes"]:
        return f"{node} holds no copy of volume {volume['name']}"
    if node == replica["primary"]:
        return f"{node} is the primary already"
    side = replica["sides"].get(node) or {}
    if side.get("disk_state") != "UpToDate":
        return f"the copy on {node} is {side.get('disk_state') or 'unreported'}, not UpToDate"
    target = state.nodes.get(node)
    if target is None or target["status"] not in ("up", "maintenance"):
        return f"node {node} is {target['status'] if target else 'gone'}"
    return None


@command("volume.promote", {"id": OBJECT_ID, "node": NODE_NAME, "observed_seq": Field("int", min=0)}, target="id")
def volume_promote(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Make the secondary the primary after the primary's node was lost (the leader only,
    at the lease sequence it judged: a renewal committed since refuses it)."""
    volume, replica = _replicated(state, args["id"])
    old = get_node(state, replica["primary"])
    if old["lease_seq"] != args["observed_seq"]:
        raise CloudError("conflict", f"node {old['name']} renewed its lease since the leader judged it", {"lease_seq": old["lease_seq"]})
    if old["status"] != "down":
        raise CloudError("conflict", f"node {old['name']} is {old['status']}, not down: its copy still serves", {"status": old["status"]})
    reason = promotion_refusal(state, volume, args["node"])
    if reason:
        raise CloudError("conflict", f"cannot promote volume {volume['name']}: {reason}")
    replica["primary"] = args["node"]
    replica["promoted"] = {"from": old["name"], "to": args["node"], "at": ctx.ts}
    volume["node"] = args["node"]
    volume["observed"] = {**volume["observed"], "exported_to": [], "ts": ctx.ts}
    return {"id": volume["id"], "primary": args["node"], "from": old["name"]}
