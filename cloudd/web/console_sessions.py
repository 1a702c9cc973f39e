"""How many console sessions one node holds open, per user and per VM.

A token only opens a session; the session then holds a connection to the VM's VNC server
(qemu), two relay tasks and, for a VM of another node, a websocket to that node, for as
long as the VM runs. Tokens are rate-limited (``console_tokens``); these limits bound what
the sessions they open keep: ``max_per_user`` browser sessions of one user on this node,
and ``max_per_vm`` sessions to one VM's VNC server through this node. The node that runs
the VM counts the sessions other nodes relay from it under the same VM limit, so the
limit per VM holds for the VM's VNC server whichever node the browsers talk to.

Not thread-safe: used from the event loop only. Every ``open`` is paired with the
``close`` of the slot it returns, on every path out of a session.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

MAX_SESSIONS_PER_USER = 8
MAX_SESSIONS_PER_VM = 4


class SessionRefused(Exception):
    """No slot for another session; ``str(exc)`` is a reason safe to show the user."""


@dataclass
class Slot:
    """One open session's place in the counts; ``close`` gives it back (idempotent)."""

    owner: ConsoleSessions
    user: str | None
    vm_id: str
    held: bool = True

    def close(self) -> None:
        if self.held:
            self.held = False
            self.owner._release(self)


class ConsoleSessions:
    """The console sessions open on this node, counted per user and per VM."""

    def __init__(self, max_per_user: int = MAX_SESSIONS_PER_USER, max_per_vm: int = MAX_SESSIONS_PER_VM) -> None:
        self.max_per_user = max_per_user
        self.max_per_vm = max_per_vm
        self.by_user: Counter[str] = Counter()
        self.by_vm: Counter[str] = Counter()

    def check(self, user: str | None, vm_id: str, vm_name: str) -> None:
        """Raise ``SessionRefused`` when ``user`` (None: another node's relay, counted per
        VM only) may not open one more session to the VM now."""
        if user is not None and self.by_user[user] >= self.max_per_user:
            raise SessionRefused(f"you have {self.max_per_user} console sessions open on this node; close one to open another")
        if self.by_vm[vm_id] >= self.max_per_vm:
            raise SessionRefused(f"VM {vm_name} has {self.max_per_vm} console sessions open; close one to open another")

    def open(self, user: str | None, vm_id: str, vm_name: str) -> Slot:
        """Take a slot (``check`` first); the caller closes it when the session ends."""
        self.check(user, vm_id, vm_name)
        if user is not None:
            self.by_user[user] += 1
        self.by_vm[vm_id] += 1
        return Slot(self, user, vm_id)

    def _release(self, slot: Slot) -> None:
        if slot.user is not None:
            self.by_user[slot.user] -= 1
            if self.by_user[slot.user] <= 0:
                del self.by_user[slot.user]
        self.by_vm[slot.vm_id] -= 1
        if self.by_vm[slot.vm_id] <= 0:
            del self.by_vm[slot.vm_id]
