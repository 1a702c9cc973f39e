"""Nova servers under ``/compute/v2.1``: list, show, create, delete and actions.

Every operation goes through the same pieces as ``/api/v1/vms``: ``find_owned`` for who
may see a VM, ``resolve_nics`` and ``image_by_ref`` for what a creation names, and the
replicated commands (``vm.create``, ``vm.start``, ``vm.shutdown``, ``vm.reboot``,
``vm.reset``, ``vm.delete``) for every change, which check quotas and transitions.
"""

from __future__ import annotations

import asyncio

import base64
import binascii
import secrets
import string
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.commands import REGISTRY
from cloudd.commands.pools import check_network_allowed
from cloudd.errors import CloudError
from cloudd.model.networks import visible_to
from cloudd.model.state import State
from cloudd.validate import HOSTNAME_RE, Field, check_args
from cloudd.web.auth import Principal
from cloudd.web.http import json_response, request_id
from cloudd.web.openstack.common import OsApi, base_url, query_flag, read_wrapped
from cloudd.web.openstack.mapping import SERVER_STATUSES, server_brief, server_view
from cloudd.web.openstack.nova import (
    compute_url,
    find_server,
    name_filter,
    nova_endpoint,
    page_args,
    paged,
    v21_document,
)
from cloudd.web.routes_images import image_by_ref
from cloudd.web.routes_networks import resolve_nics

MAX_COUNT = 10
ANY = Field("any", required=False)
NETWORK_REQUEST = {"uuid": Field("str", max_len=64, required=False), "port": Field("str", max_len=64, required=False), "fixed_ip": Field("str", max_len=15, required=False), "tag": ANY}
BLOCK_DEVICE = {
    "boot_index": ANY, "uuid": Field("str", max_len=128, required=False), "source_type": Field("str", choices=("image", "volume", "snapshot", "blank"), required=False),
    "destination_type": Field("str", choices=("volume", "local"), required=False), "volume_size": Field("int", min=1, max=64 << 10, required=False),
    "delete_on_termination": ANY, "device_name": ANY, "disk_bus": ANY, "device_type": ANY, "guest_format": ANY, "volume_type": ANY, "tag": ANY,
}
SERVER_CREATE = {
    "name": Field("str", max_len=255),
    "flavorRef": Field("str", max_len=255),
    "imageRef": Field("str", max_len=255, required=False),
    "networks": ANY,
    "min_count": Field("int", min=1, max=MAX_COUNT, required=False),
    "max_count": Field("int", min=1, max=MAX_COUNT, required=False),
    "metadata": Field("dict", max_len=128, item=Field("str", max_len=255), required=False),
    "key_name": Field("str", max_len=255, required=False),
    "user_data": Field("str", max_len=88 << 10, required=False),
    "block_device_mapping_v2": Field("list", max_len=8, item=Field("obj", spec=BLOCK_DEVICE), required=False),
    # accepted and without effect here: one security model (port profiles), one zone
    "security_groups": Field("list", max_len=16, required=False), "OS-DCF:diskConfig": ANY, "config_drive": ANY,
    "availability_zone": Field("str", max_len=255, required=False), "accessIPv4": ANY, "accessIPv6": ANY, "adminPass": ANY,
}
CREATE_EXTRA = {"os:scheduler_hints": Field("dict", max_len=16, required=False), "OS-SCH-HNT:scheduler_hints": Field("dict", max_len=16, required=False)}
ACTIONS = ("os-start", "os-stop", "reboot", "os-getVNCConsole")
REBOOT = {"type": Field("str", choices=("SOFT", "HARD", "soft", "hard"))}
CONSOLE = {"type": Field("str", choices=("novnc", "xvpvnc"))}


def last_segment(ref: str) -> str:
    """A reference that may be a URL (``http://…/flavors/tiny``): its last path segment."""
    return ref.rstrip("/").rsplit("/", 1)[-1]


