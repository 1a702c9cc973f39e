"""Rolling upgrades with two versions of the command table.

Version 1 is today's table. Version 2 adds an optional ``description`` to
``flavor.create`` (a v2 form; without a description the command still travels as v1).
Three replicas apply one shared log, each with the table of the cloudd it runs, while
the nodes are upgraded one at a time; "legacy" replicas run the code from before
versions were tracked (their envelope simply refuses any ``v`` above 1)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson
import pytest

from cloudd.commands import registry
from cloudd.commands.registry import (
    ENVELOPE,
    REGISTRY,
    CommandSpec,
    apply_command,
    make_command,
)
from cloudd.commands.versions import (
    check_proposal,
    cluster_command_version,
    node_command_version,
)
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.raft.proposer import Proposer
from cloudd.validate import Field
from tests.factories import PW_HASH, init_args

V1 = dict(REGISTRY)
V2 = dict(REGISTRY)
V2["flavor.create"] = replace(
    REGISTRY["flavor.create"],
    args={**REGISTRY["flavor.create"].args, "description": Field("str", max_len=200, required=False)},
    version=2,
    needs=lambda args: 2 if "description" in args else 1,
)
TABLES = {"legacy": (V1, 1), "v1": (V1, 1), "v2": (V2, 2)}


@contextlib.contextmanager
def running(kind: str) -> Iterator[None]:
    """The module globals of a cloudd whose command table is ``kind``."""
    table, version = TABLES[kind]
    saved = (registry.REGISTRY, registry.COMMAND_VERSION, registry.ENVELOPE, registry.check_version)
    registry.REGISTRY, registry.COMMAND_VERSION = table, version
    if kind == "legacy":  # before versions were tracked: v checked by the envelope alone
        registry.ENVELOPE = {**ENVELOPE, "v": Field("int", min=1, max=1)}
        registry.check_version = lambda state, cmd: None
    try:
        yield
    finally:
        registry.REGISTRY, registry.COMMAND_VERSION, registry.ENVELOPE, registry.check_version = saved


@dataclass
class Node:
    name: str
    kind: str
    state: State

    def propose(self, op: str, args: dict[str, Any], rid: str, actor: dict[str, str] | None = None) -> bytes:
        """What this node's Proposer does before anything reaches Raft."""
        with running(self.kind):
            version = registry.REGISTRY[op].version_for(args) if self.kind != "legacy" else 1
            if self.kind != "legacy":
                check_proposal(self.state, op, version)
            return make_command(op, args, rid, 1000.0, actor or {"node": self.name}, version)

    def registration(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"hostname": self.name}
        if self.kind != "legacy":
            facts["command_version"] = TABLES[self.kind][1]
        return {"name": self.name, "roles": ["hypervisor"], "inventory": {"cpus": 4, "ram_mb": 4096, "disk_gb": 50, "facts": facts}}


