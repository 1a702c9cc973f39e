"""Every command handler: what it changes, and the errors that change nothing."""

from __future__ import annotations

import copy

import pytest

from cloudd.commands import REGISTRY, apply_command
from tests.factories import PW_HASH, Replica, admit, command, init_args, initialized


def unchanged_after(replica: Replica, op: str, args: dict, code: str) -> None:
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = replica.do(op, args)
    assert outcome["error"]["code"] == code, outcome
    assert replica.state.domain_dict() == before


def test_every_registered_command_has_a_docstring() -> None:
    assert {"cluster.init", "node.register", "node.heartbeat", "user.create", "token.create"} <= set(REGISTRY)
    for spec in REGISTRY.values():
        assert spec.doc, spec.op


def test_cluster_init_creates_admin_and_first_voter() -> None:
    replica = initialized()
    state = replica.state
    assert state.cluster["id"] == "c0ffee"
    assert state.users["admin"]["role"] == "admin"
    assert state.nodes["n1"]["membership"] == "voter"
    assert state.nodes["n1"]["status"] == "down"


def test_cluster_init_twice_is_a_conflict() -> None:
    replica = initialized()
    unchanged_after(replica, "cluster.init", init_args(cluster_id="other"), "conflict")


def test_commands_before_init_are_refused() -> None:
    replica = Replica()
    outcome = replica.do("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    assert outcome["error"]["code"] == "conflict"
    assert replica.state.users == {}


def test_same_request_id_returns_the_first_result() -> None:
    replica = initialized()
    raw = command("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}, rid="same")
    first = replica.apply(raw)
    second = replica.apply(raw)
    assert first["result"] == second["result"]
    assert second["duplicate"] is True and second["index"] == first["index"]
    assert len([e for e in replica.state.events if e["op"] == "user.create"]) == 1


def test_an_error_is_remembered_under_its_request_id_too() -> None:
    replica = initialized()
    raw = command("user.delete", {"name": "ghost"}, rid="del1")
    assert replica.apply(raw)["error"]["code"] == "not_found"
    replica.ok("user.create", {"name": "ghost", "role": "user", "password_hash": PW_HASH})
    again = replica.apply(raw)
    assert again["error"]["code"] == "not_found" and again["duplicate"]
    assert "ghost" in replica.state.users


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'"x"', b"null", b'{"op": "user.create"}', b'{"op":1,"v":1,"id":"a","ts":1,"args":{}}'],
)
def test_malformed_commands_are_errors_not_exceptions(raw: bytes) -> None:
    replica = initialized()
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = replica.apply(raw)
    assert outcome["error"]["code"] == "invalid"
    assert replica.state.domain_dict() == before


def test_unknown_op_and_unknown_fields() -> None:
    replica = initialized()
    unchanged_after(replica, "vm.explode", {}, "invalid")
    unchanged_after(replica, "node.heartbeat", {"name": "n1", "extra": 1}, "invalid")
    unchanged_after(replica, "node.heartbeat", {"name": 5}, "invalid")


def test_future_command_version_is_refused() -> None:
    replica = initialized()
    raw = b'{"op":"node.heartbeat","v":2,"id":"x","ts":1,"args":{"name":"n1"}}'
    assert replica.apply(raw)["error"]["code"] == "invalid"


def test_join_token_admits_one_node_once() -> None:
    replica = initialized()
    replica.ok("cluster.join_token_create", {"token_id": "t1", "key": "ab" * 16, "expires_at": 5000.0})
    args = {"name": "n2", "raft_addr": "127.0.0.1:7002", "api_addr": "127.0.0.1:8002", "membership": "voter", "join_token_id": "t1"}
    replica.ok("node.admit", args)
    assert replica.state.join_tokens["t1"]["used_by"] == "n2"
    unchanged_after(replica, "node.admit", dict(args, name="n3", raft_addr="127.0.0.1:7003", api_addr="127.0.0.1:8003"), "forbidden")


def test_expired_join_token_is_refused() -> None:
    replica = initialized()
    replica.ok("cluster.join_token_create", {"token_id": "t1", "key": "ab" * 16, "expires_at": 1500.0})
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = replica.do(
        "node.admit",
        {"name": "n2", "raft_addr": "127.0.0.1:7002", "api_addr": "127.0.0.1:8002", "membership": "voter", "join_token_id": "t1"},
        ts=2000.0,
    )
    assert outcome["error"]["code"] == "forbidden"
    assert replica.state.domain_dict() == before


def test_admit_refuses_duplicate_addresses_and_too_many_voters() -> None:
    replica = initialized()
    admit(replica, "n2", 2)
    admit(replica, "n3", 3)
    replica.ok("cluster.join_token_create", {"token_id": "t9", "key": "ab" * 16, "expires_at": 5000.0})
    base = {"name": "n4", "raft_addr": "127.0.0.1:7004", "api_addr": "127.0.0.1:8004", "membership": "voter", "join_token_id": "t9"}
    unchanged_after(replica, "node.admit", base, "conflict")  # 3 voters already
    unchanged_after(replica, "node.admit", dict(base, membership="replica", raft_addr=None, api_addr="127.0.0.1:8002"), "conflict")
    replica.ok("node.admit", dict(base, membership="replica", raft_addr=None))
    assert replica.state.nodes["n4"]["membership"] == "replica"


