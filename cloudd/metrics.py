"""Prometheus metrics of one node: ``GET /metrics`` on the API port of every node.

- ``StateCollector`` reads the local replica at scrape time (under its lock): Raft term,
  commit and applied index, apply lag, leadership and quorum; every node's lease age,
  status, capacity, allocations and observed usage; VMs by state; task durations.
  Nothing is proposed and nothing is replicated: fine-grained series belong here, not in
  the Raft log (DESIGN.md, "Tasks, events, usage").
- ``LatencyMiddleware`` times every HTTP request by route template (``/api/v1/vms/{ref}``,
  never the concrete path: bounded label sets), method and status.

Auth: ``/metrics`` needs ``Authorization: Bearer <token>`` with either the node's metrics
token (``[metrics] token_file`` in ``/etc/cloudd/cloudd.toml``; it grants nothing else)
or an admin's API token. It shows node names, capacities and counts, which tenants of
a public API port should not see; Prometheus sends the token from
``authorization.credentials_file``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudd.errors import CloudError
from cloudd.model.vm import STATES as VM_STATES
from cloudd.web.http import error_response

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from cloudd.runtime import NodeRuntime

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TASK_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
NODE_STATUSES = ("up", "suspect", "down", "maintenance")
FINAL_TASK_STATES = ("succeeded", "failed", "cancelled", "superseded")


class StateCollector(Collector):
    """Reads the replica at every scrape. ``clock`` is wall time (lease ages compare it
    with the heartbeat timestamps the nodes proposed, so clock skew shows in them)."""

    def __init__(self, runtime: NodeRuntime, clock: Any = time.time) -> None:
        self.runtime = runtime
        self.clock = clock
        self.tasks = TaskDurations()

    def collect(self) -> Iterator[Metric]:
        raft = self.runtime.raft
        status = raft.raft_status()
        yield gauge("cloudd_raft_term", "The Raft term this node is in", status["term"])
        yield gauge("cloudd_raft_commit_index", "The highest log index this node knows is committed", status["commit_index"])
        yield gauge("cloudd_raft_applied_index", "The highest log index applied to this node's state", status["last_applied"])
        yield gauge("cloudd_raft_apply_lag", "Committed entries not yet applied here", max(0, status["commit_index"] - status["last_applied"]))
        yield gauge("cloudd_raft_leader", "1 when this node leads", 1 if status["role"] == "leader" else 0)
        yield gauge("cloudd_raft_has_quorum", "1 when this node is in a majority with a leader", 1 if status["has_quorum"] else 0)
        yield gauge("cloudd_raft_log_entries", "Entries in this node's Raft log (since the last snapshot)", status["log_size"])
        role = GaugeMetricFamily("cloudd_raft_role", "This node's Raft role (1 for the current one)", labels=["role"])
        for name in ("leader", "follower", "replica"):
            role.add_metric([name], 1 if status["role"] == name else 0)
        yield role
        with raft.lock:
            families = list(self._from_state(raft.state, self.clock()))
        yield from families
        yield from self.tasks.histogram.collect()

    def _from_state(self, state: Any, now: float) -> Iterator[Metric]:
        lease = GaugeMetricFamily("cloudd_node_lease_age_seconds", "Seconds since the node's last committed lease renewal (wall clocks)", labels=["node"])
        node_status = GaugeMetricFamily("cloudd_node_status", "The leader's verdict on the node (1 for the current one)", labels=["node", "status"])
        capacity = {
            key: GaugeMetricFamily(f"cloudd_node_capacity_{key}", f"The node's {text}", labels=["node"])
            for key, text in (("cpus", "CPUs"), ("ram_mb", "RAM in MiB"), ("disk_gb", "disk of the data dir in GB"))
        }
        allocated = {
            key: GaugeMetricFamily(f"cloudd_node_allocated_{key}", f"{text} of the VMs assigned to the node", labels=["node"])
            for key, text in (("vcpus", "vCPUs"), ("ram_mb", "RAM in MiB"), ("disk_gb", "disk in GB"))
        }
        usage = {
            key: GaugeMetricFamily(f"cloudd_node_usage_{key}", f"Observed {text} (the agent's last sample)", labels=["node"])
            for key, text in (("ram_used_mb", "RAM used in MiB"), ("disk_used_gb", "disk used in GB"), ("load1", "1-minute load average"), ("cpu_pct", "CPU use in percent"))
        }
        vms_on = {name: [0, 0, 0.0] for name in state.nodes}
        for vm in state.vms.values():
            totals = vms_on.get(vm.get("node"))
            if totals is not None:
                totals[0] += vm.get("vcpus", 0)
                totals[1] += vm.get("ram_mb", 0)
                totals[2] += vm.get("disk_gb", 0)
        for name, node in sorted(state.nodes.items()):
            beat = node.get("last_heartbeat")
            if beat is not None:
                lease.add_metric([name], max(0.0, now - float(beat)))
            for value in NODE_STATUSES:
                node_status.add_metric([name, value], 1 if node.get("status") == value else 0)
            inventory = node.get("inventory") or {}
            for key, family in capacity.items():
                if key in inventory:
                    family.add_metric([name], inventory[key])
            for family, total in zip(allocated.values(), vms_on[name]):
                family.add_metric([name], total)
            observed = node.get("usage") or {}
            for key, family in usage.items():
                if key in observed:
                    family.add_metric([name], observed[key])
        yield lease
        yield node_status
        yield from capacity.values()
        yield from allocated.values()
        yield from usage.values()
        counts = dict.fromkeys(VM_STATES, 0)
        for vm in state.vms.values():
            counts[vm["state"]] = counts.get(vm["state"], 0) + 1
        vms = GaugeMetricFamily("cloudd_vms", "VMs in the cluster by lifecycle state", labels=["state"])
        for value, count in sorted(counts.items()):
            vms.add_metric([value], count)
        yield vms
        self.tasks.update(state.tasks)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class TaskDurations:
    """``cloudd_task_duration_seconds``: every task seen finished is observed once, at the
    scrape that first finds it in the state (so the counts only grow, as Prometheus
    expects, even when the state drops old tasks). A task finished and dropped between two
    scrapes is missed; the state keeps many more than a scrape interval's worth."""

    def __init__(self) -> None:
        self.histogram = Histogram(
            "cloudd_task_duration_seconds", "Durations of finished tasks (created to finished), by operation and outcome",
            ["op", "outcome"], buckets=TASK_BUCKETS, registry=None,
        )
        self.seen: set[str] = set()

    def update(self, tasks: dict[str, dict[str, Any]]) -> None:
        """Observe the newly finished ``tasks`` (call under the replica's lock)."""
        for task_id, task in tasks.items():
            if task_id in self.seen or task.get("state") not in FINAL_TASK_STATES or task.get("finished_at") is None:
                continue
            self.seen.add(task_id)
            self.histogram.labels(task["op"], task["state"]).observe(max(0.0, task["finished_at"] - task["created_at"]))
        if len(self.seen) > len(tasks):
            self.seen &= tasks.keys()


