"""/api/v1/flavors, /api/v1/images, /api/v1/vms.

Users see and act on their own VMs only (someone else's VM is a 404); flavors are
readable by everyone and managed by admins; images are public or their owner's, and
only admins register them for now (an image path names a file on the hypervisors).
Long operations answer 202 with their task (``Location: /api/v1/tasks/{id}``); poll it
until it ends.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.compute import FLAVOR_NAME, SSH_KEY
from cloudd.commands.networks import NIC_FIELDS
from cloudd.errors import CloudError
from cloudd.model.vm import STATES
from cloudd.validate import HOSTNAME_RE, Field
from cloudd.web.api import Api, accepted, find_owned, page, page_bounds
from cloudd.web.auth import Principal, require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import PATH_PARAM, ApiRoute, Doc, Param
from cloudd.web.routes_images import image_by_ref
from cloudd.web.routes_networks import resolve_nics

VM_ACTIONS = {"start": "vm.start", "stop": "vm.stop", "shutdown": "vm.shutdown", "reset": "vm.reset", "reboot": "vm.reboot"}
FLAVOR_CREATE = {"name": FLAVOR_NAME, "vcpus": Field("int"), "ram_mb": Field("int"), "disk_gb": Field("num")}
VM_CREATE = {
    "name": Field("str", pattern=HOSTNAME_RE),
    "flavor": Field("str", max_len=64, required=False),
    "vcpus": Field("int", required=False),
    "ram_mb": Field("int", required=False),
    "disk_gb": Field("num", required=False),
    "image": Field("str", max_len=128, nullable=True, required=False),
    "power": Field("str", required=False),
    "ha": Field("bool", required=False),
    "ha_priority": Field("int", required=False),
    "ssh_keys": Field("list", max_len=16, item=SSH_KEY, required=False),
    "user_data": Field("str", max_len=64 << 10, required=False),
    "swap_mb": Field("int", required=False),
    "iso": Field("str", max_len=128, required=False),
    "owner": Field("str", max_len=64, required=False),
    "group": Field("str", max_len=64, required=False),
    "nodes": Field("list", max_len=64, item=Field("str", max_len=63), required=False),
    "networks": Field("list", max_len=8, item=Field("obj", spec={**NIC_FIELDS, "network": Field("str", max_len=64)}), required=False),
}
VM_ACTION: dict[str, Field] = {}
VM_DISK_ADD = {"size_gb": Field("num")}
VM_ISO_ATTACH = {"image": Field("str", max_len=128)}
VM_RESIZE = {
    "flavor": Field("str", max_len=64, required=False),
    "vcpus": Field("int", required=False),
    "ram_mb": Field("int", required=False),
    "disk_gb": Field("num", required=False),
}
VM_REF = Param("the VM's id, or its name (409 when several VMs you can see have it)", PATH_PARAM)
HIDDEN_VM_FIELDS = ("user_data", "vnc_password")  # the console proxy hands out access


def vm_view(vm: dict[str, Any], ports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the API shows of a VM (a shallow copy: C-speed, which pages of 100 need), with
    its NICs (network, MAC, addresses) from ``ports``."""
    view = dict(vm)
    view["nics"] = [
        {"port": p, "network": ports[p]["network"], "mac": ports[p]["mac"], "ips": list(ports[p]["ips"]), "ipv6": ports[p].get("ipv6")}
        for p in vm.get("ports", ()) if p in ports
    ]
    for key in HIDDEN_VM_FIELDS:
        view.pop(key, None)
    if view.get("migration"):
        view["migration"] = {k: v for k, v in view["migration"].items() if k != "target_spec"}
    view["has_user_data"] = bool(vm.get("user_data"))
    return view


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    def find_vm(principal: Principal, ref: str) -> dict[str, Any]:
        """A VM by id or by name, among the ones the caller may see; 404 otherwise."""
        with runtime.raft.lock:
            return find_owned(runtime.raft.state.vms, principal, ref, "VM")

    def image_id(ref: str, owner: str) -> str:
        """An image id from an id or a name the owner can use (left as is when unknown:
        the command answers 404, and checks the owner may use it)."""
        with runtime.raft.lock:
            image = image_by_ref(runtime.raft.state.images, ref, owner)
        return image["id"] if image is not None else ref

    @guarded
    async def flavors_list(request: Request) -> Response:
        await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            items = sorted((dict(f) for f in runtime.raft.state.flavors.values()), key=lambda f: (f["vcpus"], f["ram_mb"], f["name"]))
        return json_response(page(items, request))

    @guarded
    async def flavors_create(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, FLAVOR_CREATE)
        result, index = await api.commit(request, principal, "flavor.create", body)
        return json_response(result, status=201, index=index)

    @guarded
    async def flavors_delete(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        result, index = await api.commit(request, principal, "flavor.delete", {"name": request.path_params["name"]})
        return json_response(result, index=index)

    @guarded
    async def vms_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        state_filter = request.query_params.get("state")
        if state_filter is not None and state_filter not in STATES:
            raise CloudError("invalid", f"state must be one of: {', '.join(STATES)}")
        owner = request.query_params.get("owner")
        if owner is not None and not principal.is_admin and owner != principal.name:
            raise CloudError("forbidden", "only admins list other users' VMs")
        everyone = principal.is_admin and request.query_params.get("all") == "true"
        node = request.query_params.get("node")
        limit, offset = page_bounds(request)
        with runtime.raft.lock:
            # ids in (owner, name, id) order from the state's index: only the page is copied
            state = runtime.raft.state
            whose = None if everyone else (owner or principal.name)
            if state_filter is None and node is None:
                chosen, total = state.vm_page(whose, offset, limit)
            else:
                matching = [
                    i for i in state.vm_ids_of(whose)
                    if (state_filter is None or state.vms[i]["state"] == state_filter) and (node is None or state.vms[i]["node"] == node)
                ]
                chosen, total = matching[offset : offset + limit], len(matching)
            items = [vm_view(state.vms[i], state.ports) for i in chosen]
        return json_response({"items": items, "total": total, "limit": limit, "offset": offset})

    @guarded
    async def vms_create(request: Request) -> Response:
        principal = await api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "VMs belong to users")
        body = await read_json(request, VM_CREATE)
        owner = body.pop("owner", principal.name)
        if owner != principal.name and not principal.is_admin:
            raise CloudError("forbidden", "only admins create VMs for other users")
        for key in ("image", "iso"):
            if body.get(key):
                body[key] = image_id(body[key], owner)
        if body.get("networks"):
            with runtime.raft.lock:
                body["networks"] = resolve_nics(runtime.raft.state, principal, body["networks"])
        # VNC allows at most 8 characters of password; the port is on the node's address
        vnc_password = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))
        args = {"id": secrets.token_hex(8), "owner": owner, **body, "vnc_password": vnc_password}
        result, index = await api.commit(request, principal, "vm.create", args)
        with runtime.raft.lock:
            vm = runtime.raft.state.vms.get(result["id"])
            view = vm_view(vm, runtime.raft.state.ports) if vm else None
        return accepted(result, index, view)

    @guarded
    async def vms_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        vm = find_vm(principal, request.path_params["ref"])
        with runtime.raft.lock:
            return json_response(vm_view(vm, runtime.raft.state.ports))

    @guarded
    async def vms_delete(request: Request) -> Response:
        principal = await api.principal(request)
        vm = find_vm(principal, request.path_params["ref"])
        result, index = await api.commit(request, principal, "vm.delete", {"id": vm["id"]})
        return accepted(result, index)

    @guarded
    async def vms_action(request: Request) -> Response:
        principal = await api.principal(request)
        action = request.path_params["action"]
        if action not in VM_ACTIONS:
            raise CloudError("not_found", f"unknown VM action {action}; use one of: {', '.join(VM_ACTIONS)}")
        vm = find_vm(principal, request.path_params["ref"])
        await read_json(request, VM_ACTION)
        result, index = await api.commit(request, principal, VM_ACTIONS[action], {"id": vm["id"]})
        return accepted(result, index)

    @guarded
    async def vm_disk_add(request: Request) -> Response:
        principal = await api.principal(request)
        vm = find_vm(principal, request.path_params["ref"])  # someone else's VM: 404 before any 400
        body = await read_json(request, VM_DISK_ADD)
        args = {"id": vm["id"], "disk_id": secrets.token_hex(6), "size_gb": body["size_gb"]}
        result, index = await api.commit(request, principal, "vm.disk.add", args)
        return accepted(result, index)

    @guarded
    async def vm_disk_remove(request: Request) -> Response:
        principal = await api.principal(request)
        vm = find_vm(principal, request.path_params["ref"])
        args = {"id": vm["id"], "disk_id": request.path_params["disk_id"]}
        result, index = await api.commit(request, principal, "vm.disk.remove", args)
        return accepted(result, index)

    @guarded
    async def vm_iso_attach(request: Request) -> Response:
        principal = await api.principal(request)
        vm = find_vm(principal, request.path_params["ref"])  # someone else's VM: 404 before any 400
        body = await read_json(request, VM_ISO_ATTACH)
        args = {"id": vm["id"], "image": image_id(body["image"], vm["owner"])}
        result, index = await api.commit(request, principal, "vm.iso.attach", args)
        return accepted(result, index)

    @guarded
    async def vm_iso_detach(request: Request) -> Response:
        principal = await api.principal(request)
        vm = find_vm(principal, request.path_params["ref"])
        result, index = await api.commit(request, principal, "vm.iso.detach", {"id": vm["id"]})
        return accepted(result, index)

    @guarded
    async def vm_resize(request: Request) -> Response:
        principal = await api.principal(request)
        body = await read_json(request, VM_RESIZE)
        vm = find_vm(principal, request.path_params["ref"])
        result, index = await api.commit(request, principal, "vm.resize", {"id": vm["id"], **body})
        return accepted(result, index)

    return [
        ApiRoute("/api/v1/flavors", flavors_list, "GET", Doc("Named sizes, smallest first", "user", "flavors", response="Flavor", paged=True)),
        ApiRoute("/api/v1/flavors", flavors_create, "POST", Doc("Define a named size", "admin", "flavors", body=FLAVOR_CREATE, response="Flavor", status=201)),
        ApiRoute("/api/v1/flavors/{name}", flavors_delete, "DELETE", Doc("Delete a flavor; VMs created from it keep their sizes", "admin", "flavors", response="Named")),
        ApiRoute("/api/v1/vms", vms_list, "GET", Doc(
            "Your VMs (admins: anyone's with all=true or owner=)", "user", "vms", response="Vm", paged=True,
            query={
                "state": Param("only VMs in this state", {"type": "string", "enum": list(STATES)}),
                "node": Param("only VMs on this node"),
                "owner": Param("only this user's VMs (admins; a user may name only themselves, else 403)"),
                "all": Param("`true`: everyone's VMs (admins; ignored for users)"),
            },
        )),
        ApiRoute("/api/v1/vms", vms_create, "POST", Doc(
            "Create a VM from a flavor or vcpus, ram_mb and disk_gb", "user", "vms", body=VM_CREATE, response="VmCreated", status=202,
            description="`image` and `iso` take an id or a name; no `image` gets the cluster's default image, `\"image\": null` a blank disk. "
            "`power`: running (default) or stopped. `owner`: admins create VMs for other users. Counts against the owner's pool (403 quota_exceeded). "
            "Answers the VM with its `task`.",
        )),
        ApiRoute("/api/v1/vms/{ref}", vms_show, "GET", Doc("One VM: state, desired and observed state, node, sizes", "owner", "vms", response="Vm", path_params={"ref": VM_REF})),
        ApiRoute("/api/v1/vms/{ref}", vms_delete, "DELETE", Doc(
            "Delete a VM with its disks: gone once its node removed it", "owner", "vms", response="Accepted", status=202, path_params={"ref": VM_REF},
        )),
        ApiRoute("/api/v1/vms/{ref}/disks", vm_disk_add, "POST", Doc(
            "Add a blank extra disk (hot-plugged when the VM runs)", "owner", "vms", body=VM_DISK_ADD, response="Accepted", status=202, path_params={"ref": VM_REF},
            description="The answer's `disk` has the new disk's `id` and `target`.",
        )),
        ApiRoute("/api/v1/vms/{ref}/disks/{disk_id}", vm_disk_remove, "DELETE", Doc(
            "Unplug an extra disk and delete its file", "owner", "vms", response="Accepted", status=202, path_params={"ref": VM_REF},
        )),
        ApiRoute("/api/v1/vms/{ref}/iso", vm_iso_attach, "POST", Doc(
            "Insert an ISO image (its id or name) as the VM's CD-ROM", "owner", "vms", body=VM_ISO_ATTACH, response="Accepted", status=202, path_params={"ref": VM_REF},
        )),
        ApiRoute("/api/v1/vms/{ref}/iso", vm_iso_detach, "DELETE", Doc(
            "Eject the VM's ISO (409 when none is attached)", "owner", "vms", response="Accepted", status=202, path_params={"ref": VM_REF},
        )),
        ApiRoute("/api/v1/vms/{ref}/resize", vm_resize, "POST", Doc(
            "Resize a stopped VM: a flavor, or vcpus, ram_mb, disk_gb", "owner", "vms", body=VM_RESIZE, response="Accepted", status=202, path_params={"ref": VM_REF},
            description="Only stopped (or not yet placed) VMs; the OS disk only grows. Checked against the pool's limits and the VM's node.",
        )),
        ApiRoute("/api/v1/vms/{ref}/{action}", vms_action, "POST", Doc(
            "A power action: start, stop (force off), shutdown (ACPI, forced after a timeout), reset, reboot", "owner", "vms", body=VM_ACTION,
            response="Accepted", status=202, description="A transition the VM's state forbids is a 409 with `details.state`; reset and reboot need it running.",
            path_params={"ref": VM_REF, "action": Param("the action", {"type": "string", "enum": list(VM_ACTIONS)})},
        )),
    ]