def test_register_and_heartbeat() -> None:
    replica = initialized()
    inventory = {"cpus": 8, "ram_mb": 16384, "disk_gb": 500.0, "facts": {"kvm": True}}
    replica.ok("node.register", {"name": "n1", "roles": ["storage", "hypervisor"], "inventory": inventory})
    node = replica.state.nodes["n1"]
    assert node["roles"] == ["hypervisor", "storage"] and node["inventory"]["cpus"] == 8
    assert replica.ok("node.heartbeat", {"name": "n1"}, ts=1002.0) == {"lease_seq": 1}
    assert replica.ok("node.heartbeat", {"name": "n1", "usage": {"load1": 0.5}}, ts=1004.0) == {"lease_seq": 2}
    assert node["last_heartbeat"] == 1004.0 and node["usage"] == {"load1": 0.5}


def test_register_rejects_bad_inventory() -> None:
    replica = initialized()
    unchanged_after(replica, "node.register", {"name": "n1", "roles": ["hypervisor"], "inventory": {"cpus": 0, "ram_mb": 1, "disk_gb": 1}}, "invalid")
    unchanged_after(replica, "node.register", {"name": "n1", "roles": ["toaster"], "inventory": {"cpus": 1, "ram_mb": 1, "disk_gb": 1}}, "invalid")
    unchanged_after(replica, "node.register", {"name": "n1", "roles": ["storage", "storage"], "inventory": {"cpus": 1, "ram_mb": 1, "disk_gb": 1}}, "invalid")
    unchanged_after(replica, "node.register", {"name": "nx", "roles": [], "inventory": {"cpus": 1, "ram_mb": 1, "disk_gb": 1}}, "not_found")


def test_status_verdict_overtaken_by_a_renewal_is_refused() -> None:
    replica = initialized()
    replica.ok("node.heartbeat", {"name": "n1"})
    replica.ok("node.status_set", {"name": "n1", "status": "up", "observed_seq": 1})
    replica.ok("node.heartbeat", {"name": "n1"})
    unchanged_after(replica, "node.status_set", {"name": "n1", "status": "down", "observed_seq": 1}, "conflict")
    replica.ok("node.status_set", {"name": "n1", "status": "down", "observed_seq": 2})
    assert replica.state.nodes["n1"]["status"] == "down"


def test_maintenance() -> None:
    replica = initialized()
    unchanged_after(replica, "node.status_set", {"name": "n1", "status": "maintenance", "observed_seq": 0}, "conflict")
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": True})
    replica.ok("node.status_set", {"name": "n1", "status": "maintenance", "observed_seq": 0})
    replica.ok("node.maintenance_set", {"name": "n1", "enabled": False})
    assert replica.state.nodes["n1"]["status"] == "up"


def test_node_remove_keeps_the_last_voter() -> None:
    replica = initialized()
    unchanged_after(replica, "node.remove", {"name": "n1"}, "conflict")
    admit(replica, "n2", 2)
    replica.ok("node.remove", {"name": "n2"})
    assert "n2" not in replica.state.nodes
    unchanged_after(replica, "node.remove", {"name": "n2"}, "not_found")


