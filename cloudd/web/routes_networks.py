"""/api/v1/networks, /api/v1/ports, /api/v1/ips and a VM's NICs (/api/v1/vms/{ref}/nics).

Users see the public networks and their own, create private (VXLAN) networks, and see
and change only the ports of their own VMs. Admins create public networks (and VLANs)
and see everything. Attaching and detaching a NIC is carried out by the VM's node: 202
with a task.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.networks import NETWORK_FIELDS, NIC_FIELDS, PROFILES
from cloudd.errors import CloudError
from cloudd.model.networks import MAC_PREFIX, addresses_in_use, pool_size, ports_on, visible_to
from cloudd.model.state import State
from cloudd.validate import Field
from cloudd.web.api import Api, accepted, find_owned, page
from cloudd.web.auth import Principal
from cloudd.web.http import guarded, json_response, read_json
from cloudd.web.openapi import PATH_PARAM, ApiRoute, Doc, Param

NETWORK_CREATE = {k: v for k, v in NETWORK_FIELDS.items()}
NETWORK_UPDATE = {k: NETWORK_FIELDS[k] for k in ("dhcp", "dns", "profile", "mtu", "description")} | {"name": Field("str", max_len=64, required=False)}
NIC_ATTACH = {**NIC_FIELDS, "network": Field("str", max_len=64)}
PORT_UPDATE = {"profile": Field("str", choices=PROFILES)}
IP_ASSIGN = {"ip": Field("str", max_len=15, required=False)}
NETWORK_REF = Param("the network's id, or its name (409 when several networks you can see have it)", PATH_PARAM)
PORT_REF = Param("the port's id", PATH_PARAM)


def network_view(state: State, network: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """A network with its pool's use; the segment details only to admins and owners."""
    view = dict(network)
    view["public"] = network["owner"] is None
    view["addresses"] = {"pool": pool_size(network), "used": len(addresses_in_use(state, network["id"]))}
    view["ports"] = sum(1 for p in ports_on(state, network["id"]) if principal.is_admin or p["owner"] == principal.name)
    if not principal.is_admin and network["owner"] is None:
        view.pop("uplink", None)
    return view


def port_view(state: State, port: dict[str, Any]) -> dict[str, Any]:
    view = dict(port)
    view["ips"] = list(port["ips"])
    vm = state.vms.get(port["vm"])
    network = state.networks.get(port["network"])
    view["vm_name"] = vm["name"] if vm else None
    view["network_name"] = network["name"] if network else None
    return view


