"""The OpenAPI document: every /api/v1 route in it, valid OpenAPI 3.0, true to the handlers.

The application is built without a node (no route reads its runtime until it is called);
the document is fetched the way clients get it, from ``GET /api/v1/openapi.json``.
"""

from __future__ import annotations

import ast
import re
import asyncio
import inspect
from types import ModuleType, SimpleNamespace
from typing import Any, Iterator, Mapping

import httpx
import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

from cloudd.validate import Field
from cloudd.web import routes_alloc, routes_cluster, routes_compute, routes_images, routes_migration, routes_networks, routes_nodes, routes_pools, routes_storage, routes_users
from cloudd.web.app import create_app
from cloudd.web.openapi import ACCESS, ApiRoute, api_routes, openapi_document
from cloudd.web.routes_compute import vm_view
from cloudd.web.routes_nodes import node_view
from cloudd.web.routes_pools import pool_view
from cloudd.web.routes_users import token_view, user_view
from cloudd.web.schemas import SCHEMAS
from tests.factories import PW_HASH, Replica
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm

ROUTE_MODULES = (routes_cluster, routes_nodes, routes_users, routes_compute, routes_images, routes_pools, routes_storage, routes_networks, routes_alloc, routes_migration)
PUBLIC = {("GET", "/healthz"), ("GET", "/api/v1/openapi.json"), ("POST", "/api/v1/auth/login"), ("POST", "/api/v1/cluster/join")}


@pytest.fixture(scope="module")
def app() -> Starlette:
    return create_app(SimpleNamespace(raft=None, config=None))  # type: ignore[arg-type]


def get(app: Starlette, path: str, times: int = 1) -> list[httpx.Response]:
    async def fetch() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cloudd") as client:
            return [await client.get(path) for _ in range(times)]

    return asyncio.run(fetch())


@pytest.fixture(scope="module")
def document(app: Starlette) -> dict[str, Any]:
    [reply] = get(app, "/api/v1/openapi.json")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    doc: dict[str, Any] = reply.json()
    return doc


