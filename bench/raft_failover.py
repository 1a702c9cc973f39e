"""Leader failover time of a real 3-node cluster under ``kill -9``.

Each round: find the leader, ``kill -9`` it, and time until a write through a surviving
node commits (the API retries internally while there is no leader). Then the killed node
restarts and catches up before the next round. Baseline measured in the same run: the
latency of the same write with a healthy leader.

Last line: ``leader_failover_p95_s=<seconds>``. Target: <= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.harness import LocalCluster  # noqa: E402


def timed_write(client: httpx.Client, node: str, flag: bool) -> float:
    started = time.perf_counter()
    reply = client.post(f"/api/v1/nodes/{node}/maintenance", json={"enabled": flag})
    reply.raise_for_status()
    return time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    times: list[float] = []
    baseline: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cloudd-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), timings={"heartbeat_interval": 2.0, "suspect_after": 6.0, "down_after": 15.0, "manager_interval": 1.0}, first_host=91)
        try:
            cluster.init(3)
            for round_no in range(args.rounds):
                leader = cluster.wait_leader()
                survivor = next(n for n in cluster.nodes if n != leader)
                with cluster.api(survivor) as client:
                    baseline += [timed_write(client, survivor, i % 2 == 0) for i in range(5)]
                    cluster.kill9(leader)
                    killed_at = time.perf_counter()
                    while True:
                        try:
                            timed_write(client, survivor, round_no % 2 == 0)
                            break
                        except httpx.HTTPError:
                            time.sleep(0.01)
                    took = time.perf_counter() - killed_at
                times.append(took)
                new = cluster.leader([n for n in cluster.nodes if n != leader])
                print(f"round {round_no + 1}: killed {leader}, writes again after {took:.3f}s (new leader {new})", flush=True)
                cluster.start(leader)
                cluster.wait_healthy(leader, timeout=60)
                cluster.wait_same_digest(list(cluster.nodes))
                cluster.wait_connected()
        finally:
            cluster.close()
    print(f"failover s: min {min(times):.3f} p50 {statistics.median(times):.3f} p95 {pct(times, 95):.3f} max {max(times):.3f}")
    print(f"baseline write with a healthy leader: p50 {statistics.median(baseline) * 1000:.1f} ms")
    print(f"failover_p50_vs_write_ratio={statistics.median(times) / statistics.median(baseline):.0f}")
    print(f"leader_failover_p95_s={pct(times, 95):.3f}")


if __name__ == "__main__":
    main()
