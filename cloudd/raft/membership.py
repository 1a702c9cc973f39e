"""Raft membership changes from asyncio: one change at a time, retried until committed.

pysyncobj forwards a change proposed on a follower to the leader and refuses a change
while another is uncommitted (``REQUEST_DENIED``); we retry those until the deadline.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from pysyncobj import FAIL_REASON

from cloudd.errors import CloudError
from cloudd.raft.node import ReplicatedState


async def _call(start: Callable[[Callable[[object, int], None]], None], timeout: float) -> int:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def deliver(error: int) -> None:
        if not future.done():
            future.set_result(error)

    def callback(_result: object, error: int) -> None:
        try:
            loop.call_soon_threadsafe(deliver, error)
        except RuntimeError:  # the loop closed (shutdown): nobody waits any more
            pass

    start(callback)
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        return -1


async def _change(raft: ReplicatedState, addr: str, member: bool, deadline_s: float) -> None:
    """Add (member=True) or remove ``addr``; done once this node's voter set says so
    (pysyncobj switches configuration when the change is appended, as Raft does)."""
    verb = "add" if member else "remove"
    give_up = time.monotonic() + deadline_s
    while (addr in raft.voter_addrs()) != member:
        if time.monotonic() > give_up:
            raise CloudError("unavailable", f"could not {verb} {addr} {'to' if member else 'from'} the Raft voters in time")
        change = raft.addNodeToCluster if member else raft.removeNodeFromCluster
        error = await _call(lambda cb: change(addr, callback=cb), 3.0)
        if error == FAIL_REASON.SUCCESS:
            break
        await asyncio.sleep(0.2)


async def add_voter(raft: ReplicatedState, addr: str, deadline_s: float = 15.0) -> None:
    """Make ``addr`` a voter. Returns once the leader runs with the new configuration;
    the change commits when a majority of that configuration has it, which for a cluster
    of one growing to two needs the new node itself: so the joiner must start next."""
    await _change(raft, addr, True, deadline_s)


async def remove_voter(raft: ReplicatedState, addr: str, deadline_s: float = 15.0) -> None:
    """Remove ``addr`` from the voters; never call it on the node ``addr`` itself."""
    await _change(raft, addr, False, deadline_s)


async def step_down(raft: ReplicatedState, deadline_s: float = 10.0) -> None:
    """Hand leadership to the most caught-up follower and wait until someone else leads."""
    give_up = time.monotonic() + deadline_s
    while raft.is_leader:
        if time.monotonic() > give_up:
            raise CloudError("unavailable", "could not transfer leadership in time")
        await _call(lambda cb: raft.call_in_tick(lambda: raft.transferLeadership(callback=cb)), 2.0)
        for _ in range(20):
            if not raft.is_leader:
                break
            await asyncio.sleep(0.05)
