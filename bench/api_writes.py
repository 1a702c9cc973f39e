"""Concurrent API writes through a real 3-node cluster, Raft encryption on.

16 requests in flight, spread round-robin over the three nodes; every write is a
replicated command (``node.maintenance_set``) that the API answers only once committed
and applied on the node that took it. Baseline measured in the same run: the same load
generator against ``GET /healthz`` (the HTTP stack without Raft or auth).

Last line: ``api_writes_per_s=<n> p99_ms=<ms>``. Target (2 cores, cluster and load on one
machine): >= 1,000 writes/s with p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import run_load  # noqa: E402
from tests.cluster.harness import LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudd-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), timings={"heartbeat_interval": 2.0, "suspect_after": 6.0, "down_after": 15.0, "manager_interval": 1.0}, first_host=81)
        try:
            cluster.init(3)
            targets = [(n.host, int(n.api_addr.rsplit(":", 1)[1])) for n in cluster.nodes.values()]
            auth = {"Authorization": f"Bearer {cluster.token}"}
            names = list(cluster.nodes)

            def write(i: int, w: int):  # type: ignore[no-untyped-def]
                body = orjson.dumps({"enabled": i % 2 == 0})
                return "POST", f"/api/v1/nodes/{names[i % 3]}/maintenance", body, auth

            def health(i: int, w: int):  # type: ignore[no-untyped-def]
                return "GET", "/healthz", b"", None

            asyncio.run(run_load(targets, write, args.in_flight, 2.0))  # warm up
            base, base_s = asyncio.run(run_load(targets, health, args.in_flight, args.seconds / 2))
            res, res_s = asyncio.run(run_load(targets, write, args.in_flight, args.seconds))
        finally:
            cluster.close()
    base_rate = len(base.latencies) / base_s
    rate = res.statuses.get(200, 0) / res_s
    print(f"baseline GET /healthz: {base_rate:.0f}/s p99 {base.percentile(99) * 1000:.1f} ms")
    print(f"writes: {rate:.0f}/s  p50 {res.percentile(50) * 1000:.1f} ms  p99 {res.percentile(99) * 1000:.1f} ms  statuses {res.statuses} errors {res.errors}")
    print(f"writes_vs_healthz_ratio={rate / base_rate:.2f}")
    print(f"api_writes_per_s={rate:.0f} p99_ms={res.percentile(99) * 1000:.1f}")


if __name__ == "__main__":
    main()
