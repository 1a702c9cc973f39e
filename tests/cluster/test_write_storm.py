"""Many concurrent writes through every node leave identical replicas."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import pytest

from tests.cluster.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

WRITES = 4000
IN_FLIGHT = 24


async def storm(cluster: LocalCluster, only: list[str] | None = None, writes: int = WRITES) -> int:
    names = only or list(cluster.nodes)
    clients = [httpx.AsyncClient(base_url=cluster.nodes[n].url, headers={"Authorization": f"Bearer {cluster.token}"}, timeout=30) for n in names]
    counter = itertools.count()
    ok = 0

    async def worker(w: int) -> None:
        nonlocal ok
        while (i := next(counter)) < writes:
            client = clients[i % len(clients)]
            target = names[(i // 3) % len(names)]
            reply = await client.post(f"/api/v1/nodes/{target}/maintenance", json={"enabled": i % 2 == 0})
            assert reply.status_code == 200, reply.text
            ok += 1

    try:
        await asyncio.gather(*(worker(w) for w in range(IN_FLIGHT)))
    finally:
        for client in clients:
            await client.aclose()
    return ok


def test_write_storm_leaves_identical_replicas_and_no_truncation(cluster: LocalCluster) -> None:
    assert asyncio.run(storm(cluster)) == WRITES
    digests = cluster.wait_same_digest(list(cluster.nodes))
    assert len({d["chain"] for d in digests}) == 1, digests
    assert len({d["digest"] for d in digests}) == 1, digests
    assert digests[0]["applied_index"] > WRITES
    for node in cluster.nodes.values():
        assert "truncating already-applied" not in node.log_text(), node.name