def operations(document: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def served(app: Starlette) -> set[tuple[str, str]]:
    return {(m, r.path) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"}


def test_every_api_route_is_documented_and_every_documented_operation_exists(app: Starlette, document: dict[str, Any]) -> None:
    api = [r for r in app.routes if isinstance(r, Route) and r.path.startswith("/api/v1")]
    assert len(api) > 40
    assert [r.path for r in api if not isinstance(r, ApiRoute)] == []
    documented = {(method, path) for method, path, _ in operations(document)}
    assert {(m, path) for m, path in served(app) if path.startswith("/api/v1")} <= documented
    assert documented <= served(app)
    assert ("GET", "/api/v1/openapi.json") in documented and ("GET", "/healthz") in documented


def test_the_document_is_valid_openapi_3_0(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.0.3" and document["info"]["version"]
    validate(document)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    found = set(refs(document))
    assert "#/components/schemas/Task" in found
    for ref in found:
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]


def check_spec_schema(spec: Mapping[str, Field], schema: Mapping[str, Any], where: str) -> None:
    assert schema["type"] == "object" and schema["additionalProperties"] is False, where
    assert set(schema["properties"]) == set(spec), where
    assert set(schema.get("required", [])) == {name for name, f in spec.items() if f.required}, where
    for name, f in spec.items():
        if f.kind == "obj" and f.spec is not None:
            check_spec_schema(f.spec, schema["properties"][name], f"{where}.{name}")


def test_every_body_spec_is_the_documented_request_body(app: Starlette, document: dict[str, Any]) -> None:
    bodies = 0
    for route in api_routes(app.routes):
        op = document["paths"][route.path][route.method.lower()]
        if route.doc.body is None:
            assert "application/json" not in op.get("requestBody", {}).get("content", {}), (route.method, route.path)
            continue
        bodies += 1
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        check_spec_schema(route.doc.body, schema, f"{route.method} {route.path}")
        assert op["requestBody"]["required"] == any(f.required for f in route.doc.body.values())
    assert bodies >= 15


def read_json_specs(module: ModuleType) -> dict[str, str]:
    """Handler name -> the name of the spec it passes to ``read_json`` (None: inline)."""
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not isinstance(node, ast.AsyncFunctionDef):
            continue
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "read_json":
                spec = call.args[1]
                assert isinstance(spec, ast.Name), f"{module.__name__}.{node.name}: the body spec must be a module constant"
                out[node.name] = spec.id
    return out


def test_handlers_validate_with_the_very_spec_their_doc_shows(app: Starlette) -> None:
    """The document cannot drift from validation: both use the same module constant."""
    specs: dict[str, Mapping[str, Field]] = {}
    for module in ROUTE_MODULES:
        for handler, constant in read_json_specs(module).items():
            assert handler not in specs, f"two handlers named {handler}"
            specs[handler] = getattr(module, constant)
    for route in api_routes(app.routes):
        spec = specs.get(route.endpoint.__name__)
        assert route.doc.body is spec, (route.method, route.path)


def test_every_operation_says_who_may_call_it(document: dict[str, Any]) -> None:
    public = set()
    for method, path, op in operations(document):
        assert op["x-cloudd-access"] in ACCESS, (method, path)
        assert op["summary"] and op["tags"]
        if op["x-cloudd-access"] in ("public", "join"):
            public.add((method, path))
            assert op["security"] == []
        else:
            assert {"bearer": []} in op["security"]
            assert ({"session": []} in op["security"]) == (method == "GET"), (method, path)  # the cookie authenticates reads only
    assert public == PUBLIC


def test_long_operations_answer_202_with_a_task_and_its_location(document: dict[str, Any]) -> None:
    accepted = [(method, path, op) for method, path, op in operations(document) if "202" in op["responses"]]
    assert len(accepted) >= 8
    for method, path, op in accepted:
        answer = op["responses"]["202"]
        assert "Location" in answer["headers"], (method, path)
        assert answer["content"]["application/json"]["schema"]["$ref"] in ("#/components/schemas/Accepted", "#/components/schemas/VmCreated")


def test_the_vm_action_is_an_enum_and_the_image_file_is_binary(document: dict[str, Any]) -> None:
    action = document["paths"]["/api/v1/vms/{ref}/{action}"]["post"]
    assert next(p for p in action["parameters"] if p["name"] == "action")["schema"]["enum"] == ["start", "stop", "shutdown", "reset", "reboot"]
    file = document["paths"]["/api/v1/images/{ref}/file"]
    assert list(file["put"]["requestBody"]["content"]) == ["application/octet-stream"]
    assert file["get"]["responses"]["200"]["content"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}


def test_the_document_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(*args: Any) -> dict[str, Any]:
        calls.append(1)
        return openapi_document(*args)

    monkeypatch.setattr("cloudd.web.app.openapi_document", counting)
    first, second = get(create_app(SimpleNamespace(raft=None, config=None)), "/api/v1/openapi.json", times=2)  # type: ignore[arg-type]
    assert first.content == second.content and len(calls) == 1


# --- the schemas describe what the command handlers and views really return ---


def check(name: str, value: Any) -> None:
    validator = OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": {"schemas": SCHEMAS}})
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]
    assert problems == [], (name, value)


def busy_replica() -> tuple[Replica, list[dict[str, Any]]]:
    """A cluster with a pool, images, VMs and their tasks; the 202 answers it gave."""
    replica = cluster_with_hypervisor()
    replica.ok("pool.create", {"name": "team", "limits": {"vcpus": 8}})
    replica.ok("user.update", {"name": "bob", "pool": "team"})
    replica.ok("image.create", {"id": "iso1", "name": "boot", "owner": "bob", "public": False, "format": "iso"})
    replica.ok("image.upload_done", {"id": "iso1", "node": "n1", "size_bytes": 1 << 20, "virtual_size_gb": 0.001, "sha256": "ab" * 32})
    answers = [new_vm(replica, "vm1"), new_vm(replica, "vm2")]
    answers.append(replica.ok("vm.resize", {"id": "vm2", "vcpus": 2, "disk_gb": 8}))
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("vm.report", {"id": "vm1", "node": "n1", "power": "running", "vnc_port": 5900, "disks": ["vda"]})
    for op, args in (
        ("vm.reboot", {}),
        ("vm.disk.add", {"disk_id": "d1", "size_gb": 2}),
        ("vm.iso.attach", {"image": "iso1"}),
        ("vm.iso.detach", {}),
        ("vm.disk.remove", {"disk_id": "d1"}),
        ("vm.shutdown", {}),
        ("vm.report", {"node": "n1", "power": "shut_off"}),
        ("vm.start", {}),
        ("vm.stop", {}),
        ("vm.delete", {}),
    ):
        answer = replica.ok(op, {"id": "vm1", **args})
        if op != "vm.report":
            answers.append(answer)
    answers.append(replica.ok("vm.delete", {"id": "vm2"}))
    return replica, answers


def test_long_operations_answer_the_accepted_schema_and_their_tasks_the_task_schema() -> None:
    replica, answers = busy_replica()
    for answer in answers:
        check("Accepted", answer)
    assert {t["state"] for t in replica.state.tasks.values()} >= {"running", "succeeded", "superseded"}
    for task in replica.state.tasks.values():
        check("Task", task)


def test_vms_flavors_images_and_pools_match_their_schemas() -> None:
    replica, _ = busy_replica()
    state = replica.state
    created = new_vm(replica, "vm3", swap_mb=512)
    vm = vm_view(state.vms["vm3"], state.ports)
    check("Vm", vm)
    check("VmCreated", {**vm, "task": created["task"]})
    check("Vm", vm_view(state.vms["vm1"], state.ports))  # a placed VM with observations, being deleted
    for flavor in state.flavors.values():
        check("Flavor", flavor)
    for image in state.images.values():
        check("Image", {**image, "default": False})
    check("Image", replica.ok("image.create", {"id": "img9", "name": "up", "owner": "bob", "public": False, "format": "qcow2"}))
    check("Pool", pool_view(state, state.pools["team"], True))
    check("Pool", pool_view(state, state.pools["team"], False))
    check("Pool", replica.ok("pool.create", {"name": "other"}))
    check("Pool", replica.ok("pool.update", {"name": "other", "limits": {"vms": 1}}))


def test_networks_ports_and_addresses_match_their_schemas() -> None:
    replica = cluster_with_hypervisor()
    state = replica.state
    replica.ok("network.create", {"id": "0000aaaa", "name": "lan", "subnet": "10.0.0.0/24", "ipv6_prefix": "2001:db8::/64"})
    replica.ok("network.create", {"id": "0000bbbb", "name": "mine", "subnet": "10.1.0.0/24", "owner": "bob", "gateway": None})
    new_vm(replica, "vm1", networks=[{"network": "0000aaaa"}, {"network": "0000bbbb"}])
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    port_id = state.vms["vm1"]["ports"][0]
    replica.ok("port.report", {"node": "n1", "ports": {port_id: {"tx_bytes": 1, "tx_packets": 1, "rx_bytes": 1, "rx_packets": 1, "dropped_packets": 0}}})
    check("PortIps", replica.ok("port.ip.assign", {"id": port_id}))
    check("Vm", vm_view(state.vms["vm1"], state.ports))
    for principal in (routes_networks.Principal("user", "bob", "user"), routes_networks.Principal("user", "admin", "admin")):
        for network in state.networks.values():
            check("Network", routes_networks.network_view(state, network, principal))
    for port in state.ports.values():
        check("Port", routes_networks.port_view(state, port))
    check("Port", replica.ok("port.update", {"id": port_id, "profile": "web"}))


def test_users_tokens_nodes_and_events_match_their_schemas() -> None:
    replica, _ = busy_replica()
    replica.ok("token.create", {"token_id": "tk1", "user": "bob", "secret_sha256": "ab" * 32, "name": "ci", "expires_at": None})
    check("User", replica.ok("user.create", {"name": "carol", "role": "user", "password_hash": PW_HASH}))
    check("User", replica.ok("user.update", {"name": "carol", "disabled": True}))
    state = replica.state
    for user in state.users.values():
        check("User", user_view(user))
    for token in state.tokens.values():
        check("Token", token_view(token))
    for node in state.nodes.values():
        check("Node", node_view(node, "127.0.0.1:7001"))
    assert state.events
    for event in state.events:
        check("Event", event)


def test_no_route_is_shadowed_by_an_earlier_one(app: Starlette) -> None:
    """Starlette takes the first route that matches: /vms/{ref}/{action} listed before
    /vms/{ref}/nics would swallow every request to the latter."""
    from starlette.routing import Match

    routes = [r for r in app.routes if isinstance(r, Route)]
    for route in routes:
        for method in route.methods or ():
            if method == "HEAD":
                continue
            path = re.sub(r"{(\w+)}", lambda m: f"sample-{m.group(1)}", route.path)
            scope = {"type": "http", "path": path, "method": method}
            first = next(r for r in routes if r.matches(scope)[0] == Match.FULL)
            assert first is route, f"{method} {route.path} is answered by {first.path}"


def test_addresses_match_their_schema() -> None:
    replica = cluster_with_hypervisor()
    replica.ok("network.create", {"id": "0000aaaa", "name": "lan", "subnet": "10.0.0.0/24", "ipv6_prefix": "2001:db8::/64"})
    new_vm(replica, "vm1", networks=[{"network": "0000aaaa"}])
    (port,) = replica.state.ports.values()
    items = routes_networks.ip_items(replica.state, port)
    assert [(i["version"], i["primary"]) for i in items] == [(4, True), (6, False)]
    for item in items:
        check("Ip", item)
