"""The /metrics collector and latency middleware against a replica of our own making."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cloudd.errors import CloudError
from cloudd.metrics import TaskDurations, install
from tests.factories import admit, initialized


@dataclass
class FakeRaft:
    state: Any
    lock: Any = field(default_factory=threading.RLock)
    role: str = "leader"

    def raft_status(self) -> dict[str, Any]:
        return {"role": self.role, "term": 7, "commit_index": 120, "last_applied": 117, "has_quorum": True, "log_size": 40}


@dataclass
class FakeRuntime:
    raft: FakeRaft


@dataclass
class FakePrincipal:
    is_admin: bool


class FakeApi:
    async def principal(self, request: Request) -> FakePrincipal:
        token = request.headers["authorization"].split()[-1]
        if token == "admin-token":
            return FakePrincipal(True)
        if token == "user-token":
            return FakePrincipal(False)
        raise CloudError("unauthenticated", "bad token")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def make_app() -> tuple[Starlette, Any]:
    replica = initialized()
    admit(replica, "n2", 2)
    state = replica.state
    state.nodes["n1"]["inventory"] = {"cpus": 8, "ram_mb": 16384, "disk_gb": 100.0}
    state.nodes["n1"]["last_heartbeat"] = 1000.0
    state.nodes["n1"]["usage"] = {"ram_used_mb": 2048, "load1": 0.5}
    state.vms["vm-1"] = {"id": "vm-1", "state": "running", "node": "n1", "vcpus": 2, "ram_mb": 512, "disk_gb": 5}
    state.vms["vm-2"] = {"id": "vm-2", "state": "stopped", "node": "n1", "vcpus": 1, "ram_mb": 256, "disk_gb": 1}
    state.vms["vm-3"] = {"id": "vm-3", "state": "pending", "node": None, "vcpus": 1, "ram_mb": 256, "disk_gb": 1}
    state.tasks["t1"] = {"op": "vm.create", "state": "succeeded", "created_at": 100.0, "finished_at": 103.0}
    state.tasks["t2"] = {"op": "vm.create", "state": "running", "created_at": 100.0, "finished_at": None}

    async def vm(request: Request) -> JSONResponse:
        return JSONResponse({"ref": request.path_params["ref"]}, status_code=404 if request.path_params["ref"] == "nope" else 200)

    app = Starlette(routes=[Route("/api/v1/vms/{ref}", vm)])
    app.state.api = FakeApi()
    app.state.metrics_token = "scraper-token-0123456789"
    install(app, FakeRuntime(FakeRaft(state)))  # type: ignore[arg-type]
    return app, state


def get(app: Starlette, *paths: str, token: str | None = None) -> list[httpx.Response]:
    async def calls() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
            return [await client.get(path, headers=headers if path == "/metrics" else {}) for path in paths]

    return asyncio.run(calls())


def test_scrape_shows_raft_nodes_vms_and_tasks() -> None:
    app, _ = make_app()
    (reply,) = get(app, "/metrics", token="scraper-token-0123456789")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    got = samples(reply.text)
    assert got[("cloudd_raft_term", ())] == 7 and got[("cloudd_raft_apply_lag", ())] == 3
    assert got[("cloudd_raft_leader", ())] == 1 and got[("cloudd_raft_role", (("role", "follower"),))] == 0
    assert got[("cloudd_vms", (("state", "running"),))] == 1 and got[("cloudd_vms", (("state", "pending"),))] == 1
    assert got[("cloudd_vms", (("state", "deleting"),))] == 0  # every state, so a count can fall to zero
    assert got[("cloudd_node_capacity_ram_mb", (("node", "n1"),))] == 16384
    assert got[("cloudd_node_allocated_vcpus", (("node", "n1"),))] == 3 and got[("cloudd_node_allocated_vcpus", (("node", "n2"),))] == 0
    assert got[("cloudd_node_usage_ram_used_mb", (("node", "n1"),))] == 2048
    assert got[("cloudd_node_lease_age_seconds", (("node", "n1"),))] > 1_000_000  # heartbeat at t=1000
    assert got[("cloudd_node_status", (("node", "n2"), ("status", "up")))] in (0, 1)
    assert got[("cloudd_task_duration_seconds_count", (("op", "vm.create"), ("outcome", "succeeded")))] == 1
    assert got[("cloudd_task_duration_seconds_bucket", (("le", "2.5"), ("op", "vm.create"), ("outcome", "succeeded")))] == 0
    assert got[("cloudd_task_duration_seconds_bucket", (("le", "5.0"), ("op", "vm.create"), ("outcome", "succeeded")))] == 1


def test_latency_is_labelled_by_route_template_not_path() -> None:
    app, _ = make_app()
    replies = get(app, "/api/v1/vms/a", "/api/v1/vms/b", "/api/v1/vms/nope", "/no/such/thing", "/metrics", token="admin-token")
    assert [r.status_code for r in replies] == [200, 200, 404, 404, 200]
    (reply,) = get(app, "/metrics", token="admin-token")
    got = samples(reply.text)
    count = "cloudd_http_request_duration_seconds_count"
    assert got[(count, (("method", "GET"), ("route", "/api/v1/vms/{ref}"), ("status", "200")))] == 2
    assert got[(count, (("method", "GET"), ("route", "/api/v1/vms/{ref}"), ("status", "404")))] == 1
    assert got[(count, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert not any("/api/v1/vms/a" in str(key) for key in got)


def test_metrics_need_the_scraper_token_or_an_admin() -> None:
    app, _ = make_app()
    none, user, wrong = get(app, "/metrics"), get(app, "/metrics", token="user-token"), get(app, "/metrics", token="nope")
    assert none[0].status_code == 401 and none[0].headers["www-authenticate"] == "Bearer"
    assert user[0].status_code == 403 and wrong[0].status_code == 401
    assert get(app, "/metrics", token="admin-token")[0].status_code == 200


def test_the_collector_follows_the_state() -> None:
    app, state = make_app()
    before = samples(get(app, "/metrics", token="admin-token")[0].text)[("cloudd_vms", (("state", "running"),))]
    state.vms["vm-4"] = {"id": "vm-4", "state": "running", "node": "n2", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}
    after = samples(get(app, "/metrics", token="admin-token")[0].text)
    assert after[("cloudd_vms", (("state", "running"),))] == before + 1
    assert after[("cloudd_node_allocated_ram_mb", (("node", "n2"),))] == 64


def test_task_durations_are_counted_once_and_never_go_down() -> None:
    durations = TaskDurations()
    tasks = {f"t{i}": {"op": "vm.migrate", "state": "failed", "created_at": 0.0, "finished_at": d} for i, d in enumerate((0.2, 7.0, 5000.0))}
    tasks["t9"] = {"op": "vm.migrate", "state": "running", "created_at": 0.0, "finished_at": None}
    durations.update(tasks)
    durations.update(tasks)  # a second scrape: nothing new

    def buckets() -> dict[str, float]:
        (family,) = durations.histogram.collect()
        return {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}

    assert buckets()["0.5"] == 1 and buckets()["10.0"] == 2 and buckets()["3600.0"] == 2 and buckets()["+Inf"] == 3
    del tasks["t0"], tasks["t1"]  # the state dropped old tasks: the counts stay
    tasks["t9"].update(state="succeeded", finished_at=1.5)
    durations.update(tasks)
    (family,) = durations.histogram.collect()
    counts = {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {(("op", "vm.migrate"), ("outcome", "failed")): 3, (("op", "vm.migrate"), ("outcome", "succeeded")): 1}
    assert durations.seen == {"t2", "t9"}