def ip_items(state: State, port: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per address of ``port`` (IPv4 ones, then its IPv6 one), each with the
    port's traffic counters: the filter counts per port, whichever address was used."""
    view = port_view(state, port)
    shared = {
        "network": port["network"], "network_name": view["network_name"], "public": state.networks[port["network"]]["owner"] is None,
        "port": port["id"], "vm": port["vm"], "vm_name": view["vm_name"], "owner": port["owner"], "mac": port["mac"], "usage": port.get("usage"),
    }
    items = [{"ip": ip, "version": 4, "primary": n == 0, **shared} for n, ip in enumerate(port["ips"])]
    if port.get("ipv6"):
        items.append({"ip": port["ipv6"], "version": 6, "primary": False, **shared})
    return items


def find_network(state: State, principal: Principal, ref: str) -> dict[str, Any]:
    """A network the caller may see, by id or name; 404 otherwise (call under the lock)."""
    user = None if principal.is_admin else principal.name
    network = state.networks.get(ref)
    if network is not None and visible_to(network, user):
        return network
    named = [n for n in state.networks.values() if n["name"] == ref and visible_to(n, user)]
    if len(named) > 1:
        mine = [n for n in named if n["owner"] == principal.name]
        if len(mine) == 1:
            return mine[0]
        raise CloudError("conflict", f"several networks are named {ref}: use the id", {"ids": sorted(n["id"] for n in named)})
    if not named:
        raise CloudError("not_found", f"network {ref} not found")
    return named[0]


def may_change(network: dict[str, Any], principal: Principal) -> None:
    if not principal.is_admin and network["owner"] != principal.name:
        raise CloudError("forbidden", f"network {network['name']} is public: only admins change it")


def find_port(state: State, principal: Principal, port_id: str) -> dict[str, Any]:
    port = state.ports.get(port_id)
    if port is None or not (principal.is_admin or port["owner"] == principal.name):
        raise CloudError("not_found", f"port {port_id} not found")
    return port


def resolve_nics(state: State, principal: Principal, nics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """NIC requests naming networks by id or name, with the network ids the commands take.
    Users may only choose MACs of cloudd's own range: another MAC could be a router's on
    the segment, which a VM sending from it would steal."""
    for nic in nics:
        if "mac" in nic and not principal.is_admin and not nic["mac"].lower().startswith(MAC_PREFIX + ":"):
            raise CloudError("forbidden", f"choose a MAC in {MAC_PREFIX}:xx:xx:xx (others are for admins)", {"field": "mac"})
    return [{**nic, "network": find_network(state, principal, nic["network"])["id"]} for nic in nics]


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime

    def view_of(network_id: str, principal: Principal, fallback: dict[str, Any]) -> dict[str, Any]:
        """The network as the API shows it now (the command's result once it is gone again)."""
        with runtime.raft.lock:
            state = runtime.raft.state
            network = state.networks.get(network_id)
            return network_view(state, network, principal) if network is not None else {**fallback, "public": fallback.get("owner") is None}

    @guarded
    async def networks_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        user = None if principal.is_admin else principal.name
        with runtime.raft.lock:
            state = runtime.raft.state
            items = [network_view(state, n, principal) for n in state.networks.values() if visible_to(n, user)]
        items.sort(key=lambda n: (not n["public"], n["owner"] or "", n["name"], n["id"]))
        return json_response(page(items, request))

    @guarded
    async def networks_create(request: Request) -> Response:
        principal = await api.principal(request)
        if principal.kind != "user":
            raise CloudError("forbidden", "networks belong to users")
        body = await read_json(request, NETWORK_CREATE)
        if principal.is_admin:
            owner = body.pop("owner", None)  # an admin's network is public unless given an owner
        else:
            if body.pop("owner", principal.name) != principal.name:
                raise CloudError("forbidden", "only admins create networks for other users or public ones")
            owner = principal.name
        result, index = await api.commit(request, principal, "network.create", {"id": secrets.token_hex(4), "owner": owner, **body})
        return json_response(view_of(result["id"], principal, result), status=201, index=index)

    @guarded
    async def networks_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            return json_response(network_view(state, find_network(state, principal, request.path_params["ref"]), principal))

    @guarded
    async def networks_update(request: Request) -> Response:
        principal = await api.principal(request)
        with runtime.raft.lock:
            network = dict(find_network(runtime.raft.state, principal, request.path_params["ref"]))
        may_change(network, principal)
        body = await read_json(request, NETWORK_UPDATE)
        result, index = await api.commit(request, principal, "network.update", {"id": network["id"], **body})
        return json_response(view_of(network["id"], principal, result), index=index)

    @guarded
    async def networks_delete(request: Request) -> Response:
        principal = await api.principal(request)
        with runtime.raft.lock:
            network = dict(find_network(runtime.raft.state, principal, request.path_params["ref"]))
        may_change(network, principal)
        result, index = await api.commit(request, principal, "network.delete", {"id": network["id"]})
        return json_response(result, index=index)

    @guarded
    async def ports_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        everyone = principal.is_admin and request.query_params.get("all") == "true"
        vm_ref, net_ref = request.query_params.get("vm"), request.query_params.get("network")
        with runtime.raft.lock:
            state = runtime.raft.state
            vm_id = find_owned(state.vms, principal, vm_ref, "VM")["id"] if vm_ref else None
            net_id = find_network(state, principal, net_ref)["id"] if net_ref else None
            items = [
                port_view(state, p)
                for p in state.ports.values()
                if (everyone or vm_id is not None or p["owner"] == principal.name)
                and (vm_id is None or p["vm"] == vm_id)
                and (net_id is None or p["network"] == net_id)
            ]
        items.sort(key=lambda p: (p["owner"], p["vm_name"] or "", p["slot"], p["id"]))
        return json_response(page(items, request))

    @guarded
    async def ports_show(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            return json_response(port_view(state, find_port(state, principal, request.path_params["id"])))

    def port_id_of(principal: Principal, request: Request) -> str:
        """The path's port, if the caller may act on it (404 otherwise)."""
        with runtime.raft.lock:
            return str(find_port(runtime.raft.state, principal, request.path_params["id"])["id"])

    @guarded
    async def ports_update(request: Request) -> Response:
        principal = await api.principal(request)
        port_id = port_id_of(principal, request)
        body = await read_json(request, PORT_UPDATE)
        result, index = await api.commit(request, principal, "port.update", {"id": port_id, **body})
        return json_response(result, index=index)

    @guarded
    async def ports_ip_assign(request: Request) -> Response:
        principal = await api.principal(request)
        port_id = port_id_of(principal, request)
        body = await read_json(request, IP_ASSIGN)
        result, index = await api.commit(request, principal, "port.ip.assign", {"id": port_id, **body})
        return json_response(result, status=201, index=index)

    @guarded
    async def ports_ip_unassign(request: Request) -> Response:
        principal = await api.principal(request)
        port_id = port_id_of(principal, request)
        result, index = await api.commit(request, principal, "port.ip.unassign", {"id": port_id, "ip": request.path_params["ip"]})
        return json_response(result, index=index)

    @guarded
    async def ips_list(request: Request) -> Response:
        """Every address of the caller's ports, with its port's traffic counters."""
        principal = await api.principal(request)
        await api.fresh(request)
        everyone = principal.is_admin and request.query_params.get("all") == "true"
        net_ref = request.query_params.get("network")
        with runtime.raft.lock:
            state = runtime.raft.state
            net_id = find_network(state, principal, net_ref)["id"] if net_ref else None
            items = []
            for port in state.ports.values():
                if not (everyone or port["owner"] == principal.name) or (net_id is not None and port["network"] != net_id):
                    continue
                items += ip_items(state, port)
        items.sort(key=lambda i: (i["version"], int(ipaddress.ip_address(i["ip"]))))
        return json_response(page(items, request))

    @guarded
    async def vm_nics_list(request: Request) -> Response:
        principal = await api.principal(request)
        await api.fresh(request)
        with runtime.raft.lock:
            state = runtime.raft.state
            vm = find_owned(state.vms, principal, request.path_params["ref"], "VM")
            items = [port_view(state, state.ports[p]) for p in vm.get("ports", ()) if p in state.ports]
        return json_response(page(items, request))

    @guarded
    async def vm_nics_attach(request: Request) -> Response:
        principal = await api.principal(request)
        with runtime.raft.lock:  # someone else's VM is not found, whatever the body says
            vm = find_owned(runtime.raft.state.vms, principal, request.path_params["ref"], "VM")
        body = await read_json(request, NIC_ATTACH)
        with runtime.raft.lock:
            (nic,) = resolve_nics(runtime.raft.state, principal, [body])
        result, index = await api.commit(request, principal, "vm.nic.attach", {"id": vm["id"], **nic})
        return accepted(result, index)

    @guarded
    async def vm_nics_detach(request: Request) -> Response:
        principal = await api.principal(request)
        with runtime.raft.lock:
            vm = find_owned(runtime.raft.state.vms, principal, request.path_params["ref"], "VM")
        result, index = await api.commit(request, principal, "vm.nic.detach", {"id": vm["id"], "port": request.path_params["port"]})
        return accepted(result, index)

    net = {"ref": NETWORK_REF}
    port = {"id": PORT_REF}
    vm = {"ref": Param("the VM's id, or its name", PATH_PARAM)}
    return [
        ApiRoute("/api/v1/networks", networks_list, "GET", Doc("The public networks and your own, with their address pools' use", "user", "networks", response="Network", paged=True)),
        ApiRoute("/api/v1/networks", networks_create, "POST", Doc(
            "Create a network: users a private VXLAN network of their own; admins a public one (or a user's with owner), VXLAN or VLAN",
            "user", "networks", body=NETWORK_CREATE, response="Network", status=201,
            description="The gateway defaults to the first host address and the DHCP server takes the last; the pool is what lies between. "
            "409 when the subnet overlaps a public network or one of the owner's.",
        )),
        ApiRoute("/api/v1/networks/{ref}", networks_show, "GET", Doc("One network (a public one, or your own)", "owner", "networks", response="Network", path_params=net)),
        ApiRoute("/api/v1/networks/{ref}", networks_update, "PATCH", Doc(
            "Rename, switch DHCP, change DNS servers, MTU or the default firewall profile of new ports (public networks: admins)",
            "owner", "networks", body=NETWORK_UPDATE, response="Network", path_params=net,
        )),
        ApiRoute("/api/v1/networks/{ref}", networks_delete, "DELETE", Doc("Delete a network no port uses (409 otherwise)", "owner", "networks", response="Ok", path_params=net)),
        ApiRoute("/api/v1/ports", ports_list, "GET", Doc(
            "Your VMs' NICs (admins: all=true for everyone's)", "user", "networks", response="Port", paged=True,
            query={"vm": Param("only this VM's (id or name)"), "network": Param("only on this network (id or name)"), "all": Param("admins: true for every user's")},
        )),
        ApiRoute("/api/v1/ports/{id}", ports_show, "GET", Doc("One port: MAC, addresses, firewall profile, traffic counters", "owner", "networks", response="Port", path_params=port)),
        ApiRoute("/api/v1/ports/{id}", ports_update, "PATCH", Doc(
            "Change the port's inbound firewall profile: open, web (22/80/443), ssh (22) or closed", "owner", "networks", body=PORT_UPDATE, response="Port", path_params=port,
        )),
        ApiRoute("/api/v1/ports/{id}/ips", ports_ip_assign, "POST", Doc(
            "Give the port one more address (a free one, or ip); public networks count against the pool's public_ips",
            "owner", "networks", body=IP_ASSIGN, response="PortIps", status=201, path_params=port,
        )),
        ApiRoute("/api/v1/ports/{id}/ips/{ip}", ports_ip_unassign, "DELETE", Doc(
            "Take an address off the port (it keeps at least one)", "owner", "networks", response="PortIps",
            path_params={**port, "ip": Param("the address", PATH_PARAM)},
        )),
        ApiRoute("/api/v1/ips", ips_list, "GET", Doc(
            "Your addresses with their VM, network and traffic counters (admins: all=true)", "user", "networks", response="Ip", paged=True,
            query={"network": Param("only on this network (id or name)"), "all": Param("admins: true for every user's")},
        )),
        ApiRoute("/api/v1/vms/{ref}/nics", vm_nics_list, "GET", Doc("The VM's NICs in the order the guest sees them", "owner", "networks", response="Port", paged=True, path_params=vm)),
        ApiRoute("/api/v1/vms/{ref}/nics", vm_nics_attach, "POST", Doc(
            "Attach the VM to a network (hot-plugged when it runs): a new port with a free address (or ip) and a unique MAC (or mac)",
            "owner", "networks", body=NIC_ATTACH, response="Accepted", status=202, path_params=vm,
            description="403 when the owner's pool is locked to other networks; 403 quota_exceeded past its public_ips.",
        )),
        ApiRoute("/api/v1/vms/{ref}/nics/{port}", vm_nics_detach, "DELETE", Doc(
            "Detach a NIC (hot-unplugged when the VM runs); its addresses are free again", "owner", "networks", response="Accepted", status=202,
            path_params={**vm, "port": Param("the port's id", PATH_PARAM)},
        )),
    ]