def route_template(scope: Scope) -> str:
    """The matched route's path template, or ``unmatched`` (a 404 must not create a label
    per scanned URL)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    return f"{scope.get('root_path', '')}{path}" or "/"


class LatencyMiddleware:
    """ASGI middleware observing ``cloudd_http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.histogram.labels(route_template(scope), scope["method"], str(status[0])).observe(time.perf_counter() - start)


def install(app: Starlette, runtime: NodeRuntime) -> CollectorRegistry:
    """Add ``GET /metrics`` and the latency middleware to ``app``; a registry per app.
    The metrics token, if any, is ``app.state.metrics_token`` (set by the daemon)."""
    registry = CollectorRegistry()
    registry.register(StateCollector(runtime))
    latency = Histogram(
        "cloudd_http_request_duration_seconds", "HTTP request latency by route template, method and status",
        ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=registry,
    )

    async def metrics(request: Request) -> Response:
        try:
            await authorize(request)
        except CloudError as exc:
            return error_response(exc, headers={"WWW-Authenticate": "Bearer"} if exc.code == "unauthenticated" else None)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # first, so that no catch-all route of the UI can shadow it
    app.router.routes.insert(0, Route("/metrics", metrics, methods=["GET"], include_in_schema=False))
    app.add_middleware(LatencyMiddleware, histogram=latency)
    app.state.metrics_registry = registry
    return registry


async def authorize(request: Request) -> None:
    """The node's metrics token or an admin's API token; else 401/403."""
    token: str | None = getattr(request.app.state, "metrics_token", None)
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return
    if not header:
        raise CloudError("unauthenticated", "/metrics needs a bearer token: the node's metrics token or an admin's API token")
    principal = await request.app.state.api.principal(request)
    if not principal.is_admin:
        raise CloudError("forbidden", "/metrics is for admins and the metrics scraper")
