"""The command registry and the one deterministic ``apply``.

A command is JSON: ``{"op": "node.register", "v": 1, "id": <request id>, "ts": <proposer
time>, "actor": {...}, "args": {...}}``. ``apply_command`` never raises, never reads the
clock, randomness, the disk or the network: time and ids travel inside the command. A
command that fails validation returns an error value and leaves the resources unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from cloudd.commands.versions import cluster_command_version
from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import ID_RE, Field, check_args

log = logging.getLogger(__name__)

# the newest command table this node knows: announced in its registration (see
# cloudd.commands.versions); a command's ``v`` is its spec's ``version``
COMMAND_VERSION = 1
MAX_COMMAND_BYTES = 1 << 20
MAX_VERSION = 1 << 16

ENVELOPE = {
    "op": Field("str", max_len=64),
    "v": Field("int", min=1, max=MAX_VERSION),
    "id": Field("str", pattern=ID_RE),
    "ts": Field("num", min=0),
    "actor": Field("dict", required=False, max_len=8),
    "args": Field("dict"),
}


@dataclass(frozen=True)
class Context:
    """What a handler may know besides its arguments: all of it from the command."""

    index: int
    ts: float
    request_id: str
    actor: Mapping[str, Any]


Handler = Callable[[State, Context, dict[str, Any]], Any]


@dataclass(frozen=True)
class CommandSpec:
    """One replicated operation, named object-then-verb (``node.register``).

    The handler must check everything before it mutates: when it raises ``CloudError``
    the state must be as it was.
    ``audit``: leave an event. ``remember``: cache the result under the request id.
    ``volatile``: arguments a retry recomputes (a fresh salt, an expiry from "now"); they do
    not count when a reused request id is checked against the request it first named.
    """

    op: str
    args: Mapping[str, Field]
    handler: Handler
    audit: bool = True
    remember: bool = True
    target: str | None = None
    doc: str = ""
    volatile: tuple[str, ...] = ()
    # the command table version that introduced this form of the command; ``needs``
    # may say that some arguments can still travel in an older form (e.g. a v2 that only
    # added an optional field), so a rolling upgrade keeps working for the others
    version: int = 1
    needs: Callable[[dict[str, Any]], int] | None = None

    def version_for(self, args: dict[str, Any]) -> int:
        """The command form these arguments are written in (``v``)."""
        return self.needs(args) if self.needs is not None else self.version


REGISTRY: dict[str, CommandSpec] = {}


def command(
    op: str,
    args: Mapping[str, Field],
    *,
    audit: bool = True,
    remember: bool = True,
    target: str | None = "name",
    volatile: tuple[str, ...] = (),
    version: int = 1,
    needs: Callable[[dict[str, Any]], int] | None = None,
) -> Callable[[Handler], Handler]:
    """Register ``handler`` for ``op``; ``target`` names the argument the event shows;
    ``version``: the command table version that introduced this form (a new command, or
    a changed one, gets the next version and ``COMMAND_VERSION`` follows)."""

    def register(handler: Handler) -> Handler:
        if op in REGISTRY:
            raise ValueError(f"command {op} registered twice")
        if not 1 <= version <= COMMAND_VERSION:
            raise ValueError(f"command {op}: version {version} is not in 1..{COMMAND_VERSION}")
        REGISTRY[op] = CommandSpec(op, args, handler, audit, remember, target, handler.__doc__ or "", volatile, version, needs)
        return handler

    return register


@dataclass
class Outcome:
    """The result of applying one log entry; ``to_dict`` is what proposers receive."""

    index: int
    result: Any = None
    error: dict[str, Any] | None = None
    duplicate: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["result"] = self.result
        if self.duplicate:
            out["duplicate"] = True
        return out


MAX_EVENT_TARGET = 128


def fingerprint(cmd: dict[str, Any]) -> str:
    """What a request id stands for: the operation, its arguments and who asked (not from where)."""
    actor = cmd.get("actor") or {}
    who = {k: actor[k] for k in ("user", "node") if k in actor}
    spec = REGISTRY.get(cmd["op"])
    volatile = spec.volatile if spec else ()
    args = {k: v for k, v in cmd["args"].items() if k not in volatile}
    data = orjson.dumps([cmd["op"], args, who], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()[:32]


def copy_json(value: Any) -> Any:
    """A copy that shares nothing with the state (results leave the state machine)."""
    return orjson.loads(orjson.dumps(value))


def _decode(raw: bytes | str) -> dict[str, Any]:
    if len(raw) > MAX_COMMAND_BYTES:
        raise CloudError("payload_too_large", "command is larger than 1 MiB")
    try:
        cmd = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CloudError("invalid", f"command is not JSON: {exc}") from None
    return check_args(cmd, ENVELOPE, prefix="command.")


def check_version(state: State, cmd: dict[str, Any]) -> None:
    """Refuse a command newer than the cluster's command version, on every replica alike.

    The error is the one an older node's envelope check (``v`` at most its version) gives
    for it, byte for byte, so replicas old and new refuse it identically and no state or
    audit log differs. (The proposer already refused it with a clearer message; this only
    catches a race with an older node joining or registering.)"""
    if cmd["v"] <= 1:
        return
    cluster = cluster_command_version(state)
    if cmd["v"] > cluster:
        check_args(cmd, {**ENVELOPE, "v": Field("int", min=1, max=cluster)}, prefix="command.")
    if cmd["v"] > COMMAND_VERSION:
        # every node announced a newer table than this one has: this node was downgraded
        # after the cluster moved on; it cannot follow the log any more
        log.critical(
            "command %s (request %s) is of command version %d, this cloudd knows only %d: this node can no longer "
            "follow the cluster's log; upgrade cloudd on it (downgrades are not supported)", cmd["op"], cmd["id"], cmd["v"], COMMAND_VERSION,
        )
        raise CloudError("invalid", f"command.v must be at most {COMMAND_VERSION:g}", {"field": "command.v"})


def apply_command(state: State, raw: bytes | str, index: int) -> dict[str, Any]:
    """Apply one serialized command at log ``index``. Never raises."""
    outcome = _apply(state, raw, index)
    state.applied_index = index
    try:
        state.chain(index, raw, orjson.dumps(outcome))
    except Exception:  # an unserializable outcome is a handler bug; keep the log moving
        log.exception("could not hash the outcome of index %d", index)
    return outcome


def _apply(state: State, raw: bytes | str, index: int) -> dict[str, Any]:
    try:
        cmd = _decode(raw)
        check_version(state, cmd)
    except CloudError as exc:
        return Outcome(index, error=exc.to_dict()).to_dict()

    fp = fingerprint(cmd)
    cached = state.requests.get(cmd["id"])
    if cached is not None:
        if cached.get("fp") != fp:
            error = CloudError("conflict", "this request id was already used for a different request", {"request_id": cmd["id"]})
            return Outcome(index, error=error.to_dict()).to_dict()
        return Outcome(cached["index"], copy_json(cached.get("result")), cached.get("error"), duplicate=True).to_dict()

    spec = REGISTRY.get(cmd["op"])
    outcome = Outcome(index)
    if spec is None:
        outcome.error = CloudError("invalid", f"unknown command {cmd['op']}").to_dict()
        return outcome.to_dict()

    actor = cmd.get("actor") or {}
    ctx = Context(index=index, ts=float(cmd["ts"]), request_id=cmd["id"], actor=actor)
    try:
        args = check_args(cmd["args"], spec.args, prefix="")
        outcome.result = spec.handler(state, ctx, args)
    except CloudError as exc:
        outcome.error = exc.to_dict()
    except Exception:  # a bug in a handler: same on every replica, so still deterministic
        log.exception("command %s (request %s) failed inside its handler", cmd["op"], cmd["id"])
        outcome.error = CloudError("internal", f"internal error while applying {cmd['op']}").to_dict()

    if spec.remember:
        entry: dict[str, Any] = {"index": index, "fp": fp}
        if outcome.error is None:
            entry["result"] = copy_json(outcome.result)
        else:
            entry["error"] = outcome.error
        state.remember_request(cmd["id"], ctx.ts, entry)
    if spec.audit:
        target = cmd["args"].get(spec.target) if spec.target and isinstance(cmd["args"], dict) else None
        if isinstance(target, str):
            target = target[:MAX_EVENT_TARGET]
        state.add_event(
            {
                "ts": ctx.ts,
                "op": spec.op,
                "target": target if isinstance(target, (str, int)) else None,
                "actor": {k: v for k, v in actor.items() if k in ("user", "node", "addr")},
                "request_id": cmd["id"],
                "index": index,
                "outcome": "ok" if outcome.error is None else outcome.error["code"],
                "message": None if outcome.error is None else outcome.error["message"],
            }
        )
    return outcome.to_dict()


def make_command(
    op: str, args: dict[str, Any], request_id: str, ts: float, actor: Mapping[str, Any] | None = None, version: int | None = None
) -> bytes:
    """Serialize a command for proposal; ``v`` is the form its arguments are written in."""
    if version is None:
        spec = REGISTRY.get(op)
        version = spec.version_for(args) if spec is not None else 1
    cmd: dict[str, Any] = {"op": op, "v": version, "id": request_id, "ts": ts, "args": args}
    if actor:
        cmd["actor"] = dict(actor)
    return orjson.dumps(cmd)
