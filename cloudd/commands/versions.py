"""Command versions across a rolling upgrade (pure: reads the state, nothing else).

Every command carries ``v``: the version of the command table that introduced the form
it is written in (``CommandSpec.version``, 1 for all of today's commands). Each node
announces the newest table it knows in its registration, as the inventory fact
``command_version`` (the one part of ``node.register`` that older nodes already accept
as it is, so announcing it needs no newer command). The cluster's command version is
the lowest one among its nodes, a node that has not announced one counting as 1.

All replicas apply the same log, so a command some replica cannot understand must never
be logged: the proposer refuses a command newer than the cluster's version with a clear
message (``check_proposal``), and ``apply`` refuses one that slipped through (an older
node joined meanwhile) on every replica alike, with the very error an older node's
envelope check gives, so no replica's state or audit log differs.
"""

from __future__ import annotations

from typing import Any

from cloudd.errors import CloudError

FACT = "command_version"


def node_command_version(node: dict[str, Any]) -> int:
    """The command table version a node announced (1 when it announced none)."""
    value = ((node.get("inventory") or {}).get("facts") or {}).get(FACT)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return 1


def cluster_command_version(state: Any) -> int:
    """The newest command form every node of ``state`` understands (1 without nodes)."""
    versions = [node_command_version(node) for node in state.nodes.values()]
    return min(versions) if versions else 1


def older_nodes(state: Any, version: int) -> list[str]:
    """``name (vN)`` of the nodes that do not understand commands of ``version``."""
    return sorted(f"{name} (v{v})" for name, node in state.nodes.items() if (v := node_command_version(node)) < version)


def check_proposal(state: Any, op: str, version: int) -> None:
    """Refuse (409) to propose ``op`` in a form of ``version`` the cluster cannot apply yet."""
    if version <= 1:
        return
    cluster = cluster_command_version(state)
    if version > cluster:
        waiting = older_nodes(state, version)
        raise CloudError(
            "conflict",
            f"{op} needs command version {version} on every node, the cluster is at {cluster}: "
            f"upgrade cloudd on {', '.join(waiting) or 'every node'} first (nothing was changed)",
            {"op": op, "needs": version, "cluster_command_version": cluster, "older_nodes": waiting},
        )
