"""Migrations: admins move VMs between nodes; nodes hand each other a VM's files.

/api/v1/vms/{ref}/migrate        POST    start a migration (202 with its task)
/api/v1/vms/{ref}/migration      DELETE  cancel it (before its commit point)
/internal/v1/vms/{id}/files[/{name}]  GET  node to node: the files an offline migration
                                          copies, only to that migration's target while
                                          it is copying (never to users)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from cloudd.alloc.placement import place
from cloudd.alloc.snapshot import AllocSettings, Snapshot, demand_of
from cloudd.commands.alloc import shared_vm_storage
from cloudd.errors import CloudError
from cloudd.model.migration import MODES, live_refusal
from cloudd.model.state import State
from cloudd.ops.vm_files import movable_files
from cloudd.validate import Field
from cloudd.web.api import Api, accepted, find_owned
from cloudd.web.auth import require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import ApiRoute, Doc, Param

VM_REF = Param("the VM's id or name")
MIGRATE = {
    "node": Field("str", max_len=63, required=False),
    "mode": Field("str", choices=MODES, required=False),
    "force": Field("bool", required=False),
    "bandwidth_mib_s": Field("int", min=1, max=1 << 20, required=False),
    "max_downtime_ms": Field("int", min=10, max=60_000, required=False),
}


def choose_target(state: State, vm: dict[str, Any]) -> str:
    """Where the allocator would put the VM now (never its own node). Call under the lock."""
    snap = Snapshot.build(state.nodes, state.vms.values(), AllocSettings.from_state(state.cluster))
    decision = place(snap, demand_of(vm), {vm["node"]}, "the VM is there already")
    if decision.node is None:
        raise CloudError("conflict", f"no node can take VM {vm['name']}: " + "; ".join(f"{n}: {r}" for n, r in sorted(decision.refused.items())))
    return decision.node


def default_mode(state: State, vm: dict[str, Any], target: str) -> str:
    """Live when the VM runs, its disks are shared and both nodes can; else offline."""
    nodes = state.nodes
    if (
        vm["state"] == "running" and shared_vm_storage(state)
        and vm["node"] in nodes and target in nodes
        and not (live_refusal(nodes[vm["node"]]) or live_refusal(nodes[target]))
    ):
        return "live"
    return "offline"


def routes(api: Api) -> list[BaseRoute]:
    runtime = api.runtime

    @guarded
    async def vm_migrate(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, MIGRATE)
        with runtime.raft.lock:
            state = runtime.raft.state
            vm = find_owned(state.vms, principal, request.path_params["ref"], "VM")
            if not vm.get("node"):
                raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: it is on no node yet", {"state": vm["state"]})
            target = body.get("node") or choose_target(state, vm)
            mode = body.get("mode") or default_mode(state, vm, target)
        args = {"id": vm["id"], "node": target, "mode": mode, **{k: body[k] for k in ("force", "bandwidth_mib_s", "max_downtime_ms") if k in body}}
        result, index = await api.commit(request, principal, "vm.migrate", args)
        return accepted(result, index)

    @guarded
    async def vm_migration_cancel(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        with runtime.raft.lock:
            vm = find_owned(runtime.raft.state.vms, principal, request.path_params["ref"], "VM")
        result, index = await api.commit(request, principal, "vm.migration_cancel", {"id": vm["id"]})
        return json_response(result, index=index)

    def _serving(request: Request, vm_id: str) -> tuple[dict[str, Any], Path]:
        """The VM whose files a node may fetch from here now, and its directory."""
        with runtime.raft.lock:
            vm = runtime.raft.state.vms.get(vm_id)
            mig = dict(vm.get("migration") or {}) if vm is not None else {}
            vm = dict(vm) if vm is not None else None
        principal = request.state.principal
        if vm is None or not mig or mig["source"] != runtime.config.name or mig["target"] != principal.name:
            raise CloudError("not_found", f"no migration of VM {vm_id} from {runtime.config.name} to {principal.name}")
        if mig["phase"] != "copying":
            raise CloudError("conflict", f"the migration of VM {vm_id} is {mig['phase']}, not copying")
        vm_dir = runtime.config.compute.vm_dir or str(Path(runtime.config.data_dir) / "vms")
        return vm, Path(vm_dir) / vm_id

    async def node_principal(request: Request) -> None:
        principal = await api.principal(request)
        if principal.kind != "node":
            raise CloudError("forbidden", "only cluster nodes fetch VM files")

    @guarded
    async def vm_files_list(request: Request) -> Response:
        await node_principal(request)
        vm, directory = _serving(request, request.path_params["id"])
        files = [{"name": name, "size": (directory / name).stat().st_size} for name in movable_files(vm) if (directory / name).is_file()]
        return json_response({"files": files})

    @guarded
    async def vm_file(request: Request) -> Response:
        await node_principal(request)
        vm, directory = _serving(request, request.path_params["id"])
        name = request.path_params["name"]
        if name not in movable_files(vm):
            raise CloudError("not_found", f"VM {vm['id']} has no file {name} to move")
        path = directory / name
        if not path.is_file():
            raise CloudError("not_found", f"{name} of VM {vm['id']} is not on {runtime.config.name}")
        return FileResponse(path, media_type="application/octet-stream")

    return [
        ApiRoute("/api/v1/vms/{ref}/migrate", vm_migrate, "POST", Doc(
            "Move a VM to another node (admins): live, or offline", "admin", "vms", body=MIGRATE, response="Accepted", status=202,
            path_params={"ref": VM_REF},
            description="`node`: the target (default: where the allocator would place it). `mode`: `live` (a running VM on shared storage, "
            "between nodes that can) or `offline` (shut down, local disks copied, started on the target; a running VM needs `force`); "
            "default: live when possible. `bandwidth_mib_s`, `max_downtime_ms`: live only (default: the cluster's settings). "
            "Refused with 4xx and nothing changed: the same node, a node in maintenance, without room or without the VM's CPU model, "
            "a VM that is not running or stopped, too many migrations at once. Follow the answer's `task`.",
        )),
        ApiRoute("/api/v1/vms/{ref}/migration", vm_migration_cancel, "DELETE", Doc(
            "Cancel a VM's migration (admins)", "admin", "vms", response="Named", path_params={"ref": VM_REF},
            description="Before its commit point only: an offline migration rolls back at once (the VM is defined again on its source); "
            "a running live migration is aborted by the source, whose guest keeps running.",
        )),
        Route("/internal/v1/vms/{id}/files", vm_files_list, methods=["GET"]),
        Route("/internal/v1/vms/{id}/files/{name}", vm_file, methods=["GET"]),
    ]
