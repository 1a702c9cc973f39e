"""The count of open console sessions, per user and per VM."""

from __future__ import annotations

import pytest

from cloudd.web.console_sessions import ConsoleSessions, SessionRefused


def test_a_slot_counts_once_for_its_user_and_its_vm_and_closing_it_twice_frees_it_once() -> None:
    sessions = ConsoleSessions(max_per_user=2, max_per_vm=2)
    first = sessions.open("bob", "vm1", "web")
    relayed = sessions.open(None, "vm1", "web")  # another node's relay: the VM's count only
    with pytest.raises(SessionRefused, match="VM web has 2 console sessions open"):
        sessions.open("alice", "vm1", "web")
    sessions.open("bob", "vm2", "db")
    with pytest.raises(SessionRefused, match="you have 2 console sessions open on this node"):
        sessions.open("bob", "vm3", "cache")
    first.close()
    first.close()
    assert (dict(sessions.by_user), dict(sessions.by_vm)) == ({"bob": 1}, {"vm1": 1, "vm2": 1})
    relayed.close()
    sessions.check("alice", "vm1", "web")  # room again; check takes nothing
    assert dict(sessions.by_vm) == {"vm2": 1}
