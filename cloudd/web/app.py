"""The Starlette application every node serves."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from cloudd.errors import CloudError
from cloudd.logging_setup import RequestIdMiddleware
from cloudd.metrics import install as install_metrics
from cloudd.runtime import NodeRuntime
from cloudd.web import console
from cloudd.web import routes_alloc, routes_cluster, routes_compute, routes_images, routes_migration, routes_networks, routes_nodes, routes_pools, routes_storage, routes_users, ui
from cloudd.web import openstack
from cloudd.web.api import Api
from cloudd.web.audit import RefusedWriteAudit
from cloudd.web.http import error_response, guarded, json_response
from cloudd.web.openapi import ApiRoute, Doc, openapi_document
from cloudd.web.schemas import SCHEMAS
from cloudd.web.security_headers import SecurityHeaders

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid", 413: "payload_too_large"}


def package_version() -> str:
    try:
        return version("cloudd")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def openapi_route() -> ApiRoute:
    """``GET /api/v1/openapi.json``: the document of the application's own routes, built
    at the first request and kept (the routes do not change while a node runs)."""
    built: list[bytes] = []

    @guarded
    async def openapi_json(request: Request) -> Response:
        if not built:
            built.append(orjson.dumps(openapi_document(request.app.routes, SCHEMAS, package_version())))
        return Response(built[0], media_type="application/json")

    doc = Doc("This document: every /api/v1 operation (OpenAPI 3.0)", "public", "meta", response={"type": "object"}, fresh=False)
    return ApiRoute("/api/v1/openapi.json", openapi_json, "GET", doc)


def create_app(runtime: NodeRuntime) -> Starlette:
    api = Api(runtime)

    async def healthz(request: Request) -> Response:
        status = runtime.raft.raft_status()
        caught_up = runtime.raft.isReady()
        healthy = caught_up and (status["has_quorum"] or status["role"] == "replica")
        return json_response(
            {"status": "ok" if healthy else "degraded", "node": runtime.config.name, "role": status["role"], "caught_up": caught_up},
            status=200 if healthy else 503,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = HTTP_CODES.get(exc.status_code, "invalid" if exc.status_code < 500 else "internal")
        return error_response(CloudError(code, str(exc.detail)))

    health = Doc(
        "This node's health: 200 when it has caught up and has quorum (or is a replica), else 503", "public", "meta",
        response="Health", also={503: "Health"}, fresh=False,
    )
    routes: list[BaseRoute] = [ApiRoute("/healthz", healthz, "GET", health), openapi_route()]
    routes += routes_cluster.routes(api)
    routes += routes_nodes.routes(api)
    routes += routes_users.routes(api)
    routes += routes_networks.routes(api)  # before /vms/{ref}/{action}: /vms/{ref}/nics is theirs
    routes += routes_alloc.routes(api)  # and /vms/{ref}/placement
    routes += routes_migration.routes(api)  # and /vms/{ref}/migrate
    routes += console.routes(api)  # and /vms/{ref}/console; /static/novnc before ui's /static
    routes += routes_compute.routes(api)
    routes += routes_images.routes(api)
    routes += routes_pools.routes(api)
    routes += routes_storage.routes(api)
    routes += openstack.routes(api)  # /identity, /compute, /image, /network, /volume
    routes += ui.routes(api)
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, middleware=[Middleware(SecurityHeaders), Middleware(RefusedWriteAudit)])  # nosniff on every answer
    app.state.api = api
    install_metrics(app, runtime)  # GET /metrics and the latency histogram
    app.add_middleware(RequestIdMiddleware)  # outermost: every log line of a request has its id
    return app
