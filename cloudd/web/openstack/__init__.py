"""The OpenStack-compatible API: Keystone v3 (``/identity``), Nova v2.1 (``/compute``),
Glance v2 (``/image``), Neutron v2.0 (``/network``) and Cinder v3 (``/volume``), mapped
onto cloudd's own objects, authorization and replicated commands (docs/openstack.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cloudd.web.api import Api
from cloudd.web.openstack import (
    compute,
    compute_extra,
    identity,
    image,
    network,
    volume,
)
from cloudd.web.openstack.common import OsApi
from cloudd.web.openstack.errors import Shape, keystone_error, neutron_error, nova_error

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
PREFIXES: tuple[tuple[str, Shape], ...] = (
    ("/identity", keystone_error), ("/compute", nova_error), ("/image", nova_error), ("/network", neutron_error), ("/volume", nova_error),
)


def unknown(shape: Shape) -> Callable[[Request], Awaitable[Response]]:
    """Anything else under a service's prefix: a 404 in that service's shape."""

    async def not_found(request: Request) -> Response:
        return shape(404, f"{request.method} {request.url.path[:200]} is not served here")

    return not_found


def routes(api: Api) -> list[BaseRoute]:
    """Every OpenStack route, each under its service's own prefix."""
    os_api = OsApi(api)
    out: list[BaseRoute] = []
    for module in (identity, compute, compute_extra, image, network, volume):
        out += module.routes(os_api)
    for prefix, shape in PREFIXES:
        out.append(Route(prefix + "/{rest:path}", unknown(shape), methods=METHODS))
    return out