def decode_user_data(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise CloudError("invalid", "user_data must be base64 of UTF-8 text") from None


def auto_networks(state: State, user: str) -> list[dict[str, Any]]:
    """The networks a server of ``user`` may get without naming one: public ones and the
    user's own (an admin's too: other users' private networks are theirs), within the
    user's pool's network lock."""
    out = []
    for network in state.networks.values():
        if not visible_to(network, user):
            continue
        try:
            check_network_allowed(state, user, network)
        except CloudError:
            continue
        out.append(network)
    return out


def routes(os_api: OsApi) -> list[Route]:
    api = os_api.api
    runtime = os_api.runtime

    def boot_image(body: dict[str, Any], owner: str) -> tuple[str | None, float | None]:
        """The image to boot (id) and the disk size a boot volume asks for."""
        image_ref, disk_gb = body.get("imageRef") or None, None
        for bdm in body.get("block_device_mapping_v2", []):
            source = bdm.get("source_type")
            if str(bdm.get("boot_index", "")) in ("0",) and source == "image" and bdm.get("uuid"):
                image_ref, disk_gb = bdm["uuid"], bdm.get("volume_size")
            elif source not in ("image",) or str(bdm.get("boot_index", "")) not in ("0",):
                raise CloudError("invalid", "only a boot image (source_type image, boot_index 0) is supported in block_device_mapping_v2; attach volumes after creation")
        if image_ref is None:
            return None, disk_gb
        with runtime.raft.lock:
            image = image_by_ref(runtime.raft.state.images, last_segment(image_ref), owner)
        if image is None:
            raise CloudError("invalid", f"Image {last_segment(image_ref)[:64]} could not be found.")
        return image["id"], disk_gb

    def nics(principal: Principal, requested: Any) -> list[dict[str, Any]]:
        """Nova's ``networks`` as cloudd NIC requests. None, ``[]`` (2.1: none named) or
        ``auto``: the one network the caller can use (409 when there are several);
        ``none``: no NIC."""
        if requested == "none":
            return []
        with runtime.raft.lock:
            state = runtime.raft.state
            if requested is None or requested == "auto" or requested == []:
                usable = auto_networks(state, principal.name)
                if len(usable) > 1:
                    raise CloudError("conflict", "Multiple possible networks found, use a Network ID to be more specific.")
                return resolve_nics(state, principal, [{"network": n["id"]} for n in usable])
            if not isinstance(requested, list) or len(requested) > 8:
                raise CloudError("invalid", "networks must be 'auto', 'none' or a list of at most 8 networks")
            wanted = []
            for i, item in enumerate(requested):
                entry = check_args(item, NETWORK_REQUEST, prefix=f"server.networks[{i}].")
                if "port" in entry or "uuid" not in entry:
                    raise CloudError("invalid", "give each network by uuid (ports are made with the server here)")
                wanted.append({"network": entry["uuid"], **({"ip": entry["fixed_ip"]} if "fixed_ip" in entry else {})})
            try:
                return resolve_nics(state, principal, wanted)
            except CloudError as exc:
                if exc.code == "not_found":
                    raise CloudError("invalid", f"Network {exc.message.split()[1]} could not be found.") from None
                raise

    def ssh_keys(principal: Principal, key_name: str | None) -> list[str]:
        if key_name is None:
            return []
        with runtime.raft.lock:
            pair = ((runtime.raft.state.users.get(principal.name) or {}).get("keypairs") or {}).get(key_name)
        if pair is None:
            raise CloudError("invalid", "Invalid key_name provided.")
        return [pair["public_key"]]

    async def create_one(request: Request, principal: Principal, args: dict[str, Any], n: int) -> dict[str, Any]:
        """``vm.create`` as ``POST /api/v1/vms`` proposes it; a quota refusal says so.
        A client's ``X-Request-Id`` names the first server's command, ``<id>-<n+1>`` the
        n-th (a request id names one command)."""
        rid = request_id(request)
        try:
            if rid is None or n == 0:
                result, _ = await api.commit(request, principal, "vm.create", args)
            else:
                check_args(args, REGISTRY["vm.create"].args)
                result, _ = await runtime.proposer.submit_ok("vm.create", args, request_id=f"{rid[:56]}-{n + 1}", actor=principal.actor(request))
        except CloudError as exc:
            if exc.code == "quota_exceeded":
                quota = CloudError("quota_exceeded", f"Quota exceeded: {exc.message}", exc.details)
                quota.index = exc.index
                raise quota from None
            raise
        return dict(result)

    @nova_endpoint
    async def versions(request: Request) -> Response:
        return json_response({"versions": [v21_document(request)]})

    @nova_endpoint
    async def version(request: Request) -> Response:
        return json_response({"version": v21_document(request)})

    async def listing(request: Request, detail: bool) -> Response:
        principal = await os_api.principal(request)
        limit, marker = page_args(request)
        matches = name_filter(request.query_params.get("name"))
        status = request.query_params.get("status")
        if status is not None and status.upper() not in SERVER_STATUSES:
            raise CloudError("invalid", f"status must be one of: {', '.join(SERVER_STATUSES)}")
        if query_flag(request, "deleted"):
            return json_response({"servers": []})
        everyone = principal.is_admin and query_flag(request, "all_tenants")
        url = compute_url(request)
        with runtime.raft.lock:  # names only: the filter runs without holding the replica
            state = runtime.raft.state
            names = [(i, state.vms[i]["name"]) for i in state.vm_ids_of(None if everyone else principal.name)]
        wanted = await asyncio.to_thread(lambda: [i for i, name in names if matches(name)])  # off the event loop
        with runtime.raft.lock:
            state = runtime.raft.state
            views = [server_view(state, state.vms[i], url, principal.is_admin) for i in wanted if i in state.vms]
        if status is not None:
            views = [v for v in views if v["status"] == status.upper()]
        views.sort(key=lambda v: (v["created"] or "", v["id"]), reverse=True)  # newest first, as Nova
        views = paged(views, limit, marker)
        return json_response({"servers": views if detail else [{k: v[k] for k in ("id", "name", "links")} for v in views]})

    @nova_endpoint
    async def servers_list(request: Request) -> Response:
        return await listing(request, detail=False)

    @nova_endpoint
    async def servers_detail(request: Request) -> Response:
        return await listing(request, detail=True)

    @nova_endpoint
    async def servers_show(request: Request) -> Response:
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        with runtime.raft.lock:
            return json_response({"server": server_view(runtime.raft.state, vm, compute_url(request), principal.is_admin)})

    @nova_endpoint
    async def servers_create(request: Request) -> Response:
        """Create 1..max_count servers from a flavor and a boot image (imageRef, or a
        block_device_mapping_v2 boot image whose volume_size sets the disk)."""
        principal = await os_api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "servers belong to users")
        body = await read_wrapped(request, "server", SERVER_CREATE, CREATE_EXTRA)
        if not HOSTNAME_RE.fullmatch(body["name"]) or len(body["name"]) > 60:
            raise CloudError("invalid", "server names are host names here: 1-60 of a-z, 0-9 and -, not starting or ending with -")
        count = body.get("max_count", body.get("min_count", 1))
        if body.get("min_count", 1) > count:
            raise CloudError("invalid", "min_count must not be more than max_count")
        image, disk_gb = boot_image(body, principal.name)
        args: dict[str, Any] = {"owner": principal.name, "flavor": last_segment(body["flavorRef"]), "image": image}
        if disk_gb is not None:
            args["disk_gb"] = disk_gb
        if "user_data" in body:
            args["user_data"] = decode_user_data(body["user_data"])
        keys = ssh_keys(principal, body.get("key_name"))
        if keys:
            args["ssh_keys"] = keys
        with runtime.raft.lock:
            if args["flavor"] not in runtime.raft.state.flavors:
                raise CloudError("invalid", f"Flavor {args['flavor'][:64]} could not be found.")
        created = []
        for n in range(count):
            name = body["name"] if count == 1 else f"{body['name']}-{n + 1}"
            # VNC allows at most 8 characters of password (as POST /api/v1/vms makes it)
            vnc_password = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(8))
            vm_args = {**args, "id": secrets.token_hex(8), "name": name, "networks": nics(principal, body.get("networks")), "vnc_password": vnc_password}
            created.append(await create_one(request, principal, vm_args, n))
        first = created[0]
        url = compute_url(request)
        server = {**server_brief(first, url), "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}], "adminPass": ""}
        return json_response({"server": server}, status=202, headers={"Location": f"{url}/servers/{first['id']}"})

    @nova_endpoint
    async def servers_delete(request: Request) -> Response:
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        await api.commit(request, principal, "vm.delete", {"id": vm["id"]})
        return Response(status_code=204)

    @nova_endpoint
    async def servers_action(request: Request) -> Response:
        """``os-start``, ``os-stop`` (clean shutdown, forced after the node's timeout),
        ``reboot`` (SOFT: ACPI, HARD: reset) and ``os-getVNCConsole``."""
        principal = await os_api.principal(request)
        vm = find_server(os_api, principal, request.path_params["server_id"])
        body = await read_action(request)
        (action, value), = body.items()
        if action == "os-getVNCConsole":
            check_args(value, CONSOLE, prefix="os-getVNCConsole.")
            if vm["state"] != "running":  # the page itself waits for the node's VNC report
                raise CloudError("conflict", f"Instance {vm['id']} is {vm['state']}: its console opens when it runs")
            return json_response({"console": {"type": value["type"], "url": console_url(request, vm)}})
        if action == "reboot":
            kind = check_args(value, REBOOT, prefix="reboot.")["type"].upper()
            op = "vm.reset" if kind == "HARD" else "vm.reboot"
        else:
            if value is not None and value != {}:
                raise CloudError("invalid", f"{action} takes no arguments")
            op = "vm.start" if action == "os-start" else "vm.shutdown"
        await api.commit(request, principal, op, {"id": vm["id"]})
        return Response(status_code=202)

    return [
        Route("/compute", versions, methods=["GET"]),
        Route("/compute/", versions, methods=["GET"]),
        Route("/compute/v2.1", version, methods=["GET"]),
        Route("/compute/v2.1/", version, methods=["GET"]),
        Route("/compute/v2.1/servers", servers_list, methods=["GET"]),
        Route("/compute/v2.1/servers", servers_create, methods=["POST"]),
        Route("/compute/v2.1/servers/detail", servers_detail, methods=["GET"]),
        Route("/compute/v2.1/servers/{server_id}", servers_show, methods=["GET"]),
        Route("/compute/v2.1/servers/{server_id}", servers_delete, methods=["DELETE"]),
        Route("/compute/v2.1/servers/{server_id}/action", servers_action, methods=["POST"]),
    ]


async def read_action(request: Request) -> dict[str, Any]:
    """An action body: exactly one known action key."""
    from cloudd.web.http import read_json

    body = await read_json(request, {name: Field("any", required=False, nullable=True) for name in ACTIONS})
    if len(body) != 1:
        raise CloudError("invalid", f"give exactly one action of: {', '.join(ACTIONS)}")
    return body


def console_url(request: Request, vm: dict[str, Any]) -> str:
    """cloudd's own noVNC console page for this VM on the node that answered. The page
    issues its one-time websocket token itself when a logged-in browser opens it (the
    tokens of ``POST /api/v1/vms/{ref}/console`` live 30 s, too short for a URL to paste)."""
    return f"{base_url(request)}/ui/vms/{vm['id']}/console"
