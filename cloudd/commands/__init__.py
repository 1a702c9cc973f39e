"""Replicated commands: the registry, ``apply_command`` and every handler module."""

from cloudd.commands import alloc, cluster, compute, failover, images, keypairs, migration, networks, nodes, pools, replication, restore, users, vm_devices, volumes  # noqa: F401  (registers handlers)
from cloudd.commands.registry import REGISTRY, Context, apply_command, make_command

__all__ = ["REGISTRY", "Context", "apply_command", "make_command"]
