"""How VMs and volumes let go of each other (used by the VM and the volume commands)."""

from __future__ import annotations

from typing import Any

from cloudd.model.state import State


def settle(volume: dict[str, Any], ts: float) -> None:
    new = "attached" if volume["attached_to"] else "available"
    if volume["state"] != new:
        volume["state"], volume["state_since"] = new, ts


def released_by(state: State, vm: dict[str, Any], ts: float) -> None:
    """After a VM's report: the volumes it was letting go of (``vm["releasing"]``) are free
    once it no longer shows them, or no longer runs."""
    if not vm.get("releasing"):
        return
    live = (vm["observed"].get("disks") or []) if vm["observed"].get("power") == "running" else []
    still = []
    for volume_id in vm["releasing"]:
        volume = state.volumes.get(volume_id)
        if volume is None or volume["state"] != "detaching":
            continue
        if volume["target"] in live:
            still.append(volume_id)
            continue
        volume["target"] = None
        settle(volume, ts)
    vm["releasing"] = still


def vm_volumes_released(state: State, vm: dict[str, Any], ts: float) -> None:
    """A deleted VM lets go of every volume it had or was letting go of."""
    for volume_id in [ref["id"] for ref in vm.get("volumes", ())] + list(vm.get("releasing", ())):
        volume = state.volumes.get(volume_id)
        if volume is not None:
            volume["attached_to"] = volume["target"] = None
            settle(volume, ts)
    vm["volumes"], vm["releasing"] = [], []
