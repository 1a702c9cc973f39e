"""Proposing commands from asyncio code and waiting for the local replica.

A proposal whose fate is unknown (leader changed, timed out) is retried with the SAME
request id until ``deadline``: the state's request cache makes the retry return the first
result if the earlier attempt did commit. pysyncobj calls our callback from its tick
thread; ``call_soon_threadsafe`` hands the result to the event loop.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any, Callable, Mapping

from pysyncobj import FAIL_REASON

from cloudd.commands import REGISTRY, make_command
from cloudd.commands.versions import check_proposal
from cloudd.errors import CloudError
from cloudd.raft.node import ReplicatedState

RETRYABLE = {
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.UNKNOWN_OUTCOME,
}


FAIL_NAMES = {
    -1: "timed out",
    FAIL_REASON.QUEUE_FULL: "the command queue is full",
    FAIL_REASON.MISSING_LEADER: "no leader",
    FAIL_REASON.DISCARDED: "discarded by a new leader",
    FAIL_REASON.NOT_LEADER: "asked a node that no longer leads",
    FAIL_REASON.LEADER_CHANGED: "the leader changed",
    FAIL_REASON.REQUEST_DENIED: "refused by the leader",
    FAIL_REASON.UNKNOWN_OUTCOME: "outcome unknown",
}


UNHEARD_INDEX_S = 1.0


def new_request_id() -> str:
    return secrets.token_urlsafe(12)


class Proposer:
    """Submits commands to Raft for one node. ``clock`` gives the command timestamps."""

    def __init__(self, node: ReplicatedState, clock: Callable[[], float] = time.time, no_leader_grace_s: float = 3.0) -> None:
        self.node = node
        self.clock = clock
        self.no_leader_grace_s = no_leader_grace_s

    async def _attempt(self, raw: bytes, timeout: float) -> tuple[dict[str, Any] | None, int]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[dict[str, Any] | None, int]] = loop.create_future()

        def deliver(result: dict[str, Any] | None, error: int) -> None:
            if not future.done():
                future.set_result((result, error))

        def callback(result: dict[str, Any] | None, error: int) -> None:
            # runs in pysyncobj's tick thread: it must never raise (pysyncobj would apply
            # the same entry again on the next tick)
            try:
                loop.call_soon_threadsafe(deliver, result, error)
            except RuntimeError:  # the loop closed (shutdown): nobody waits any more
                pass

        self.node.apply(raw, callback=callback)
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return None, -1

    async def submit(
        self,
        op: str,
        args: dict[str, Any],
        *,
        request_id: str | None = None,
        actor: Mapping[str, Any] | None = None,
        deadline_s: float = 8.0,
        attempt_timeout_s: float = 2.0,
    ) -> dict[str, Any]:
        """Commit one command; returns its outcome (``index`` plus ``result`` or ``error``).

        Raises ``CloudError("unavailable")`` when no leader committed it before the
        deadline: the outcome is then unknown, and a retry must reuse ``request_id``;
        ``CloudError("conflict")`` at once when the command's form is newer than some
        node of the cluster understands (a rolling upgrade under way).
        """
        request_id = request_id or new_request_id()
        spec = REGISTRY.get(op)
        version = spec.version_for(args) if spec is not None else 1
        if version > 1:  # a form some node may not know yet: refuse it here, never log it
            with self.node.lock:
                check_proposal(self.node.state, op, version)
        raw = make_command(op, args, request_id, self.clock(), actor, version)
        give_up = time.monotonic() + deadline_s
        leaderless_since: float | None = None
        last_error = -1
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                break
            if self.node.leader_reachable():
                outcome, error = await self._attempt(raw, min(attempt_timeout_s, remaining))
            else:
                outcome, error = None, FAIL_REASON.MISSING_LEADER
            if error == FAIL_REASON.SUCCESS and outcome is not None:
                return outcome
            last_error = error
            if error not in RETRYABLE and error != -1:
                break
            if error == FAIL_REASON.MISSING_LEADER:
                # an election takes well under a second; longer means no quorum: fail fast
                leaderless_since = leaderless_since or time.monotonic()
                if time.monotonic() - leaderless_since > self.no_leader_grace_s:
                    break
            else:
                leaderless_since = None
            await asyncio.sleep(min(0.02, max(0.0, give_up - time.monotonic())))
        reason = FAIL_NAMES.get(last_error, f"pysyncobj error {last_error}")
        raise CloudError(
            "unavailable",
            f"the cluster did not commit the request ({reason}); it may still commit: retry with the same request id",
            {"request_id": request_id},
        )

    async def submit_ok(self, op: str, args: dict[str, Any], **kwargs: Any) -> tuple[Any, int]:
        """Like ``submit`` but raises the command's error; returns (result, index)."""
        outcome = await self.submit(op, args, **kwargs)
        if "error" in outcome:
            error = CloudError.from_dict(outcome["error"])
            error.index = outcome.get("index")  # refused by the command, but in the log
            raise error
        return outcome["result"], outcome["index"]

    async def wait_applied(self, index: int, timeout_s: float = 5.0) -> None:
        """Wait until the local replica has applied ``index`` (read-your-writes).

        Gives up after ``timeout_s``: with 400 when this node has not even heard that
        ``index`` was committed (an index no write answered with: the caller's mistake),
        with 504 when it knows it was committed but has not applied it yet."""
        if self.node.raftLastApplied >= index:
            return
        start = time.monotonic()
        give_up = start + timeout_s
        delay = 0.001
        while self.node.raftLastApplied < index:
            now = time.monotonic()
            # a leader knows every committed index; a follower hears of one within a few
            # append rounds, so an index still unheard of after a second was never answered
            unheard = index > self.node.raftCommitIndex and (self.node.is_leader or now - start > UNHEARD_INDEX_S)
            if now > give_up or unheard:
                commit = self.node.raftCommitIndex
                if index > commit:
                    raise CloudError(
                        "invalid",
                        f"index {index} has not been committed (this node knows of {commit}): use the X-Cloudd-Index a write answered with",
                        {"field": "min_index", "commit_index": commit},
                    )
                raise CloudError(
                    "timeout",
                    f"this node has not yet applied index {index} (at {self.node.raftLastApplied})",
                    {"applied": self.node.raftLastApplied},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
