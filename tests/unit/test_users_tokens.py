"""``token.create`` at a user's token cap: a new login session replaces the user's oldest
session, in the command itself (so every replica evicts the same one); API tokens are
never evicted and a new one at the cap is refused."""

from __future__ import annotations

import copy
from typing import Any

from cloudd.commands.users import MAX_TOKENS_PER_USER
from tests.factories import PW_HASH, Replica, command, init_args, initialized


def with_alice() -> Replica:
    replica = initialized()
    replica.ok("user.create", {"name": "alice", "role": "user", "password_hash": PW_HASH})
    return replica


def create(replica: Replica, token_id: str, kind: str, ts: float, expires_at: float | None = None, user: str = "alice") -> dict[str, Any]:
    args = {"token_id": token_id, "user": user, "secret_sha256": "0" * 64, "name": "t", "expires_at": expires_at, "kind": kind}
    return replica.do("token.create", args, ts=ts)


def held(replica: Replica, user: str = "alice") -> set[str]:
    return {t for t, tok in replica.state.tokens.items() if tok["user"] == user}


def test_a_session_at_the_cap_replaces_the_oldest_session_and_keeps_api_tokens() -> None:
    replica = with_alice()
    create(replica, "api1", "api", ts=100.0)  # the oldest token of all: never evicted
    # created out of id order, so "oldest" cannot be mistaken for the first in the dict or the lowest id
    for n in range(MAX_TOKENS_PER_USER - 1):
        assert "error" not in create(replica, f"s{n:03d}", "session", ts=2000.0 - n, expires_at=9e9)
    assert len(held(replica)) == MAX_TOKENS_PER_USER
    outcome = create(replica, "new1", "session", ts=3000.0, expires_at=9e9)
    assert outcome["result"]["sessions_ended"] == [f"s{MAX_TOKENS_PER_USER - 2:03d}"]  # created at the earliest ts
    assert len(held(replica)) == MAX_TOKENS_PER_USER and {"api1", "new1"} <= held(replica)
    assert create(replica, "new2", "session", ts=3001.0, expires_at=9e9)["result"]["sessions_ended"] == [f"s{MAX_TOKENS_PER_USER - 3:03d}"]


def test_equal_creation_times_evict_the_lowest_id() -> None:
    replica = with_alice()
    for n in reversed(range(MAX_TOKENS_PER_USER)):
        create(replica, f"s{n:03d}", "session", ts=1000.0)
    assert create(replica, "z", "session", ts=1000.0)["result"]["sessions_ended"] == ["s000"]


def test_an_api_token_at_the_cap_is_refused_and_changes_nothing() -> None:
    replica = with_alice()
    for n in range(MAX_TOKENS_PER_USER):
        create(replica, f"s{n:03d}", "session", ts=1000.0 + n)
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = create(replica, "api1", "api", ts=5000.0)
    assert outcome["error"]["code"] == "conflict" and "API tokens do not" in outcome["error"]["message"]
    assert replica.state.domain_dict() == before


def test_a_login_is_refused_when_every_token_held_is_an_api_token() -> None:
    replica = with_alice()
    for n in range(MAX_TOKENS_PER_USER):
        create(replica, f"a{n:03d}", "api", ts=1000.0 + n)
    before = copy.deepcopy(replica.state.domain_dict())
    outcome = create(replica, "s1", "session", ts=5000.0, expires_at=9e9)
    assert outcome["error"]["code"] == "conflict" and "revoke an API token" in outcome["error"]["message"]
    assert replica.state.domain_dict() == before


def test_expired_tokens_do_not_count_and_other_users_are_untouched() -> None:
    replica = with_alice()
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    bobs = create(replica, "bob1", "session", ts=10.0, user="bob")
    assert "error" not in bobs
    for n in range(MAX_TOKENS_PER_USER):
        create(replica, f"old{n:03d}", "session", ts=1000.0, expires_at=1500.0)
    outcome = create(replica, "fresh", "session", ts=2000.0, expires_at=9e9)
    assert "sessions_ended" not in outcome["result"]
    assert held(replica) == {"fresh"} and held(replica, "bob") == {"bob1"}


def test_two_replicas_evict_the_same_sessions() -> None:
    log = [command("cluster.init", init_args()), command("user.create", {"name": "alice", "role": "user", "password_hash": PW_HASH})]
    for n in range(MAX_TOKENS_PER_USER + 5):
        args = {"token_id": f"s{n:03d}", "user": "alice", "secret_sha256": "0" * 64, "name": "t", "expires_at": 9e9, "kind": "session"}
        log.append(command("token.create", args, ts=1000.0 + (n * 7919) % 101))
    replicas = [Replica(), Replica()]
    for replica in replicas:
        for raw in log:
            replica.apply(raw)
    assert held(replicas[0]) == held(replicas[1]) and len(held(replicas[0])) == MAX_TOKENS_PER_USER
    assert replicas[0].state.digest() == replicas[1].state.digest()
