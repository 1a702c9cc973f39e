"""Allocation for admins: the cluster's settings, a VM's placement explained, capacity.

/api/v1/cluster/settings          GET, PATCH   policy, overcommit, reserves, shared storage
/api/v1/cluster/capacity          GET          how many more VMs of a flavor fit; N+1
/api/v1/vms/{ref}/placement       GET          every node's score or refusal for this VM
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.alloc.placement import fit_count, n_plus_one, place
from cloudd.alloc.rebalance import plan_rebalance
from cloudd.validate import Field
from cloudd.alloc.snapshot import AllocSettings, Demand, Snapshot, demand_of
from cloudd.commands.alloc import SETTINGS_FIELDS, settings_view, shared_vm_storage
from cloudd.moves import movable_without_downtime, plan_finished
from cloudd.moves import rebalance_status as moves_status
from cloudd.errors import CloudError
from cloudd.web.api import Api, find_owned
from cloudd.web.auth import require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import PATH_PARAM, ApiRoute, Doc, Param

SETTINGS_UPDATE = SETTINGS_FIELDS
REBALANCE = {"apply": Field("bool", required=False), "max_moves": Field("int", min=1, max=1000, required=False)}


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    def snapshot() -> Snapshot:
        """Call under the replica's lock."""
        state = runtime.raft.state
        return Snapshot.build(state.nodes, state.vms.values(), AllocSettings.from_state(state.cluster))

    @guarded
    async def settings_show(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        with runtime.raft.lock:
            return json_response(settings_view(runtime.raft.state))

    @guarded
    async def settings_update(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, SETTINGS_UPDATE)
        result, index = await api.commit(request, principal, "cluster.settings_set", body)
        return json_response(result, index=index)

    @guarded
    async def capacity_show(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        name = request.query_params.get("flavor")
        with runtime.raft.lock:
            state = runtime.raft.state
            snap = snapshot()
            answer: dict[str, Any] = {"policy": snap.settings.policy}
            if name is not None:
                flavor = state.flavors.get(name)
                if flavor is None:
                    raise CloudError("not_found", f"flavor {name} not found")
                per_node = fit_count(snap, Demand("", flavor["vcpus"], flavor["ram_mb"], float(flavor["disk_gb"])))
                answer["flavor"] = {"name": name, "fits": sum(per_node.values()), "per_node": per_node}
            stranded = n_plus_one(snap)
            names = {vm_id: state.vms[vm_id]["name"] for vms in stranded.values() for vm_id in vms if vm_id in state.vms}
            answer["n_plus_one"] = {
                "ok": not any(stranded.values()),
                "at_risk": {node: sorted(names.get(v, v) for v in vms) for node, vms in stranded.items() if vms},
            }
            answer["nodes"] = [
                {
                    "node": n, "usable": load.usable is None, "reason": load.usable,
                    "vcpus": {"allocated": load.alloc_vcpus, "capacity": load.cap_vcpus},
                    "ram_mb": {"allocated": load.alloc_ram_mb, "capacity": load.cap_ram_mb, "used": load.used_ram_mb},
                    "disk_gb": {"allocated": round(load.alloc_disk_gb, 3), "capacity": load.cap_disk_gb},
                    "vms": len(load.vms),
                }
                for n, load in snap.nodes.items()
            ]
        return json_response(answer)

    @guarded
    async def placement_explain(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        await api.fresh(request)
        with runtime.raft.lock:
            vm = find_owned(runtime.raft.state.vms, principal, request.path_params["ref"], "VM")
            snap = snapshot()
            snap.remove(vm["id"])  # as if placing it anew
            decision = place(snap, demand_of(vm))
        return json_response({"vm": vm["id"], "name": vm["name"], "current_node": vm.get("node"), "policy": snap.settings.policy, **decision.to_dict()})

    @guarded
    async def rebalance(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, REBALANCE)
        await api.fresh(request)
        with runtime.raft.lock:
            snap = snapshot()
            state = runtime.raft.state
            shared = shared_vm_storage(state)
            movable = {v["id"] for v in state.vms.values() if movable_without_downtime(v, state.nodes, shared)}
        # planned outside the replica's lock (and off the event loop): commands go on applying
        plan = await asyncio.to_thread(plan_rebalance, snap, body.get("max_moves", snap.settings.rebalance_max_moves), lambda d: d.vm_id in movable)
        with runtime.raft.lock:
            names = {m.vm_id: (runtime.raft.state.vms.get(m.vm_id) or {}).get("name", m.vm_id) for m in plan.moves}
        answer = {
            "moves": [{"vm": m.vm_id, "name": names[m.vm_id], "from": m.source, "to": m.target, "gain": m.gain} for m in plan.moves],
            "score_before": round(plan.score_before, 6), "score_after": round(plan.score_after, 6),
            "spread_before": plan.spread_before, "spread_after": plan.spread_after,
            "n_plus_one_before": plan.n_plus_one_before, "n_plus_one_after": plan.n_plus_one_after,
            "applied": False,
        }
        answer["plan"] = None
        if body.get("apply") and plan.moves:
            plan_id = "p" + secrets.token_hex(6)
            moves = [{"vm": m.vm_id, "from": m.source, "to": m.target} for m in plan.moves]
            _, index = await api.commit(request, principal, "cluster.rebalance_set", {"id": plan_id, "moves": moves})
            answer["applied"], answer["plan"] = True, plan_id
            return json_response(answer, index=index)
        return json_response(answer)

    @guarded
    async def rebalance_status(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            plan = state.cluster.get("rebalance")
            if plan is None:
                return json_response({"plan": None})
            moves = moves_status(plan, state.vms, state.tasks)
            view = {**{k: v for k, v in plan.items() if k != "moves"}, "moves": moves, "finished": plan_finished(plan, state.vms, state.tasks)}
        return json_response({"plan": view})

    return [
        ApiRoute("/api/v1/cluster/rebalance", rebalance, "POST", Doc(
            "Plan (and with apply=true execute) a bounded list of moves that evens out the hypervisors, keeping N+1 when it held",
            "admin", "cluster", body=REBALANCE, response="Rebalance",
            description="The score is a sum of standard deviations across nodes (allocated RAM, vCPU and disk shares; observed RAM "
            "under the usage and trend policies), like Ganeti's hbal. Only VMs that can move without downtime are moved: stopped ones "
            "(offline) and running ones that can migrate live. apply=true hands the plan to the leader, which runs its moves as "
            "migrations within the cluster's limits (409 while another plan runs); follow it at GET /api/v1/cluster/rebalance.",
        )),
        ApiRoute("/api/v1/cluster/rebalance", rebalance_status, "GET", Doc(
            "The last rebalance plan handed to the leader, with each move's status and task", "admin", "cluster", response="RebalanceStatus",
        )),
        ApiRoute("/api/v1/cluster/settings", settings_show, "GET", Doc("The allocation policy and its settings, and whether VM disks are on shared storage", "admin", "cluster", response="ClusterSettings")),
        ApiRoute("/api/v1/cluster/settings", settings_update, "PATCH", Doc(
            "Change allocation settings (only those given)", "admin", "cluster", body=SETTINGS_UPDATE, response="ClusterSettings",
            description="policy: resource (allocations), usage (observed use) or trend (a short forecast of it). "
            "shared_vm_storage: the VM directory is shared (e.g. NFS), so HA VMs can be restarted on another node.",
        )),
        ApiRoute("/api/v1/cluster/capacity", capacity_show, "GET", Doc(
            "Capacity planning: how many more VMs of a flavor fit, per node, and whether every VM finds room if any one node is lost (N+1)",
            "admin", "cluster", response="Capacity", query={"flavor": Param("a flavor's name")},
        )),
        ApiRoute("/api/v1/vms/{ref}/placement", placement_explain, "GET", Doc(
            "Where the allocator would place this VM now, with every node's score (and its parts) or the reason it is refused",
            "admin", "vms", response="Placement", path_params={"ref": Param("the VM's id or name", PATH_PARAM)},
        )),
    ]
