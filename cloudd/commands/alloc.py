"""The cluster's allocation and failover settings (admins): ``cluster.settings_set``."""

from __future__ import annotations

from typing import Any

from cloudd.alloc.snapshot import POLICIES, AllocSettings
from cloudd.commands.common import require_initialized
from cloudd.commands.registry import Context, command
from cloudd.model.state import State
from cloudd.validate import Field

SETTINGS_FIELDS = {
    "policy": Field("str", choices=POLICIES, required=False),
    "cpu_ratio": Field("num", min=0.1, max=64, required=False),
    "ram_reserve_mb": Field("int", min=0, max=1 << 24, required=False),
    "disk_reserve_gb": Field("num", min=0, max=1 << 24, required=False),
    "trend_horizon_s": Field("num", min=60, max=7 * 86400, required=False),
    "rebalance_auto": Field("bool", required=False),
    "rebalance_max_moves": Field("int", min=1, max=1000, required=False),
    "rebalance_interval_s": Field("num", min=30, max=7 * 86400, required=False),
    "migrations_per_node": Field("int", min=1, max=64, required=False),
    "migrations_per_cluster": Field("int", min=1, max=1024, required=False),
    "migration_bandwidth_mib_s": Field("int", min=0, max=1 << 20, required=False),
    "migration_max_downtime_ms": Field("int", min=10, max=60_000, required=False),
    # the VMs' disk directory is shared storage (e.g. NFS mounted at the same path on every
    # hypervisor): their disks survive a node, so HA VMs can be restarted elsewhere
    "shared_vm_storage": Field("bool", required=False),
}


def settings_view(state: State) -> dict[str, Any]:
    alloc = AllocSettings.from_state(state.cluster)
    return {**{k: getattr(alloc, k) for k in AllocSettings.__dataclass_fields__}, "shared_vm_storage": shared_vm_storage(state)}


def shared_vm_storage(state: State) -> bool:
    return bool((state.cluster.get("alloc") or {}).get("shared_vm_storage"))


@command("cluster.settings_set", SETTINGS_FIELDS, target=None)
def cluster_settings_set(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Change the allocation policy, overcommit, reserves, rebalancing, shared VM storage
    (only the settings given). VMs already placed stay where they are."""
    require_initialized(state)
    state.cluster["alloc"] = {**(state.cluster.get("alloc") or {}), **args}
    return settings_view(state)
