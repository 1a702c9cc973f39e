"""The node agent registers at once and again when its compute facts change (the CPU
models take seconds to learn on a fresh host)."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudd.agent import Agent
from tests.factories import initialized
from tests.fake_env import FakeEnv


def test_a_hypervisor_registers_again_once_its_cpu_models_are_known(tmp_path: Any) -> None:
    replica = initialized()
    env = FakeEnv(replica, "n1")
    facts: dict[str, Any] = {"cpu_models": [], "live_migration": False, "migration_uri": None, "migrate_uri": None}
    agent = Agent(str(tmp_path), ["hypervisor"])
    agent.compute = lambda: dict(facts)
    asyncio.run(agent.step(env))
    assert replica.state.nodes["n1"]["compute"]["cpu_models"] == []
    asyncio.run(agent.step(env))
    assert [op for op, _ in env.proposed].count("node.register") == 1  # nothing changed: no new registration
    facts["cpu_models"] = ["Westmere", "qemu64"]
    asyncio.run(agent.step(env))
    assert [op for op, _ in env.proposed].count("node.register") == 2
    assert replica.state.nodes["n1"]["compute"]["cpu_models"] == ["Westmere", "qemu64"]
