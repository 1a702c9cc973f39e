"""/api/v1/flavors, /api/v1/images, /api/v1/vms.

Users see and act on their own VMs only (someone else's VM is a 404); flavors are
readable by everyone and managed by admins; images are public or their owner's, and
only admins register them for now (an image path names a file on the hypervisors).
Long operations answer 202 with the VM; poll it until its state settles.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.commands.compute import FLAVOR_NAME, SSH_KEY
from cloudd.errors import CloudError
from cloudd.model.vm import STATES
from cloudd.validate import HOSTNAME_RE, Field
from cloudd.web.api import Api, accepted, page
from cloudd.web.auth import Principal, require_admin
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.routes_images import image_by_ref

VM_ACTIONS = {"start": "vm.start", "stop": "vm.stop", "shutdown": "vm.shutdown", "reset": "vm.reset", "reboot": "vm.reboot"}
VM_RESIZE = {
    "flavor": Field("str", max_len=64, required=False),
    "vcpus": Field("int", required=False),
    "ram_mb": Field("int", required=False),
    "disk_gb": Field("num", required=False),
}
HIDDEN_VM_FIELDS = ("user_data", "vnc_password")  # the console proxy hands out access


def vm_view(vm: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in vm.items() if k not in HIDDEN_VM_FIELDS}
    view["has_user_data"] = bool(vm.get("user_data"))
    return view


def routes(api: Api) -> list[Route]:
    runtime = api.runtime

    def find_vm(principal: Principal, ref: str) -> dict[str, Any]:
        """A VM by id or by name, among the ones the caller may see; 404 otherwise."""
        with runtime.raft.lock:
            vm = runtime.raft.state.vms.get(ref)
            if vm is not None and (principal.is_admin or vm["owner"] == principal.name):
                return dict(vm)
            named = [v for v in runtime.raft.state.vms.values() if v["name"] == ref and (principal.is_admin or v["owner"] == principal.name)]
        if len(named) > 1:
            raise CloudError("conflict", f"several VMs are named {ref}: use the id", {"ids": sorted(v["id"] for v in named)})
        if not named:
            raise CloudError("not_found", f"VM {ref} not found")
        return dict(named[0])

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
        body = await read_json(request, {"name": FLAVOR_NAME, "vcpus": Field("int"), "ram_mb": Field("int"), "disk_gb": Field("num")})
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
        with runtime.raft.lock:
            items = [
                vm_view(v)
                for v in runtime.raft.state.vms.values()
                if (everyone or v["owner"] == (owner or principal.name))
                and (state_filter is None or v["state"] == state_filter)
                and (node is None or v["node"] == node)
            ]
        items.sort(key=lambda v: (v["owner"], v["name"], v["id"]))
        return json_response(page(items, request))

    @guarded
    async def vms_create(request: Request) -> Response:
        principal = await api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "VMs belong to users")
        body = await read_json(
            request,
            {
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
            },
        )
        owner = body.pop("owner", principal.name)
        if owner != principal.name and not principal.is_admin:
            raise CloudError("forbidden", "only admins create VMs for other users")
        for key in ("image", "iso"):
            if body.get(key):
                body[key] = image_id(body[key], owner)
        # VNC allows at most 8 characters of password; the port is on the node's address
        vnc_password = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))
        args = {"id": secrets.token_hex(8), "owner": owner, **body, "vnc_password": vnc_password}
        result, index = await api.commit(request, principal, "vm.create", args)
        with runtime.raft.lock:
            vm = runtime.raft.state.vms.get(result["id"])
            view = vm_view(vm) if vm else None
        return accepted(result, index, view)

    @guarded
    async def vms_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        return json_response(vm_view(find_vm(principal, request.path_params["ref"])))

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
        await read_json(request, {})
        vm = find_vm(principal, request.path_params["ref"])
        result, index = await api.commit(request, principal, VM_ACTIONS[action], {"id": vm["id"]})
        return accepted(result, index)

    @guarded
    async def vm_disk_add(request: Request) -> Response:
        principal = await api.principal(request)
        body = await read_json(request, {"size_gb": Field("num")})
        vm = find_vm(principal, request.path_params["ref"])
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
        body = await read_json(request, {"image": Field("str", max_len=128)})
        vm = find_vm(principal, request.path_params["ref"])
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
        Route("/api/v1/flavors", flavors_list, methods=["GET"]),
        Route("/api/v1/flavors", flavors_create, methods=["POST"]),
        Route("/api/v1/flavors/{name}", flavors_delete, methods=["DELETE"]),
        Route("/api/v1/vms", vms_list, methods=["GET"]),
        Route("/api/v1/vms", vms_create, methods=["POST"]),
        Route("/api/v1/vms/{ref}", vms_show, methods=["GET"]),
        Route("/api/v1/vms/{ref}", vms_delete, methods=["DELETE"]),
        Route("/api/v1/vms/{ref}/disks", vm_disk_add, methods=["POST"]),
        Route("/api/v1/vms/{ref}/disks/{disk_id}", vm_disk_remove, methods=["DELETE"]),
        Route("/api/v1/vms/{ref}/iso", vm_iso_attach, methods=["POST"]),
        Route("/api/v1/vms/{ref}/iso", vm_iso_detach, methods=["DELETE"]),
        Route("/api/v1/vms/{ref}/resize", vm_resize, methods=["POST"]),
        Route("/api/v1/vms/{ref}/{action}", vms_action, methods=["POST"]),
    ]