class Cluster:
    """Three replicas applying one log, each with its own cloudd version."""

    def __init__(self, kinds: dict[str, str]) -> None:
        self.nodes = {name: Node(name, kind, State()) for name, kind in kinds.items()}
        self.index = 0
        self.ids = itertools.count(1)
        self.outcomes: list[list[bytes]] = []

    def commit(self, raw: bytes) -> dict[str, Any]:
        """Append to the log; every replica applies it; they must agree byte for byte."""
        self.index += 1
        outcomes = []
        for node in self.nodes.values():
            with running(node.kind):
                outcomes.append(orjson.dumps(apply_command(node.state, raw, self.index)))
        assert len(set(outcomes)) == 1, outcomes
        self.assert_identical()
        return dict(orjson.loads(outcomes[0]))

    def propose(self, via: str, op: str, args: dict[str, Any], actor: dict[str, str] | None = None) -> dict[str, Any]:
        return self.commit(self.nodes[via].propose(op, args, f"r{next(self.ids)}", actor))

    def assert_identical(self) -> None:
        states = [node.state for node in self.nodes.values()]
        assert len({s.applied_chain for s in states}) == 1
        assert len({s.digest() for s in states}) == 1

    def upgrade(self, name: str, kind: str = "v2") -> None:
        """Restart the node on a new cloudd: same log and state, new table; it registers again."""
        self.nodes[name].kind = kind
        assert "error" not in self.propose(name, "node.register", self.nodes[name].registration())

    def start(self) -> Cluster:
        first = next(iter(self.nodes))
        self.propose(first, "cluster.init", init_args(node={"name": first, "raft_addr": "10.0.0.1:8500", "api_addr": "10.0.0.1:8400"}))
        for i, name in enumerate(list(self.nodes)[1:], start=2):
            self.admit(name, i)
        for name, node in self.nodes.items():
            assert "error" not in self.propose(name, "node.register", node.registration())
        return self

    def admit(self, name: str, i: int, membership: str = "voter") -> None:
        first = next(iter(self.nodes))
        token = f"jt{name}"
        self.propose(first, "cluster.join_token_create", {"token_id": token, "key": "ab" * 16, "expires_at": 99999.0})
        admitted = self.propose(first, "node.admit", {
            "name": name, "raft_addr": f"10.0.0.{i}:8500" if membership == "voter" else None, "api_addr": f"10.0.0.{i}:8400",
            "membership": membership, "join_token_id": token,
        })
        assert "error" not in admitted, admitted


ADMIN = {"user": "admin"}
SMALL = {"name": "small", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}


def test_the_command_form_follows_the_arguments() -> None:
    spec = V2["flavor.create"]
    assert spec.version_for(SMALL) == 1 and spec.version_for({**SMALL, "description": "d"}) == 2
    with running("v2"):
        assert orjson.loads(make_command("flavor.create", {**SMALL, "description": "d"}, "r1", 1.0))["v"] == 2
        assert orjson.loads(make_command("flavor.create", SMALL, "r2", 1.0))["v"] == 1
    assert orjson.loads(make_command("flavor.create", SMALL, "r3", 1.0))["v"] == 1  # today's table


def test_a_command_newer_than_the_table_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="version 2 is not in 1..1"):
        registry.command("test.future", {}, version=2)(lambda state, ctx, args: None)
    assert "test.future" not in REGISTRY


def test_node_versions_come_from_the_inventory_facts() -> None:
    assert node_command_version({}) == 1
    assert node_command_version({"inventory": {"facts": {"command_version": 3}}}) == 3
    for junk in (True, "2", 0, -1, 2.5):
        assert node_command_version({"inventory": {"facts": {"command_version": junk}}}) == 1
    assert cluster_command_version(State()) == 1


def test_a_rolling_upgrade_keeps_every_replica_identical() -> None:
    cluster = Cluster({"n1": "legacy", "n2": "legacy", "n3": "legacy"}).start()
    cluster.propose("n2", "user.create", {"name": "alice", "password_hash": PW_HASH}, ADMIN)
    described = {**SMALL, "description": "one vCPU"}

    cluster.upgrade("n1")
    assert cluster_command_version(cluster.nodes["n1"].state) == 1
    with pytest.raises(CloudError) as refused:
        cluster.nodes["n1"].propose("flavor.create", described, "r-new", ADMIN)
    assert refused.value.code == "conflict" and refused.value.status == 409
    assert refused.value.message == (
        "flavor.create needs command version 2 on every node, the cluster is at 1: "
        "upgrade cloudd on n2 (v1), n3 (v1) first (nothing was changed)"
    )
    # the same request without the new field travels in the old form and works everywhere
    assert cluster.propose("n1", "flavor.create", SMALL, ADMIN)["result"]["name"] == "small"
    assert cluster.propose("n3", "flavor.create", {**SMALL, "name": "tiny"}, ADMIN)["result"]["name"] == "tiny"  # an old node's proposal

    cluster.upgrade("n2")
    with pytest.raises(CloudError, match=r"upgrade cloudd on n3 \(v1\) first"):
        cluster.nodes["n2"].propose("flavor.create", described, "r-new2", ADMIN)

    cluster.upgrade("n3")
    assert {cluster_command_version(n.state) for n in cluster.nodes.values()} == {2}
    outcome = cluster.propose("n3", "flavor.create", {**described, "name": "medium"}, ADMIN)
    assert outcome["result"]["description"] == "one vCPU"
    assert all(n.state.flavors["medium"]["description"] == "one vCPU" for n in cluster.nodes.values())


