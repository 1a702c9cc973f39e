"""The VM lifecycle: a small named vocabulary of states and the transitions allowed.

| state     | meaning                                                              |
|-----------|----------------------------------------------------------------------|
| pending   | accepted; waiting for the leader to place it on a node               |
| creating  | placed (or re-homed by failover); the node's agent defines the domain |
| stopped   | defined on its node, not running                                      |
| starting  | asked to run; the agent starts it                                     |
| running   | running on its node                                                   |
| stopping  | asked to stop (clean ACPI shutdown, forced after a timeout, or force) |
| migrating | moving to another node                                                |
| error     | an action failed; ``error`` says why                                  |
| deleting  | being removed from its node with its local disks                      |

A VM that is gone is removed from the state (its events remain).
"""

from __future__ import annotations

from cloudd.errors import CloudError

STATES = ("pending", "creating", "stopped", "starting", "running", "stopping", "migrating", "error", "deleting")

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"creating", "deleting", "error"}),
    "creating": frozenset({"stopped", "starting", "running", "error", "deleting"}),
    # "creating" from a placed state: only vm.failover re-homes a VM of a lost node
    "stopped": frozenset({"starting", "running", "migrating", "error", "deleting", "creating"}),
    "starting": frozenset({"running", "stopping", "stopped", "error", "deleting", "creating"}),
    "running": frozenset({"stopping", "stopped", "migrating", "error", "deleting", "creating"}),
    "stopping": frozenset({"stopped", "running", "error", "deleting", "creating"}),
    "migrating": frozenset({"running", "stopped", "error", "creating"}),
    "error": frozenset({"starting", "stopping", "stopped", "running", "deleting", "creating"}),
    "deleting": frozenset(),
}

POWER_STATES = ("running", "shut_off", "paused", "absent", "crashed")


def check_transition(vm: dict[str, object], target: str) -> None:
    """Raise 409 naming the current state when ``target`` is not reachable from it."""
    current = str(vm["state"])
    if target != current and target not in TRANSITIONS[current]:
        raise CloudError(
            "conflict",
            f"VM {vm['name']} is {current}: it cannot go to {target}",
            {"state": current, "wanted": target},
        )


def move(vm: dict[str, object], target: str, ts: float, reason: str | None = None) -> None:
    """Change state (checked) and note when and why."""
    check_transition(vm, target)
    if vm["state"] != target:
        vm["state"] = target
        vm["state_since"] = ts
        vm["state_reason"] = reason
