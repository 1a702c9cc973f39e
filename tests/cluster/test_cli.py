"""cloudctl through click's runner against a real cluster, errors included."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cli.cloudctl import cli
from tests.cluster.harness import LocalCluster, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def ctl(shared_cluster: LocalCluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "cloudctl.json"
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], input=input, catch_exceptions=False)

    run.config = config  # type: ignore[attr-defined]
    return run


def login(ctl, cluster: LocalCluster, *endpoints: str) -> None:  # type: ignore[no-untyped-def]
    args = []
    for e in endpoints or (cluster.nodes["node1"].url,):
        args += ["--endpoint", e]
    result = ctl(*args, "login", "--username", "admin", "--password", cluster.password)
    assert result.exit_code == 0, result.output


def test_login_stores_a_private_token_and_learns_every_endpoint(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    login(ctl, shared_cluster)
    path: Path = ctl.config
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(path.read_text())
    assert data["token"].startswith("cdt.")
    assert {shared_cluster.nodes[n].url for n in ("node1", "node2", "node3")} <= set(data["endpoints"])


def test_cluster_status_and_node_list(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    login(ctl, shared_cluster)
    result = ctl("cluster", "status")
    assert result.exit_code == 0, result.output
    assert "leader" in result.output and "node1" in result.output and "node3" in result.output
    result = ctl("-o", "json", "node", "list")
    nodes = json.loads(result.output)
    assert sorted(n["name"] for n in nodes) == ["node1", "node2", "node3"]
    assert all(n["inventory"]["cpus"] >= 1 for n in nodes)
    result = ctl("node", "show", "node2")
    assert result.exit_code == 0 and "api_addr" in result.output


def test_errors_exit_non_zero_with_a_message(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    result = ctl("--endpoint", shared_cluster.nodes["node1"].url, "node", "list")
    assert result.exit_code != 0 and "not logged in" in result.output
    login(ctl, shared_cluster)
    result = ctl("node", "show", "no-such-node")
    assert result.exit_code == 1 and "node no-such-node not found (404)" in result.output
    result = ctl("node", "maintenance", "no-such-node", "--on")
    assert result.exit_code == 1 and "404" in result.output
    result = ctl("--endpoint", "http://127.0.0.1:1", "cluster", "status")
    assert result.exit_code == 2 and "no endpoint answered" in result.output
    result = ctl("user", "create", "Bad Name", "--password", "pass-word-1")
    assert result.exit_code == 1 and "invalid format" in result.output


def test_a_dead_first_endpoint_falls_over_to_the_next(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    login(ctl, shared_cluster, dead, shared_cluster.nodes["node2"].url)
    result = ctl("--endpoint", dead, "--endpoint", shared_cluster.nodes["node3"].url, "-o", "json", "cluster", "status")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["this_node"] == "node3"


def test_maintenance_users_and_tokens(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    login(ctl, shared_cluster)
    assert ctl("node", "maintenance", "node3", "--on").exit_code == 0
    shown = json.loads(ctl("-o", "json", "node", "show", "node3").output)
    assert shown["maintenance"] is True
    assert ctl("node", "maintenance", "node3", "--off").exit_code == 0
    assert ctl("user", "create", "carol", "--password", "carol-pass-1").exit_code == 0
    assert "carol" in ctl("user", "list").output
    created = json.loads(ctl("-o", "json", "token", "create", "ci-bot", "--ttl", "600").output)
    assert created["token"].startswith("cdt.")
    assert created["token_id"] in ctl("token", "list").output
    assert ctl("token", "revoke", created["token_id"]).exit_code == 0
    assert created["token_id"] not in ctl("token", "list").output
    assert ctl("user", "delete", "carol").exit_code == 0
    result = ctl("cluster", "join-token", "--ttl", "120")
    assert result.exit_code == 0 and "cdj." in result.output


def test_help_has_examples() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "cloudctl cluster status" in result.output
    for name, group in cli.commands.items():
        if isinstance(group, click.Group):
            result = CliRunner().invoke(cli, [name, "--help"])
            assert result.exit_code == 0 and "Examples:" in result.output and f"cloudctl {name} " in result.output, name


def test_flavor_image_and_vm_commands(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    login(ctl, shared_cluster)
    assert ctl("flavor", "create", "cli-small", "--vcpus", "1", "--ram", "128", "--disk", "1").exit_code == 0
    assert "cli-small" in ctl("flavor", "list").output
    result = ctl("image", "register", "cli-img", "--path", "/srv/images/cli.qcow2", "--size", "1")
    assert result.exit_code == 0, result.output
    created = json.loads(ctl("-o", "json", "vm", "create", "cli-vm", "--flavor", "cli-small", "--image", "cli-img", "--stopped").output)
    assert created["state"] == "pending"
    shown = ctl("vm", "show", "cli-vm")
    assert shown.exit_code == 0 and created["id"] in shown.output
    assert "cli-vm" in ctl("vm", "list").output
    result = ctl("vm", "reset", "cli-vm")
    assert result.exit_code == 1 and "409" in result.output
    result = ctl("vm", "console", "cli-vm")
    assert result.exit_code == 1 and "409" in result.output and "run" in result.output
    assert ctl("image", "register", "cli-cd", "--path", "/srv/images/cli.iso", "--format", "iso", "--size", "0.5").exit_code == 0
    disk = json.loads(ctl("-o", "json", "vm", "disk-add", "cli-vm", "--size", "2").output)["disk"]
    assert disk["target"] == "vdc"
    assert ctl("vm", "attach-iso", "cli-vm", "cli-cd").exit_code == 0
    result = ctl("vm", "attach-iso", "cli-vm", "cli-img")
    assert result.exit_code == 1 and "not an ISO" in result.output
    assert ctl("vm", "detach-iso", "cli-vm").exit_code == 0
    assert ctl("vm", "disk-remove", "cli-vm", disk["id"]).exit_code == 0
    result = ctl("vm", "disk-remove", "cli-vm", "no-such-disk")
    assert result.exit_code == 1 and "404" in result.output
    history = json.loads(ctl("-o", "json", "vm", "history", "cli-vm").output)
    assert [e["op"] for e in history if e["outcome"] == "ok"][:4] == ["vm.disk.remove", "vm.iso.detach", "vm.iso.attach", "vm.disk.add"]
    assert "vm.reset" in ctl("event", "list", "--target", created["id"]).output
    result = ctl("vm", "create", "cli-vm2", "--flavor", "no-such")
    assert result.exit_code == 1 and "flavor no-such not found (404)" in result.output
    result = ctl("-o", "json", "vm", "delete", "cli-vm", "--yes")
    assert result.exit_code == 0 and json.loads(result.output)["state"] in ("deleted", "deleting")
    result = ctl("vm", "show", "no-such-vm")
    assert result.exit_code == 1 and "not found (404)" in result.output


def test_vm_create_wait_follows_the_task_to_its_end(ctl, shared_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    login(ctl, shared_cluster)
    ctl("flavor", "create", "cli-wait", "--vcpus", "1", "--ram", "128", "--disk", "1")
    result = ctl("-o", "json", "vm", "create", "waiter", "--flavor", "cli-wait", "--wait", "--timeout", "60")
    assert result.exit_code == 0, result.output
    assert "vm.create waiter: succeeded (running)" in result.output
    result = ctl("vm", "shutdown", "waiter", "--wait", "--timeout", "60")
    assert result.exit_code == 0 and "vm.shutdown waiter: succeeded (stopped)" in result.output
    result = ctl("vm", "resize", "waiter", "--ram", "256", "--disk", "2", "--wait")
    assert result.exit_code == 0, result.output
    assert "256" in ctl("vm", "show", "waiter").output
    result = ctl("vm", "resize", "waiter", "--disk", "1")
    assert result.exit_code == 1 and "can only grow" in result.output
    tasks = json.loads(ctl("-o", "json", "task", "list").output)
    assert [t["op"] for t in tasks][:3] == ["vm.resize", "vm.shutdown", "vm.create"]
    assert all(t["state"] == "succeeded" for t in tasks[:3])
    assert ctl("task", "show", tasks[0]["id"]).exit_code == 0
    # a stopped VM moves offline without --force; to its own node it cannot
    node = json.loads(ctl("-o", "json", "vm", "show", "waiter").output)["node"]
    result = ctl("vm", "migrate", "waiter", "--to", node, "--offline")
    assert result.exit_code == 1 and "pick another node" in result.output
    result = ctl("vm", "migrate", "waiter", "--to", "nowhere")
    assert result.exit_code == 1 and "nowhere" in result.output
    result = ctl("vm", "migrate", "waiter", "--offline", "--wait", "--timeout", "60")
    assert result.exit_code == 0 and "vm.migrate waiter: succeeded (stopped on" in result.output, result.output
    moved = json.loads(ctl("-o", "json", "vm", "show", "waiter").output)
    assert moved["node"] != node and moved["state"] == "stopped" and moved["migrated"]["from"] == node
    result = ctl("vm", "migrate-cancel", "waiter")
    assert result.exit_code == 1 and "not migrating" in result.output
    result = ctl("vm", "delete", "waiter", "--yes", "--wait", "--timeout", "60")
    assert result.exit_code == 0 and "vm.delete waiter: succeeded (deleted)" in result.output


def test_pools_limit_what_a_user_creates(ctl, shared_cluster: LocalCluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    login(ctl, shared_cluster)
    ctl("flavor", "create", "cli-pool", "--vcpus", "2", "--ram", "128", "--disk", "1")
    assert ctl("user", "create", "dora", "--password", "dora-pass-1").exit_code == 0
    result = ctl("pool", "create", "team-d", "--vcpus", "3", "--vms", "5", "--network", "lan-d")
    assert result.exit_code == 0, result.output
    assert ctl("user", "update", "dora", "--pool", "team-d").exit_code == 0
    result = ctl("user", "update", "dora", "--pool", "no-such-pool")
    assert result.exit_code == 1 and "pool no-such-pool not found (404)" in result.output
    result = ctl("user", "update", "dora")
    assert result.exit_code != 0 and "nothing to change" in result.output

    dora = CliRunner()
    config = tmp_path / "dora.json"

    def as_dora(*args: str) -> Result:
        return dora.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)

    assert as_dora("--endpoint", shared_cluster.nodes["node2"].url, "login", "--username", "dora", "--password", "dora-pass-1").exit_code == 0
    assert as_dora("vm", "create", "d1", "--flavor", "cli-pool", "--stopped").exit_code == 0
    result = as_dora("vm", "create", "d2", "--flavor", "cli-pool", "--stopped")
    assert result.exit_code == 1 and "pool team-d allows vcpus=3" in result.output and "(403)" in result.output
    pool = json.loads(as_dora("-o", "json", "pool", "show", "team-d").output)
    assert pool["usage"]["vcpus"] == 2 and pool["usage"]["vms"] == 1 and "members" not in pool
    assert ctl("pool", "update", "team-d", "--unlimited", "vcpus").exit_code == 0
    assert as_dora("vm", "create", "d2", "--flavor", "cli-pool", "--stopped").exit_code == 0
    result = ctl("pool", "delete", "team-d")
    assert result.exit_code == 1 and "dora" in result.output
    admin_view = json.loads(ctl("-o", "json", "pool", "show", "team-d").output)
    assert admin_view["members"] == ["dora"] and admin_view["networks"] == ["lan-d"]
    result = as_dora("pool", "create", "mine")
    assert result.exit_code == 1 and "(403)" in result.output
    assert ctl("user", "update", "dora", "--disable").exit_code == 0
    result = as_dora("vm", "list")
    assert result.exit_code == 1 and "(401)" in result.output


def test_shell_completion_scripts() -> None:
    for shell in ("bash", "zsh", "fish"):
        result = CliRunner().invoke(cli, ["completion", shell])
        assert result.exit_code == 0 and "_CLOUDCTL_COMPLETE" in result.output
