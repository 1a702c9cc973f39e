"""Migrations: a VM moving from its node (the source) to another (the target).

A migration is ``vm["migration"]`` while it runs, and a ``vm.migrate`` task. Every step
is a committed command, so a crash of either node or a change of leader resumes it
where it stopped (or rolls it back); the agents only ever act on what the state says.

**Offline** (the VM is stopped first; ``copy``: its node-local files move too):

| phase      | who acts | what                                                            |
|------------|----------|-----------------------------------------------------------------|
| stopping   | source   | clean shutdown (forced after the timeout), then UNDEFINE the     |
|            |          | domain (the files stay): from here on no node has it defined     |
| copying    | target   | fetch the files from the source (``copy``), create swap afresh   |
| —          | target   | commit point (``vm.migration_step``: ``switched``): the VM's node |
|            |          | becomes the target, which defines and starts it like a new VM   |

Before the commit point a cancel (the user's, or the leader's when a node is lost)
rolls back: the VM is the source's again, which defines it from its files.

**Live** (running VMs whose disks are shared: iSCSI volumes or the shared VM directory):

| phase      | who acts | what                                                            |
|------------|----------|-----------------------------------------------------------------|
| preparing  | target   | files (swap, seed), bridges, filters, CHAP secrets; the exports  |
|            |          | of its volumes admit BOTH nodes' initiators from now on          |
| migrating  | source   | libvirt peer-to-peer migration; progress into the task           |
| —          | either   | commit point: ``landed`` (the target sees it running, or the     |
|            |          | source's libvirt said it succeeded): the VM's node is the target |

A live migration that fails (or is cancelled: the source aborts libvirt's job) leaves
the VM running on the source; either way exactly one node runs it, because libvirt
resumes the guest on the target only after the source stopped it for good.

``vm["leftovers"]``: nodes that must remove what they still hold of the VM (a stopped
domain, a partial or old copy of its node-local files) and then say so.
"""

from __future__ import annotations

from typing import Any, Mapping

MODES = ("offline", "live")
PHASES = {"offline": ("stopping", "copying"), "live": ("preparing", "migrating")}
PRE_COMMIT = frozenset({"stopping", "copying", "preparing", "migrating"})


def migration_of(vm: dict[str, Any]) -> dict[str, Any] | None:
    return vm.get("migration") or None


def live_target(vm: dict[str, Any]) -> str | None:
    """The target of the VM's live migration while the target must be ready for it
    (bridges, exports): from ``preparing`` to the commit point."""
    mig = migration_of(vm)
    if mig is not None and mig["mode"] == "live":
        return str(mig["target"])
    return None


def hosts(vm: dict[str, Any]) -> set[str]:
    """The nodes that hold (or are about to hold) the running VM: its node, plus a live
    migration's target."""
    out = {vm["node"]} if vm.get("node") else set()
    target = live_target(vm)
    if target:
        out.add(target)
    return out


def involves(vm: dict[str, Any], node: str) -> bool:
    mig = migration_of(vm)
    return mig is not None and node in (mig["source"], mig["target"])


def reserved_on(vm: dict[str, Any]) -> str | None:
    """The node where a migrating VM's resources are held besides its own (the target)."""
    mig = migration_of(vm)
    return str(mig["target"]) if mig is not None else None


def add_leftover(vm: dict[str, Any], node: str, local_files: bool) -> None:
    """``node`` must remove its copy of the VM: the domain, and its files when they are
    node-local (never files on shared storage: they are the VM's only disks)."""
    leftovers = vm.setdefault("leftovers", {})
    leftovers[node] = {"files": bool(local_files or (leftovers.get(node) or {}).get("files"))}


def counts(vms: Any) -> tuple[int, dict[str, int]]:
    """Migrations running in the cluster, and per node (as source or target)."""
    total, per_node = 0, {}
    for vm in vms:
        mig = migration_of(vm)
        if mig is None:
            continue
        total += 1
        for node in (mig["source"], mig["target"]):
            per_node[node] = per_node.get(node, 0) + 1
    return total, per_node


def live_refusal(node: Mapping[str, Any]) -> str | None:
    """Why ``node`` cannot take part in a live migration (None: it can): its hypervisor
    must migrate live and the other nodes' libvirt must know how to reach it."""
    compute = node.get("compute") or {}
    if not compute.get("live_migration"):
        return f"node {node['name']}'s hypervisor cannot live-migrate"
    if not compute.get("migration_uri"):
        return f"node {node['name']} has not said how other nodes reach its libvirt (migration_uri)"
    return None
