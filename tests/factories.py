"""Typed factories for commands and states used across the tests."""

from __future__ import annotations

import itertools
from typing import Any

from cloudd.commands import apply_command, make_command
from cloudd.model.state import State

PW_HASH = "scrypt$16384$8$1$" + "ab" * 16 + "$" + "cd" * 32
_ids = itertools.count(1)


def command(op: str, args: dict[str, Any], *, rid: str | None = None, ts: float = 1000.0, actor: dict[str, Any] | None = None) -> bytes:
    return make_command(op, args, rid or f"r{next(_ids)}", ts, actor)


class Replica:
    """A state plus the next log index, applying commands like a Raft node would."""

    def __init__(self) -> None:
        self.state = State()
        self.index = 1

    def apply(self, raw: bytes) -> dict[str, Any]:
        self.index += 1
        return apply_command(self.state, raw, self.index)

    def do(self, op: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return self.apply(command(op, args, **kw))

    def ok(self, op: str, args: dict[str, Any], **kw: Any) -> Any:
        outcome = self.do(op, args, **kw)
        assert "error" not in outcome, outcome
        return outcome["result"]


def init_args(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "cluster_id": "c0ffee",
        "name": "test",
        "max_voters": 3,
        "admin": {"name": "admin", "password_hash": PW_HASH},
        "node": {"name": "n1", "raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"},
    }
    args.update(overrides)
    return args


def initialized() -> Replica:
    replica = Replica()
    replica.ok("cluster.init", init_args())
    return replica


def admit(replica: Replica, name: str, n: int, membership: str = "voter", ts: float = 1000.0) -> None:
    token = f"jt{name}"
    replica.ok("cluster.join_token_create", {"token_id": token, "key": "ab" * 16, "expires_at": ts + 3600}, ts=ts)
    replica.ok(
        "node.admit",
        {
            "name": name,
            "raft_addr": f"127.0.0.1:{7000 + n}" if membership == "voter" else None,
            "api_addr": f"127.0.0.1:{8000 + n}",
            "membership": membership,
            "join_token_id": token,
        },
        ts=ts,
    )