def test_users_and_tokens() -> None:
    replica = initialized()
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    unchanged_after(replica, "user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}, "conflict")
    unchanged_after(replica, "user.create", {"name": "Bad Name", "role": "user", "password_hash": PW_HASH}, "invalid")
    unchanged_after(replica, "user.create", {"name": "eve", "role": "root", "password_hash": PW_HASH}, "invalid")
    unchanged_after(replica, "user.create", {"name": "eve", "role": "user", "password_hash": "plaintext"}, "invalid")
    token = {"token_id": "tk1", "user": "bob", "secret_sha256": "0" * 64, "name": "ci", "expires_at": None}
    replica.ok("token.create", token)
    unchanged_after(replica, "token.create", dict(token, token_id="tk2", user="nobody"), "not_found")
    unchanged_after(replica, "token.create", dict(token, token_id="tk3", expires_at=10.0), "invalid")
    unchanged_after(replica, "token.revoke", {"token_id": "tk1", "user": "admin"}, "not_found")
    replica.ok("user.password_set", {"name": "bob", "password_hash": PW_HASH.replace("ab", "ef")})
    replica.ok("user.delete", {"name": "bob"})
    assert "tk1" not in replica.state.tokens


def test_last_admin_cannot_be_deleted() -> None:
    replica = initialized()
    unchanged_after(replica, "user.delete", {"name": "admin"}, "conflict")


def test_token_limit_per_user() -> None:
    replica = initialized()
    for i in range(100):
        replica.ok("token.create", {"token_id": f"t{i}", "user": "admin", "secret_sha256": "0" * 64, "name": "x", "expires_at": None})
    unchanged_after(replica, "token.create", {"token_id": "t100", "user": "admin", "secret_sha256": "0" * 64, "name": "x", "expires_at": None}, "conflict")


def test_events_record_who_what_and_outcome() -> None:
    replica = initialized()
    replica.do("user.delete", {"name": "ghost"}, actor={"user": "admin", "addr": "10.0.0.9"})
    event = replica.state.events[-1]
    assert event["op"] == "user.delete" and event["outcome"] == "not_found"
    assert event["actor"] == {"user": "admin", "addr": "10.0.0.9"} and event["target"] == "ghost"


def test_heartbeats_leave_no_event_and_no_request_entry() -> None:
    replica = initialized()
    events, requests = len(replica.state.events), len(replica.state.requests)
    replica.ok("node.heartbeat", {"name": "n1"})
    assert (len(replica.state.events), len(replica.state.requests)) == (events, requests)


def test_request_cache_is_bounded_by_age() -> None:
    replica = initialized()
    replica.ok("user.create", {"name": "old", "role": "user", "password_hash": PW_HASH}, rid="old-req", ts=1000.0)
    replica.ok("user.create", {"name": "new", "role": "user", "password_hash": PW_HASH}, ts=1000.0 + 7 * 3600)
    assert "old-req" not in replica.state.requests


def test_apply_records_index_and_hash_chain() -> None:
    a, b = Replica(), Replica()
    a.ok("cluster.init", init_args(), rid="init")
    b.ok("cluster.init", init_args(), rid="init")
    assert a.state.applied_chain == b.state.applied_chain and a.state.applied_index == 2
    a.ok("node.heartbeat", {"name": "n1"}, rid="h")
    assert a.state.applied_chain != b.state.applied_chain


def test_a_handler_bug_becomes_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    replica = initialized()

    def broken(state, ctx, args):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError

    monkeypatch.setitem(REGISTRY, "node.heartbeat", dataclasses.replace(REGISTRY["node.heartbeat"], handler=broken))
    outcome = apply_command(replica.state, command("node.heartbeat", {"name": "n1"}), 99)
    assert outcome["error"]["code"] == "internal"


def test_a_request_id_reused_for_another_request_is_refused() -> None:
    replica = initialized()
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}, rid="dup", actor={"user": "admin"})
    before = copy.deepcopy(replica.state.domain_dict())
    other_op = replica.do("user.delete", {"name": "bob"}, rid="dup", actor={"user": "admin"})
    assert other_op["error"]["code"] == "conflict"
    other_actor = replica.do("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}, rid="dup", actor={"user": "eve"})
    assert other_actor["error"]["code"] == "conflict"
    assert replica.state.domain_dict() == before


def test_a_retry_with_a_fresh_salt_or_expiry_is_the_same_request() -> None:
    replica = initialized()
    first = replica.do("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}, rid="r-salt")
    retry = replica.do("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH.replace("ab", "ef")}, rid="r-salt")
    assert retry["duplicate"] and retry["result"] == first["result"]
    token = {"token_id": "tk", "user": "bob", "secret_sha256": "0" * 64, "name": "t", "expires_at": 5000.0}
    replica.ok("token.create", token, rid="r-tok")
    again = replica.do("token.create", dict(token, expires_at=5001.0), rid="r-tok")
    assert again["duplicate"]


def test_results_share_nothing_with_the_state() -> None:
    replica = initialized()
    raw = command("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}, rid="alias")
    out = replica.apply(raw)
    out["result"]["role"] = "admin"
    assert replica.apply(raw)["result"]["role"] == "user"


def test_a_refused_token_create_purges_nothing() -> None:
    replica = initialized()
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    replica.ok("token.create", {"token_id": "old", "user": "bob", "secret_sha256": "0" * 64, "name": "x", "expires_at": 1500.0})
    for i in range(100):
        replica.ok("token.create", {"token_id": f"a{i}", "user": "admin", "secret_sha256": "0" * 64, "name": "x", "expires_at": None})
    outcome = replica.do("token.create", {"token_id": "a100", "user": "admin", "secret_sha256": "0" * 64, "name": "x", "expires_at": None}, ts=2000.0)
    assert outcome["error"]["code"] == "conflict"
    assert "old" in replica.state.tokens


def test_event_targets_are_capped() -> None:
    replica = initialized()
    assert replica.do("token.revoke", {"token_id": "A" * 1000})["error"]["code"] == "invalid"
    assert len(replica.state.events[-1]["target"]) <= 128


def test_password_change_ends_other_sessions_but_keeps_api_tokens() -> None:
    replica = initialized()
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    for token_id, kind in (("s1", "session"), ("s2", "session"), ("api1", "api")):
        replica.ok("token.create", {"token_id": token_id, "user": "bob", "secret_sha256": "0" * 64, "name": "x", "expires_at": None, "kind": kind})
    result = replica.ok("user.password_set", {"name": "bob", "password_hash": PW_HASH, "keep_token_id": "s1"})
    assert result["sessions_ended"] == 1
    assert set(replica.state.tokens) == {"s1", "api1"}
