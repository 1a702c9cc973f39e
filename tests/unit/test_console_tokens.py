"""One-time console tokens: short-lived, single use, for one VM and one user (and where
noVNC is served from)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudd.web.console import console_target, novnc_dir
from cloudd.web.console_tokens import ConsoleTokens, TokenRefused
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm


def test_a_token_opens_its_vm_once() -> None:
    tokens = ConsoleTokens(ttl_s=30)
    token, grant = tokens.issue("bob", "vm1", now=1000.0)
    assert grant.expires_at == 1030.0 and len(token) >= 40
    used = tokens.consume(token, now=1010.0, vm_id="vm1")
    assert (used.user, used.vm_id) == ("bob", "vm1")
    with pytest.raises(TokenRefused, match="already used"):
        tokens.consume(token, now=1011.0)


def test_an_expired_token_is_refused_and_forgotten() -> None:
    tokens = ConsoleTokens(ttl_s=30)
    token, _ = tokens.issue("bob", "vm1", now=1000.0)
    with pytest.raises(TokenRefused, match="expired"):
        tokens.consume(token, now=1030.0)
    assert len(tokens) == 0
    with pytest.raises(TokenRefused, match="unknown"):
        tokens.consume(token, now=1030.5)


def test_a_token_for_another_vm_is_refused_and_used_up() -> None:
    tokens = ConsoleTokens()
    token, _ = tokens.issue("bob", "vm1", now=0.0)
    with pytest.raises(TokenRefused, match="another VM"):
        tokens.consume(token, now=1.0, vm_id="vm2")
    with pytest.raises(TokenRefused, match="already used"):
        tokens.consume(token, now=1.0, vm_id="vm1")


@pytest.mark.parametrize("bad", ["", "x" * 200, "nonsense", "tökén"])
def test_unknown_or_malformed_tokens_are_refused(bad: str) -> None:
    tokens = ConsoleTokens()
    tokens.issue("bob", "vm1", now=0.0)
    with pytest.raises(TokenRefused):
        tokens.consume(bad, now=1.0)


def test_tokens_are_random_and_only_their_hash_is_kept() -> None:
    tokens = ConsoleTokens(max_per_user=50)
    issued = {tokens.issue("bob", "vm1", now=0.0)[0] for _ in range(50)}
    assert len(issued) == 50
    assert not any(t in repr(tokens.__dict__) for t in issued)


def test_outstanding_tokens_are_bounded_and_expired_ones_make_room() -> None:
    tokens = ConsoleTokens(ttl_s=10, max_tokens=3)
    for _ in range(3):
        tokens.issue("bob", "vm1", now=0.0)
    with pytest.raises(TokenRefused, match="too many"):
        tokens.issue("bob", "vm1", now=5.0)
    tokens.issue("bob", "vm1", now=10.0)
    assert len(tokens) == 1


def test_one_user_cannot_take_every_token() -> None:
    tokens = ConsoleTokens(ttl_s=10, max_per_user=2)
    tokens.issue("bob", "vm1", now=0.0)
    tokens.consume(tokens.issue("bob", "vm1", now=0.0)[0], now=1.0)  # used tokens count until they expire
    with pytest.raises(TokenRefused, match="you have 2 console tokens"):
        tokens.issue("bob", "vm2", now=1.0)
    tokens.issue("alice", "vm3", now=1.0)
    tokens.issue("bob", "vm1", now=10.0)


def running(replica, vm_id: str = "vm1") -> dict:  # type: ignore[no-untyped-def]
    new_vm(replica, vm_id)
    vm = replica.state.vms[vm_id]
    vm.update(state="running", node="n1")
    vm["observed"]["vnc_port"] = 5901
    return vm


def test_a_consumed_grant_is_checked_again_against_the_replica() -> None:
    replica = cluster_with_hypervisor()
    vm = running(replica)
    tokens = ConsoleTokens()
    assert console_target(replica.state, tokens.consume(tokens.issue("bob", "vm1", 0.0)[0], 1.0))["id"] == "vm1"
    assert console_target(replica.state, tokens.consume(tokens.issue("admin", "vm1", 0.0)[0], 1.0))["id"] == "vm1"

    replica.ok("user.create", {"name": "eve", "role": "user", "password_hash": replica.state.users["bob"]["password_hash"]})
    with pytest.raises(TokenRefused, match="gone"):  # someone else's VM: as if it did not exist
        console_target(replica.state, tokens.consume(tokens.issue("eve", "vm1", 0.0)[0], 1.0))

    vm["state"] = "stopped"
    with pytest.raises(TokenRefused, match="is stopped"):
        console_target(replica.state, tokens.consume(tokens.issue("bob", "vm1", 0.0)[0], 1.0))
    vm["state"] = "running"

    replica.state.users["bob"]["disabled"] = True
    with pytest.raises(TokenRefused, match="disabled or gone"):
        console_target(replica.state, tokens.consume(tokens.issue("bob", "vm1", 0.0)[0], 1.0))


def test_novnc_is_debians_package_else_the_trees_own_copy(tmp_path: Path) -> None:
    debian, local = tmp_path / "debian", tmp_path / "local"
    assert novnc_dir(debian, local) == local
    (debian / "core").mkdir(parents=True)
    assert novnc_dir(debian, local) == local  # a directory without noVNC's client is not noVNC
    (debian / "core" / "rfb.js").write_text("export default class RFB {}")
    assert novnc_dir(debian, local) == debian
