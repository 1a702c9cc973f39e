"""The replicated keypair commands: per-user names, refusals that change nothing."""

from __future__ import annotations

import copy

from tests.factories import PW_HASH, Replica, initialized

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4h3jbnqzGW3gaxPPxNTlDWHPTLiCdnOHHBEhn9Lbdt me@host"
FP = "aa:" * 15 + "aa"


def with_users() -> Replica:
    replica = initialized()
    for name in ("alice", "bob"):
        replica.ok("user.create", {"name": name, "role": "user", "password_hash": PW_HASH})
    return replica


def refused(replica: Replica, op: str, args: dict, code: str) -> None:
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = replica.do(op, args)
    assert outcome.get("error", {}).get("code") == code, outcome
    assert replica.state.domain_dict() == before


def test_create_and_delete_a_keypair() -> None:
    replica = with_users()
    created = replica.ok("keypair.create", {"user": "alice", "name": "laptop", "public_key": KEY, "fingerprint": FP}, ts=1234.0)
    assert created == {"name": "laptop", "public_key": KEY, "fingerprint": FP, "created_at": 1234.0}
    assert replica.state.users["alice"]["keypairs"]["laptop"]["public_key"] == KEY
    replica.ok("keypair.create", {"user": "bob", "name": "laptop", "public_key": KEY, "fingerprint": FP})  # names are per user
    assert replica.ok("keypair.delete", {"user": "alice", "name": "laptop"}) == {"name": "laptop"}
    assert replica.state.users["alice"]["keypairs"] == {} and "laptop" in replica.state.users["bob"]["keypairs"]


def test_refusals_change_nothing() -> None:
    replica = with_users()
    replica.ok("keypair.create", {"user": "alice", "name": "laptop", "public_key": KEY, "fingerprint": FP})
    refused(replica, "keypair.create", {"user": "alice", "name": "laptop", "public_key": KEY, "fingerprint": FP}, "conflict")
    refused(replica, "keypair.create", {"user": "nobody", "name": "k", "public_key": KEY, "fingerprint": FP}, "not_found")
    refused(replica, "keypair.create", {"user": "alice", "name": "k", "public_key": "not a key", "fingerprint": FP}, "invalid")
    refused(replica, "keypair.create", {"user": "alice", "name": "k", "public_key": KEY, "fingerprint": "zz"}, "invalid")
    refused(replica, "keypair.create", {"user": "alice", "name": "bad/name", "public_key": KEY, "fingerprint": FP}, "invalid")
    refused(replica, "keypair.delete", {"user": "bob", "name": "laptop"}, "not_found")


def test_a_user_has_at_most_100_keypairs_and_they_go_with_the_user() -> None:
    replica = with_users()
    for n in range(100):
        replica.ok("keypair.create", {"user": "bob", "name": f"k{n}", "public_key": KEY, "fingerprint": FP})
    refused(replica, "keypair.create", {"user": "bob", "name": "one-more", "public_key": KEY, "fingerprint": FP}, "quota_exceeded")
    replica.ok("user.delete", {"name": "bob"})
    assert "bob" not in replica.state.users


def test_only_one_well_formed_key_of_at_most_4_kib_is_kept() -> None:
    import base64

    replica = with_users()
    kind, blob, _ = KEY.split(" ", 2)
    long_comment = f"{kind} {blob} " + "c" * 4100
    rsa = "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x07ssh-rsa" + b"\x01" * 2000).decode()
    replica.ok("keypair.create", {"user": "alice", "name": "rsa", "public_key": rsa, "fingerprint": FP})
    for bad in (long_comment, f"ssh-rsa {blob}", f"{kind} {blob}\n{rsa}", f"{kind} {blob[:-1]}", f"{kind} AAAA", "ssh-ed25519 AAAA k", f"x-{kind} {blob}"):
        refused(replica, "keypair.create", {"user": "alice", "name": "k", "public_key": bad, "fingerprint": FP}, "invalid")
    assert list(replica.state.users["alice"]["keypairs"]) == ["rsa"]
