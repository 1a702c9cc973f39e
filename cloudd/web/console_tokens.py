"""One-time console tokens: a short-lived, single-use right to open one VM's console.

A token is minted for a user and a VM by ``POST /api/v1/vms/{ref}/console`` or by the
console page, and consumed by the websocket proxy (``/console/ws?token=…``) of the SAME
node: tokens live in this node's memory only, never in the replicated state. Minting one
is a read (the user's right to the VM is checked against the local replica) and the
browser opens the websocket on the node that served it the page or the URL, so
replicating tokens would only add a Raft write per console opening and put bearer
secrets into every node's journal. A node that restarts forgets its tokens: the page is
reloaded, a new token minted.

Only a SHA-256 of each token is kept (a lookup by it leaks nothing of the token); a consumed token stays remembered (as used) until it
would have expired, so a second use is refused with a clear reason instead of "unknown".
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

TOKEN_TTL_S = 30.0
MAX_TOKENS = 10_000  # outstanding (unexpired, used or not) tokens on one node
MAX_PER_USER = 20  # one user cannot crowd the others out
MAX_TOKEN_CHARS = 128


class TokenRefused(Exception):
    """The token cannot open a console; ``str(exc)`` is a reason safe to show the caller."""


@dataclass(frozen=True)
class Grant:
    """What a consumed token allows: ``user`` may see the console of VM ``vm_id``."""

    user: str
    vm_id: str
    expires_at: float


@dataclass
class _Entry:
    grant: Grant
    used: bool = False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ConsoleTokens:
    """The tokens this node minted. Not thread-safe: used from the event loop only.
    Time comes in as ``now`` (seconds, the wall clock the API shows in ``expires_at``)."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S, max_tokens: int = MAX_TOKENS, max_per_user: int = MAX_PER_USER) -> None:
        self.ttl_s = ttl_s
        self.max_tokens = max_tokens
        self.max_per_user = max_per_user
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def prune(self, now: float) -> None:
        """Forget tokens (used or not) whose time is over."""
        self._entries = {k: e for k, e in self._entries.items() if e.grant.expires_at > now}

    def issue(self, user: str, vm_id: str, now: float) -> tuple[str, Grant]:
        """A new token for ``user`` on ``vm_id``, valid ``ttl_s`` seconds, once.
        Raises ``TokenRefused`` when too many tokens are outstanding on this node, or for
        this user."""
        self.prune(now)
        if len(self._entries) >= self.max_tokens:
            raise TokenRefused("too many console tokens are outstanding on this node; try again in a few seconds")
        if sum(1 for e in self._entries.values() if e.grant.user == user) >= self.max_per_user:
            raise TokenRefused(f"you have {self.max_per_user} console tokens from the last {self.ttl_s:.0f} s; try again in a few seconds")
        token = secrets.token_urlsafe(32)
        grant = Grant(user, vm_id, now + self.ttl_s)
        self._entries[_digest(token)] = _Entry(grant)
        return token, grant

    def consume(self, token: str, now: float, vm_id: str | None = None) -> Grant:
        """Use the token up and return its grant. ``vm_id``, when the caller names the VM
        it wants, must be the token's. Every refusal raises ``TokenRefused``; a token
        presented for the wrong VM is used up all the same (it was exposed)."""
        if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise TokenRefused("missing or malformed console token")
        key = _digest(token)
        entry = self._entries.get(key)
        if entry is None:
            raise TokenRefused("unknown console token (tokens are valid only on the node that issued them)")
        if entry.grant.expires_at <= now:
            del self._entries[key]
            raise TokenRefused("the console token has expired; open the console again")
        if entry.used:
            raise TokenRefused("the console token was already used; open the console again")
        entry.used = True
        if vm_id is not None and vm_id != entry.grant.vm_id:
            raise TokenRefused("the console token is for another VM")
        return entry.grant
