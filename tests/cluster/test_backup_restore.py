"""Disaster recovery: a backup taken with cloudctl, every node lost, a cluster rebuilt
from the file with cloudd restore, the other nodes joining again under their names."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.cloudctl import cli
from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_a_cluster_comes_back_from_its_backup_with_users_tokens_pools_and_vms(tmp_path: Path) -> None:
    old = LocalCluster(tmp_path / "old", first_host=61)
    backup = tmp_path / "backup.json"
    try:
        old.init(3)
        with old.api("node1") as admin:
            assert admin.post("/api/v1/users", json={"name": "alice", "password": "alice-pass-1"}).status_code == 201
            assert admin.post("/api/v1/pools", json={"name": "team", "limits": {"vms": 5}}).status_code == 201
            assert admin.patch("/api/v1/users/alice", json={"pool": "team"}).status_code == 200
            assert admin.post("/api/v1/flavors", json={"name": "small", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).status_code == 201
        login = httpx.post(old.nodes["node2"].url + "/api/v1/auth/login", json={"username": "alice", "password": "alice-pass-1"}).json()
        with old.api("node2", login["token"]) as alice:
            api_token = alice.post("/api/v1/tokens", json={"name": "ci"}).json()["token"]
            ids = [alice.post("/api/v1/vms", json={"name": f"web{i}", "flavor": "small", "power": "stopped"}).json()["id"] for i in range(3)]
            # settled (created, tasks finished) before the backup, so the restored state can be compared with it
            wait_for(lambda: all(v["state"] == "stopped" for v in alice.get("/api/v1/vms").json()["items"]), 30, what="the VMs created")
            wait_for(lambda: all(t["state"] != "running" for t in alice.get("/api/v1/tasks").json()["items"]), 30, what="the tasks finished")
        config = tmp_path / "ctl.json"
        runner = CliRunner()
        assert runner.invoke(cli, ["--config", str(config), "--endpoint", old.nodes["node3"].url, "login", "--username", "admin", "--password", old.password]).exit_code == 0
        result = runner.invoke(cli, ["--config", str(config), "cluster", "backup", str(backup)])
        assert result.exit_code == 0, result.output
        assert "3 VMs" in result.output and stat.S_IMODE(os.stat(backup).st_mode) == 0o600
        old_id = json.loads(backup.read_text())["state"]["cluster"]["id"]
        password = old.password
    finally:
        old.close()  # every node gone: quorum lost for good

    # a spoiled file is refused and leaves nothing behind
    spoiled = tmp_path / "spoiled.json"
    doc = json.loads(backup.read_text())
    doc["state"]["vms"][ids[0]]["owner"] = "ghost"
    spoiled.write_text(json.dumps(doc))
    bad = LocalCluster(tmp_path / "bad", first_host=65)
    node = bad.new_node("node1")
    out = bad.run_cloudd("restore", str(spoiled), "--data-dir", str(node.data_dir), "--name", "node1", "--api-addr", node.api_addr, "--raft-addr", node.raft_addr, *bad.compute)
    assert out.returncode != 0 and "unknown user ghost" in out.stderr
    assert not (node.data_dir / "node.json").exists() and not (node.data_dir / "cluster.secret").exists()

    new = LocalCluster(tmp_path / "new", first_host=71)
    try:
        new.restore(backup, password)
        with new.api("node3") as admin:
            status = admin.get("/api/v1/cluster").json()
            assert status["cluster"]["id"] == old_id and status["cluster"]["restored"]["by_node"] == "node1"
            assert sorted(m["name"] for m in status["members"]) == ["node1", "node2", "node3"]
            nodes = admin.get("/api/v1/nodes").json()["items"]
            assert not any(n.get("rejoin") for n in nodes)
            events = admin.get("/api/v1/events", params={"limit": 1000}).json()["items"]
            assert any(e["op"] == "cluster.restore_finish" for e in events) and any(e["op"] == "pool.create" for e in events)
            # the state is the backup's: every record of every kind, field for field (only
            # the nodes, which joined again, and the admin's new login token differ)
            restored = admin.get("/api/v1/cluster/backup").json()["state"]
        original = json.loads(backup.read_text())["state"]
        for kind in ("users", "flavors", "images", "pools", "networks", "ports", "storage_pools", "volumes", "tasks", "default_image"):
            assert restored.get(kind) == original.get(kind), kind
        assert {k: restored["tokens"][k] for k in original["tokens"]} == original["tokens"]
        assert set(restored["vms"]) == set(original["vms"])
        for vm_id, vm in original["vms"].items():
            assert {k: v for k, v in restored["vms"][vm_id].items() if k != "observed"} == {k: v for k, v in vm.items() if k != "observed"}, vm_id
        assert restored["cluster"]["id"] == original["cluster"]["id"] and restored["cluster"]["name"] == original["cluster"]["name"]
        assert restored["events"][: len(original["events"])] == original["events"]  # the audit log goes on from the backup's
        # alice's API token of the old cluster still works, and her VMs and pool are there
        with new.api("node2", api_token) as alice:
            assert sorted(v["id"] for v in alice.get("/api/v1/vms").json()["items"]) == sorted(ids)
            pool = alice.get("/api/v1/pools/team").json()
            assert pool["usage"]["vms"] == 3 and pool["limits"]["vms"] == 5
        new.wait_same_digest(["node1", "node2", "node3"])
    finally:
        new.close()
