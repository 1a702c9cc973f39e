"""The error bodies OpenStack clients understand, one per service family.

Nova (and Cinder, Glance here): ``{"itemNotFound": {"message", "code"}}`` with the fault
name the status implies; Keystone: ``{"error": {"message", "code", "title"}}``; Neutron:
``{"NeutronError": {"type", "message", "detail"}}``. Handlers raise ``CloudError`` as the
``/api/v1`` routes do; ``os_guarded`` turns it into the right shape and any other
exception into a logged 500 that tells nothing of the cause.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from cloudd.errors import CloudError
from cloudd.web.http import INDEX_HEADER, json_response

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]
Shape = Callable[[int, str], Response]

NOVA_FAULTS = {
    400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
    409: "conflictingRequest", 413: "overLimit", 415: "badMediaType", 429: "overLimit", 501: "notImplemented",
    503: "serviceUnavailable",
}
KEYSTONE_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Request Entity Too Large", 415: "Unsupported Media Type", 429: "Too Many Requests",
    500: "Internal Server Error", 503: "Service Unavailable",
}
NEUTRON_TYPES = {
    400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden", 404: "HTTPNotFound", 405: "HTTPMethodNotAllowed",
    409: "HTTPConflict", 413: "HTTPRequestEntityTooLarge", 415: "HTTPUnsupportedMediaType",
}
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Keystone uri="/identity/v3"'}


def nova_error(status: int, message: str) -> Response:
    """Nova's fault body (also what Cinder and this Glance answer)."""
    name = NOVA_FAULTS.get(status, "computeFault")
    headers = UNAUTHORIZED_HEADERS if status == 401 else None
    return json_response({name: {"message": message, "code": status}}, status=status, headers=headers)


def keystone_error(status: int, message: str) -> Response:
    headers = UNAUTHORIZED_HEADERS if status == 401 else None
    title = KEYSTONE_TITLES.get(status, "Error")
    return json_response({"error": {"message": message, "code": status, "title": title}}, status=status, headers=headers)


def neutron_error(status: int, message: str) -> Response:
    headers = UNAUTHORIZED_HEADERS if status == 401 else None
    body = {"NeutronError": {"type": NEUTRON_TYPES.get(status, "HTTPInternalServerError"), "message": message, "detail": ""}}
    return json_response(body, status=status, headers=headers)


def os_guarded(shape: Shape) -> Callable[[Endpoint], Endpoint]:
    """Answer ``CloudError`` in ``shape``; log anything else and answer a bare 500."""

    def decorate(handler: Endpoint) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            try:
                return await handler(request)
            except CloudError as exc:
                response = shape(exc.status, exc.message)
                if exc.index is not None:  # refused inside the log: its event is the audit
                    response.headers[INDEX_HEADER] = str(exc.index)
                return response
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                return shape(500, "internal error; see the node's log")

        wrapper.__name__ = handler.__name__
        wrapper.__doc__ = handler.__doc__
        return wrapper

    return decorate


nova_guarded = os_guarded(nova_error)
keystone_guarded = os_guarded(keystone_error)
neutron_guarded = os_guarded(neutron_error)