def test_a_newer_command_that_slipped_into_the_log_is_refused_alike_everywhere() -> None:
    """A proposer checked against a view in which every node was new, then an older node
    registered before the command committed: old and new replicas refuse it identically
    (``Cluster.commit`` asserts equal outcomes, chains and digests), nothing stalls."""
    cluster = Cluster({"n1": "v2", "n2": "v2", "n3": "v2"}).start()
    raw = cluster.nodes["n1"].propose("flavor.create", {**SMALL, "description": "d"}, "r-race", ADMIN)
    cluster.nodes["n3"].kind = "legacy"  # n3 is rolled back to the old release and registers
    cluster.propose("n3", "node.register", cluster.nodes["n3"].registration())
    outcome = cluster.commit(raw)
    assert outcome["error"] == {"code": "invalid", "message": "command.v must be at most 1", "details": {"field": "command.v"}}
    assert "small" not in cluster.nodes["n1"].state.flavors
    # the log moves on: the next command applies on every replica
    assert "error" not in cluster.propose("n2", "flavor.create", {**SMALL, "name": "tiny"}, ADMIN)
    # and the refused request id was not burned: once n3 is new again, the same id works
    cluster.upgrade("n3")
    assert cluster.commit(raw)["result"]["description"] == "d"


def test_a_node_that_joins_on_an_old_release_holds_new_forms_back() -> None:
    cluster = Cluster({"n1": "v2", "n2": "v2", "n3": "v2"}).start()
    cluster.nodes["n4"] = Node("n4", "v1", State())
    cluster.nodes["n4"].state = State.from_dict(orjson.loads(orjson.dumps(cluster.nodes["n1"].state.to_dict())))
    cluster.admit("n4", 4, "replica")  # joined: counts as version 1 until it registers
    with pytest.raises(CloudError, match=r"n4 \(v1\)"):
        cluster.nodes["n1"].propose("flavor.create", {**SMALL, "description": "d"}, "r-n4", ADMIN)
    cluster.propose("n4", "node.register", cluster.nodes["n4"].registration())
    assert cluster_command_version(cluster.nodes["n2"].state) == 1


class FakeReplica:
    """Just what Proposer.submit reads before it would talk to Raft."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.lock = contextlib.nullcontext()
        self.applied: list[bytes] = []

    def apply(self, raw: bytes, callback: Any) -> None:
        self.applied.append(raw)
        callback({"index": 1, "result": {}}, 0)

    def leader_reachable(self) -> bool:
        return True


def test_the_proposer_refuses_before_anything_reaches_raft(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster({"n1": "v2", "n2": "v2", "n3": "v1"}).start()
    replica = FakeReplica(cluster.nodes["n1"].state)
    monkeypatch.setattr("cloudd.raft.proposer.REGISTRY", V2)
    proposer = Proposer(replica)  # type: ignore[arg-type]
    with pytest.raises(CloudError, match=r"upgrade cloudd on n3 \(v1\) first"):
        asyncio.run(proposer.submit("flavor.create", {**SMALL, "description": "d"}, actor=ADMIN))
    assert replica.applied == []
    with running("v2"):
        asyncio.run(proposer.submit("flavor.create", SMALL, actor=ADMIN))
    assert orjson.loads(replica.applied[0])["v"] == 1


def test_specs_default_to_version_one() -> None:
    assert all(isinstance(spec, CommandSpec) and spec.version == 1 and spec.version_for({}) == 1 for spec in REGISTRY.values())
