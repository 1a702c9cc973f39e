"""/metrics on every node of a real 3-node cluster, JSON logs, and a request id that
follows a VM's creation from the API into the log and to the agent that starts it.
The nodes read /etc/cloudd/cloudd.toml's stand-in through CLOUDD_CONFIG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SCRAPER_TOKEN = "scraper-token-for-tests-0123"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("metrics")
    token_file = root / "metrics.token"
    token_file.write_text(SCRAPER_TOKEN + "\n")
    config = root / "cloudd.toml"
    config.write_text(f'log_format = "json"\n[metrics]\ntoken_file = "{token_file}"\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CLOUDD_CONFIG", str(config))  # the harness's processes inherit it
        c = LocalCluster(root, first_host=80)
        try:
            yield c.init(3)
        finally:
            c.close()


def scrape(cluster: LocalCluster, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(cluster.nodes[name].url + "/metrics", headers={"Authorization": f"Bearer {SCRAPER_TOKEN}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    out = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def vm_count(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], state: str) -> float:
    return metrics[("cloudd_vms", (("state", state),))]


def test_metrics_need_a_token(cluster: LocalCluster) -> None:
    url = cluster.nodes["node1"].url + "/metrics"
    assert httpx.get(url, timeout=5).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token"}, timeout=5).status_code == 401
    with cluster.api("node2") as admin:  # an admin's API token works too
        assert admin.get("/metrics").status_code == 200


def test_every_node_reports_raft_and_leases(cluster: LocalCluster) -> None:
    scraped = {name: scrape(cluster, name) for name in cluster.nodes}
    assert sum(m[("cloudd_raft_leader", ())] for m in scraped.values()) == 1
    assert len({m[("cloudd_raft_term", ())] for m in scraped.values()}) == 1
    for metrics in scraped.values():
        assert metrics[("cloudd_raft_applied_index", ())] > 0 and metrics[("cloudd_raft_apply_lag", ())] >= 0
        for node in cluster.nodes:
            assert 0 <= metrics[("cloudd_node_lease_age_seconds", (("node", node),))] < 10
            assert metrics[("cloudd_node_capacity_cpus", (("node", node),))] >= 1


def test_vm_counts_move_when_vms_are_created(cluster: LocalCluster) -> None:
    before = {name: scrape(cluster, name) for name in cluster.nodes}
    with cluster.api("node2") as admin:
        assert admin.post("/api/v1/flavors", json={"name": "m1", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).status_code == 201
        ids = []
        for i in range(2):
            reply = admin.post("/api/v1/vms", json={"name": f"m{i}", "flavor": "m1"}, headers={"X-Request-Id": f"trace-create-{i}"})
            assert reply.status_code in (201, 202), reply.text
            assert reply.headers["x-request-id"] == f"trace-create-{i}"
            ids.append(reply.json()["id"])

    def all_running() -> bool:
        return all(vm_count(scrape(cluster, n), "running") == vm_count(before[n], "running") + 2 for n in cluster.nodes)

    wait_for(all_running, 30, interval=0.3, what="2 more running VMs in every node's /metrics")
    after = scrape(cluster, "node3")
    assert sum(v for (name, _), v in after.items() if name == "cloudd_vms") == sum(v for (name, _), v in before["node3"].items() if name == "cloudd_vms") + 2
    allocated = sum(v for (name, _), v in after.items() if name == "cloudd_node_allocated_vcpus")
    assert allocated == sum(v for (name, _), v in before["node3"].items() if name == "cloudd_node_allocated_vcpus") + 2
    latency = scrape(cluster, "node2")
    created = [v for (name, labels), v in latency.items() if name == "cloudd_http_request_duration_seconds_count"
               and dict(labels)["route"] == "/api/v1/vms" and dict(labels)["method"] == "POST"]
    assert sum(created) >= 2
    tasks = [v for (name, labels), v in after.items() if name == "cloudd_task_duration_seconds_count" and dict(labels).get("op") == "vm.create"]
    assert sum(tasks) >= 2


def json_lines(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    lines = [line for line in cluster.nodes[name].log_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is one JSON object


def test_a_request_id_follows_the_command_to_the_agent(cluster: LocalCluster) -> None:
    with cluster.api("node1") as admin:
        vm = admin.post("/api/v1/vms", json={"name": "traced", "flavor": "m1"}, headers={"X-Request-Id": "trace-me-42"})
        assert vm.status_code in (201, 202), vm.text
        vm_id = vm.json()["id"]
        host = wait_for(lambda: admin.get(f"/api/v1/vms/{vm_id}").json().get("node"), 20, what="the VM placed")
        events = admin.get("/api/v1/events", params={"limit": 1000}).json()["items"]
        created = [e for e in events if e["op"] == "vm.create" and e["request_id"] == "trace-me-42"]
        assert len(created) == 1  # the command in the replicated log carries the request id

    def agent_logged() -> list[dict[str, Any]]:
        return [r for r in json_lines(cluster, host) if r.get("request_id") == "trace-me-42" and r["logger"] == "cloudd.reconcile"]

    records = wait_for(agent_logged, 20, what=f"{host}'s agent logging under the request id")
    assert {r["vm"] for r in records} == {vm_id} and records[0]["node"] == host
    assert any(r["msg"].endswith(": start") or r["msg"].endswith(": define") for r in records)
    for name in cluster.nodes:
        assert all({"ts", "level", "logger", "msg"} <= set(r) for r in json_lines(cluster, name))


def test_nodes_announce_their_command_version(cluster: LocalCluster) -> None:
    with cluster.api("node3") as admin:
        nodes = admin.get("/api/v1/nodes").json()["items"]
    assert {n["name"]: n["inventory"]["facts"]["command_version"] for n in nodes} == {"node1": 1, "node2": 1, "node3": 1}
