"""Backups and their replay into a new cluster, as commands."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from cloudd.backup import BATCH_BYTES, make_backup, restore_commands
from tests.factories import PW_HASH, Replica, admit
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm

ME = {"name": "fresh", "raft_addr": "10.0.0.9:7000", "api_addr": "10.0.0.9:8400"}


def busy_cluster() -> Replica:
    replica = cluster_with_hypervisor()
    admit(replica, "n2", 2)
    replica.ok("pool.create", {"name": "team", "limits": {"vms": 10}})
    replica.ok("user.update", {"name": "bob", "pool": "team"})
    replica.ok("token.create", {"token_id": "k1", "user": "bob", "secret_sha256": "0" * 64, "name": "ci", "expires_at": None})
    replica.ok("network.create", {"id": "0000aaaa", "name": "lan", "subnet": "10.0.0.0/24"})
    for i in range(3):
        new_vm(replica, f"vm{i}", networks=[{"network": "0000aaaa"}])
    replica.ok("vm.place", {"id": "vm0", "node": "n1"})
    replica.ok("image.default_set", {"id": "img1"})
    return replica


def replay(doc: dict[str, Any], node: dict[str, str] = ME) -> Replica:
    target = Replica()
    for op, args in restore_commands(orjson.loads(orjson.dumps(doc)), node):
        target.ok(op, args)
    return target


def test_a_backup_replays_into_an_equal_state_with_the_new_node_as_the_only_voter() -> None:
    source = busy_cluster()
    doc = make_backup(source.state, 5000.0)
    target = replay(doc)
    before, after = source.state.domain_dict(), target.state.domain_dict()
    for key in ("users", "tokens", "flavors", "images", "pools", "tasks", "networks", "ports"):
        assert after[key] == before[key], key
    assert after["vms"] == before["vms"]
    assert target.state.vm_keys == source.state.vm_keys
    assert after["cluster"]["id"] == before["cluster"]["id"] and after["cluster"]["default_image"] == "img1"
    assert after["cluster"]["restored"]["from_index"] == source.state.applied_index
    voters = [n for n in after["nodes"].values() if n["membership"] == "voter"]
    assert [v["name"] for v in voters] == ["fresh"] and voters[0]["raft_addr"] == ME["raft_addr"]
    assert after["nodes"]["n1"]["rejoin"] and after["nodes"]["n1"]["raft_addr"] is None
    assert after["join_tokens"] == {}
    assert [e["op"] for e in target.state.events][: len(source.state.events)] == [e["op"] for e in source.state.events]
    assert target.state.initialized


def test_a_node_of_the_backup_rejoins_under_its_name_and_keeps_its_vms() -> None:
    target = replay(make_backup(busy_cluster().state, 5000.0))
    admit(target, "n1", 1, membership="replica")
    node = target.state.nodes["n1"]
    assert not node.get("rejoin") and node["inventory"]["cpus"] == 4 and target.state.vms["vm0"]["node"] == "n1"
    # a name that is not a rejoining node is still refused
    target.ok("cluster.join_token_create", {"token_id": "jt2", "key": "ab" * 16, "expires_at": 9000})
    again = target.do("node.admit", {"name": "n1", "raft_addr": None, "api_addr": "127.0.0.1:9999", "membership": "replica", "join_token_id": "jt2"})
    assert again["error"]["code"] == "conflict"


def test_big_states_go_in_batches_under_the_command_limit() -> None:
    source = cluster_with_hypervisor()
    source.ok("flavor.create", {"name": "tiny", "vcpus": 1, "ram_mb": 64, "disk_gb": 1})
    for i in range(1500):
        source.ok("vm.create", {"id": f"v{i}", "name": f"vm-{i}", "owner": "bob", "flavor": "tiny", "user_data": "x" * 1000, "image": None})
    commands = list(restore_commands(make_backup(source.state, 1.0), ME))
    assert max(len(orjson.dumps(args)) for _, args in commands) < BATCH_BYTES + 4096
    assert sum(1 for op, args in commands if op == "cluster.restore_put" and args["kind"] == "vms") >= 3
    target = Replica()
    for op, args in commands:
        target.ok(op, args)
    assert len(target.state.vms) == 1500


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda s: s["vms"]["vm1"].pop("owner"), "vms[vm1] has no owner"),
        (lambda s: s["vms"]["vm1"].update(owner="ghost"), "unknown user ghost"),
        (lambda s: s["users"]["bob"].update(pool="nope"), "unknown pool nope"),
        (lambda s: s["users"].update(bob=5), "users[bob] must be an object"),
        (lambda s: s["users"]["admin"].update(role="user"), "no enabled admin"),
        (lambda s: s["tokens"]["k1"].update(id="other"), "another key"),
        (lambda s: next(iter(s["ports"].values())).update(network="0000ffff"), "unknown network 0000ffff"),
        (lambda s: s["networks"]["0000aaaa"].update(owner="ghost"), "unknown user ghost"),
    ],
)
def test_an_inconsistent_backup_is_refused_and_leaves_no_cluster(spoil: Any, message: str) -> None:
    doc = copy.deepcopy(make_backup(busy_cluster().state, 5000.0))
    spoil(doc["state"])
    target = Replica()
    outcome = None
    for op, args in restore_commands(doc, ME):
        outcome = target.do(op, args)
        if "error" in outcome:
            break
    assert outcome is not None and "error" in outcome and message in outcome["error"]["message"], outcome
    assert not target.state.initialized


def test_restore_commands_cannot_touch_a_live_cluster() -> None:
    live = busy_cluster()
    before = copy.deepcopy(live.state.domain_dict())
    doc = make_backup(live.state, 1.0)
    for op, args in restore_commands(doc, ME):
        assert live.do(op, args)["error"]["code"] == "conflict"
    assert live.state.domain_dict() == before
    fresh = Replica()
    fresh.ok("cluster.restore_begin", next(restore_commands(doc, ME))[1])
    assert fresh.do("cluster.init", {"cluster_id": "x", "name": "x", "max_voters": 3, "admin": {"name": "a", "password_hash": PW_HASH}, "node": ME})["error"]["code"] == "conflict"
    assert fresh.do("user.create", {"name": "eve", "role": "admin", "password_hash": PW_HASH})["error"]["code"] == "conflict"


def test_files_that_are_not_backups_are_refused() -> None:
    from cloudd.backup import check_backup

    for bad in ({}, {"format": "other"}, {"format": "cloudd-backup/1", "state": {"cluster": {}}}, {"format": "cloudd-backup/1", "state": {"cluster": {"id": "c"}}}):
        with pytest.raises(ValueError):
            check_backup(bad)
