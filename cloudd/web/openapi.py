"""The OpenAPI 3 document, built from the routes themselves.

Every ``/api/v1`` route is an ``ApiRoute`` carrying a ``Doc``: its summary, who may call
it, the body spec the handler validates with (the same ``Field`` mapping, so the
document cannot drift from the check) and the schema of its answer. ``openapi_document``
walks the application's routes; a test checks that every route is documented and that
every documented operation exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from starlette.routing import BaseRoute, Route

from cloudd.validate import Field

# who may call an operation: the authorization matrix test reads this
ACCESS = {
    "public": "anyone, no credentials",
    "user": "any authenticated user (sees only their own objects)",
    "owner": "the object's owner or an admin; someone else's object is a 404",
    "admin": "admins only; users get 403",
    "join": "a one-time join token proves the caller",
}


@dataclass(frozen=True)
class Param:
    """A query, path or header parameter."""

    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Doc:
    """One operation's documentation.

    ``body`` is the very spec the handler passes to ``read_json`` (``{}``: no fields, an
    empty or absent body); ``path_params`` narrows a path parameter's schema (default: a
    1-128 character string); ``headers`` are response headers; ``also`` lists answers
    besides the success and the error shape (``{503: "Health"}``); ``fresh=False`` says a
    GET does not honour ``min_index``.
    """

    summary: str
    access: str
    tag: str
    body: Mapping[str, Field] | None = None
    raw_body: str | None = None  # a non-JSON body's media type (image files)
    query: Mapping[str, Param] = field(default_factory=dict)
    path_params: Mapping[str, Param] = field(default_factory=dict)
    response: Mapping[str, Any] | str | None = None  # a schema, or a component's name
    status: int = 200
    media_type: str = "application/json"
    description: str = ""
    paged: bool = False  # a list answer: {"items": [...], "total", "limit", "offset"}
    headers: Mapping[str, Param] = field(default_factory=dict)
    also: Mapping[int, Mapping[str, Any] | str] = field(default_factory=dict)
    fresh: bool = True

    def __post_init__(self) -> None:
        if self.access not in ACCESS:
            raise ValueError(f"unknown access {self.access!r}")


class ApiRoute(Route):
    """A Starlette route for one method, with its documentation."""

    def __init__(self, path: str, endpoint: Callable[..., Any], method: str, doc: Doc) -> None:
        super().__init__(path, endpoint, methods=[method])
        unknown = set(doc.path_params) - set(re.findall(r"{(\w+)}", path))
        if unknown:
            raise ValueError(f"{method} {path} documents path parameters it does not have: {sorted(unknown)}")
        self.method = method
        self.doc = doc


PAGING = {
    "limit": Param("page size, 1..1000 (default 100)", {"type": "integer", "minimum": 1, "maximum": 1000}),
    "offset": Param("items to skip (default 0)", {"type": "integer", "minimum": 0, "maximum": 1 << 40}),
    "min_index": Param("wait until this node has applied this Raft index (read-your-writes)", {"type": "integer", "minimum": 0}),
}
FRESH = {"min_index": PAGING["min_index"]}
PATH_PARAM: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 128}
# every 202 comes from ``cloudd.web.api.accepted``: the body carries the task, this points at it
TASK_LOCATION = {"Location": Param("the task of the operation: /api/v1/tasks/{id}")}


def field_schema(f: Field) -> dict[str, Any]:
    """The JSON schema of one ``Field`` (OpenAPI 3.0 dialect)."""
    out: dict[str, Any]
    if f.kind == "str":
        out = {"type": "string"}
        if f.max_len is not None:
            out["maxLength"] = f.max_len
        if f.pattern is not None:
            out["pattern"] = f.pattern.pattern
    elif f.kind in ("int", "num"):
        out = {"type": "integer" if f.kind == "int" else "number"}
        if f.min is not None:
            out["minimum"] = f.min
        if f.max is not None:
            out["maximum"] = f.max
    elif f.kind == "bool":
        out = {"type": "boolean"}
    elif f.kind == "list":
        out = {"type": "array", "items": field_schema(f.item) if f.item else {}}
        if f.max_len is not None:
            out["maxItems"] = f.max_len
    elif f.kind == "dict":
        out = {"type": "object", "additionalProperties": field_schema(f.item) if f.item else True}
        if f.max_len is not None:
            out["maxProperties"] = f.max_len
    elif f.kind == "obj":
        out = object_schema(f.spec or {})
    else:
        out = {}
    if f.choices is not None:
        out["enum"] = list(f.choices)
    if f.nullable:
        out["nullable"] = True
    return out


def object_schema(spec: Mapping[str, Field]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": {name: field_schema(f) for name, f in spec.items()},
        "additionalProperties": False,
    }
    required = [name for name, f in spec.items() if f.required]
    if required:
        out["required"] = required
    return out


def _ref(schema: Mapping[str, Any] | str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else dict(schema)


def _operation(route: ApiRoute) -> dict[str, Any]:
    doc = route.doc
    op: dict[str, Any] = {
        "summary": doc.summary,
        "operationId": f"{route.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower()).strip('_')}",
        "tags": [doc.tag],
        "x-cloudd-access": doc.access,
        "description": (doc.description + "\n\n" if doc.description else "") + f"Who: {ACCESS[doc.access]}.",
    }
    params = [_path_param(name, doc.path_params.get(name)) for name in re.findall(r"{(\w+)}", route.path)]
    query = {**doc.query, **(PAGING if doc.paged else {})}
    if route.method == "GET" and doc.fresh and "min_index" not in query:
        query["min_index"] = PAGING["min_index"]
    params += [{"name": name, "in": "query", "required": False, "description": p.description, "schema": dict(p.schema)} for name, p in query.items()]
    if params:
        op["parameters"] = params
    op["security"] = _security(route.method, doc.access)
    if doc.body is not None:
        op["requestBody"] = {"required": any(f.required for f in doc.body.values()), "content": {"application/json": {"schema": object_schema(doc.body)}}}
    elif doc.raw_body is not None:
        op["requestBody"] = {"required": True, "content": {doc.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    if doc.response is None:
        content: dict[str, Any] = {doc.media_type: {"schema": {"type": "object"}}}
    elif doc.media_type != "application/json":
        content = {doc.media_type: {"schema": _ref(doc.response)}}
    elif doc.paged:
        content = {"application/json": {"schema": {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": {"type": "array", "items": _ref(doc.response)},
                "total": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
        }}}
    else:
        content = {"application/json": {"schema": _ref(doc.response)}}
    success: dict[str, Any] = {"description": "success", "content": content}
    headers = {**(TASK_LOCATION if doc.status == 202 else {}), **doc.headers}
    if headers:
        success["headers"] = {name: {"description": p.description, "schema": dict(p.schema)} for name, p in headers.items()}
    op["responses"] = {
        str(doc.status): success,
        **{str(status): {"description": "another answer (see the description)", "content": {"application/json": {"schema": _ref(schema)}}} for status, schema in doc.also.items()},
        "default": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    }
    return op


def _security(method: str, access: str) -> list[dict[str, list[str]]]:
    """Who authenticates how: the login cookie only for reads (see ``cloudd.web.auth``);
    the join endpoint checks its token's proof itself."""
    if access in ("public", "join"):
        return []
    # nodes sign their own calls (X-Cloudd-Node); that is cluster-internal, not offered here
    schemes = ["bearer", "session"] if method == "GET" else ["bearer"]
    return [{name: []} for name in schemes]


def _path_param(name: str, param: Param | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": dict(param.schema) if param else dict(PATH_PARAM)}
    if param is not None:
        out["description"] = param.description
    return out


def api_routes(routes: list[BaseRoute]) -> list[ApiRoute]:
    return [r for r in routes if isinstance(r, ApiRoute)]


def openapi_document(routes: list[BaseRoute], schemas: Mapping[str, Any], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in api_routes(routes):
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "cloudd API",
            "version": version,
            "description": "Every node serves this API. Writes are committed through Raft; "
            "send X-Request-Id to make a write idempotent, and X-Cloudd-Min-Index (or "
            "?min_index=) to read your own writes on another node. Long operations answer 202 "
            "with their task in the body and Location: /api/v1/tasks/{id}. Errors have one shape: "
            '{"error": {"code", "message", "details"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": dict(schemas),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "cdt.<id>.<secret> from login or POST /api/v1/tokens"},
                "session": {"type": "apiKey", "in": "cookie", "name": "cloudd_session", "description": "the login cookie (reads only)"},
            },
        },
    }
