"""Neutron v2.0 under ``/network``: networks (public and one's own, ``visible_to`` as
``GET /api/v1/networks``), their IPv4 subnets, one's VMs' ports; no routers or
floating IPs (empty lists). Read-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloudd.errors import CloudError
from cloudd.model.networks import visible_to
from cloudd.model.state import State
from cloudd.web.auth import Principal
from cloudd.web.http import json_response
from cloudd.web.openstack.common import OsApi, base_url
from cloudd.web.openstack.errors import neutron_guarded
from cloudd.web.openstack.mapping import network_view, port_view, subnet_view

EMPTY = ("routers", "floatingips", "security-groups", "security-group-rules", "trunks", "qos/policies")


def matches(view: dict[str, Any], request: Request, keys: tuple[str, ...]) -> bool:
    """Neutron's equality filters (``?name=…&id=…``; a repeated key means any of them)."""
    for key in keys:
        wanted = request.query_params.getlist(key)
        if wanted and str(view.get(key)) not in wanted and not (isinstance(view.get(key), bool) and str(view[key]).lower() in [w.lower() for w in wanted]):
            return False
    return True


def routes(os_api: OsApi) -> list[Route]:
    runtime = os_api.runtime

    def networks_of(state: State, principal: Principal) -> list[dict[str, Any]]:
        user = None if principal.is_admin else principal.name
        return sorted((n for n in state.networks.values() if visible_to(n, user)), key=lambda n: (n["name"], n["id"]))

    def listing(key: str, build: Callable[[State, Principal], list[dict[str, Any]]], filters: tuple[str, ...]) -> Callable[[Request], Any]:
        @neutron_guarded
        async def handler(request: Request) -> Response:
            principal = await os_api.principal(request)
            with runtime.raft.lock:
                items = build(runtime.raft.state, principal)
            return json_response({key: [i for i in items if matches(i, request, filters)]})

        handler.__name__ = f"{key}_list"
        return handler

    def showing(key: str, build: Callable[[State, Principal], list[dict[str, Any]]], what: str) -> Callable[[Request], Any]:
        @neutron_guarded
        async def handler(request: Request) -> Response:
            principal = await os_api.principal(request)
            wanted = request.path_params["item_id"]
            with runtime.raft.lock:
                found = [i for i in build(runtime.raft.state, principal) if i["id"] == wanted]
            if not found:
                raise CloudError("not_found", f"{what} {wanted[:64]} could not be found.")
            return json_response({key: found[0]})

        handler.__name__ = f"{key}_show"
        return handler

    def networks(state: State, principal: Principal) -> list[dict[str, Any]]:
        return [network_view(state, n) for n in networks_of(state, principal)]

    def subnets(state: State, principal: Principal) -> list[dict[str, Any]]:
        return [subnet_view(state, n) for n in networks_of(state, principal)]

    def ports(state: State, principal: Principal) -> list[dict[str, Any]]:
        mine = (p for p in state.ports.values() if principal.is_admin or p["owner"] == principal.name)
        return [port_view(state, p) for p in sorted(mine, key=lambda p: p["id"])]

    def nothing(state: State, principal: Principal) -> list[dict[str, Any]]:
        return []

    @neutron_guarded
    async def versions(request: Request) -> Response:
        href = f"{base_url(request)}/network/v2.0/"
        return json_response({"versions": [{"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": href}]}]})

    @neutron_guarded
    async def v20(request: Request) -> Response:
        href = f"{base_url(request)}/network/v2.0"
        names = ("network", "subnet", "port")
        return json_response({"resources": [{"name": n, "collection": f"{n}s", "links": [{"rel": "self", "href": f"{href}/{n}s"}]} for n in names]})

    prefix = "/network/v2.0"
    out = [
        Route("/network", versions, methods=["GET"]),
        Route("/network/", versions, methods=["GET"]),
        Route(prefix, v20, methods=["GET"]),
        Route(f"{prefix}/", v20, methods=["GET"]),
        Route(f"{prefix}/networks", listing("networks", networks, ("id", "name", "shared", "router:external", "status")), methods=["GET"]),
        Route(f"{prefix}/networks/{{item_id}}", showing("network", networks, "Network"), methods=["GET"]),
        Route(f"{prefix}/subnets", listing("subnets", subnets, ("id", "name", "network_id", "cidr")), methods=["GET"]),
        Route(f"{prefix}/subnets/{{item_id}}", showing("subnet", subnets, "Subnet"), methods=["GET"]),
        Route(f"{prefix}/ports", listing("ports", ports, ("id", "device_id", "network_id", "mac_address")), methods=["GET"]),
        Route(f"{prefix}/ports/{{item_id}}", showing("port", ports, "Port"), methods=["GET"]),
    ]
    for name in EMPTY:
        out.append(Route(f"{prefix}/{name}", listing(name.replace("qos/", "").replace("-", "_"), nothing, ()), methods=["GET"]))
    return out
