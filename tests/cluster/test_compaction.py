"""Log compaction with our own snapshots: restart from them, and catch a node up by one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.cluster.harness import LocalCluster, wait_for
from tests.cluster.test_write_storm import storm

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_compacted_cluster_restarts_and_a_lagging_node_gets_the_snapshot(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, first_host=61)
    try:
        cluster.init(3)
        for node in cluster.nodes.values():  # compact every 500 entries from now on
            config = orjson.loads((node.data_dir / "node.json").read_bytes())
            config["raft"] = {"compaction_entries": 500, "compaction_seconds": 3600}
            (node.data_dir / "node.json").write_bytes(orjson.dumps(config))
        for name in cluster.nodes:
            cluster.stop(name)
        for name in cluster.nodes:
            cluster.start(name)
        for name in cluster.nodes:
            cluster.wait_healthy(name)
        leader = cluster.wait_leader()
        lagging = next(n for n in cluster.nodes if n != leader)
        cluster.kill9(lagging)
        assert asyncio.run(storm(cluster, only=[n for n in cluster.nodes if n != lagging], writes=2500)) == 2500
        alive = [n for n in cluster.nodes if n != lagging]
        wait_for(lambda: all((cluster.nodes[n].data_dir / "raft.snapshot").exists() for n in alive), what="snapshots written")
        snap = orjson.loads((cluster.nodes[leader].data_dir / "raft.snapshot").read_bytes())
        assert snap["format"] == 1 and "node1" in snap["state"]["nodes"]
        # the lagging node is now behind the leader's compacted log: it must get the snapshot
        cluster.start(lagging)
        cluster.wait_healthy(lagging, timeout=60)
        assert (cluster.nodes[lagging].data_dir / "raft.snapshot").exists(), "caught up without a snapshot transfer?"
        digests = cluster.wait_same_digest(list(cluster.nodes))
        assert len({d["chain"] for d in digests}) == 1 and len({d["digest"] for d in digests}) == 1
        # every node restarts from snapshot + journal tail and agrees again
        for name in cluster.nodes:
            cluster.kill9(name)
        for name in cluster.nodes:
            cluster.start(name)
        for name in cluster.nodes:
            cluster.wait_healthy(name, timeout=60)
        digests = cluster.wait_same_digest(list(cluster.nodes))
        assert len({d["digest"] for d in digests}) == 1
        assert digests[0]["applied_index"] > 2500
    finally:
        cluster.close()
