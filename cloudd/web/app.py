"""The Starlette application every node serves."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from cloudd.errors import CloudError
from cloudd.runtime import NodeRuntime
from cloudd.web import routes_cluster, routes_compute, routes_images, routes_nodes, routes_pools, routes_users, ui
from cloudd.web.api import Api
from cloudd.web.http import error_response, json_response

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid", 413: "payload_too_large"}


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

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET"])]
    routes += routes_cluster.routes(api)
    routes += routes_nodes.routes(api)
    routes += routes_users.routes(api)
    routes += routes_compute.routes(api)
    routes += routes_images.routes(api)
    routes += routes_pools.routes(api)
    routes += ui.routes(api)
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.api = api
    return app
