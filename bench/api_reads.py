"""API reads from a big state: 20,000 VMs over 1,000 nodes, through a real 3-node cluster.

The state is built as a backup document (records shaped by the real commands, cloned)
and loaded with ``cloudd restore``; two more nodes join. One user owns every VM. 64
requests in flight, spread round-robin over the three nodes, authenticated as that user:
``GET /api/v1/vms?limit=100&offset=…`` (a page of 100 at a random offset) and
``GET /api/v1/vms/{id}``. Baseline in the same run: the same load generator against
``GET /healthz`` (the HTTP stack alone).

Last line: ``api_reads_per_s=<pages of 100 per s> p99_ms=<ms>``. Target (2 cores, cluster
and load generator on one machine): >= 4,000 pages/s with p99 <= 25 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import run_load  # noqa: E402
from cloudd.backup import make_backup  # noqa: E402
from cloudd.security import hash_password  # noqa: E402
from tests.cluster.harness import LocalCluster  # noqa: E402
from tests.factories import Replica, init_args  # noqa: E402

USER, PASSWORD = "reader", "reader-pass-1"


def big_backup(nodes: int, vms: int) -> tuple[dict[str, Any], str]:
    """A backup holding ``nodes`` hypervisors and ``vms`` running VMs of one user.

    One node and one VM are made by the real commands; the rest are clones with their
    own names, ids and placement (applying 20,000 placements one by one would take
    minutes of quadratic capacity checks, which is the leader's issue, not this one)."""
    admin_password = "admin-pass-1"
    replica = Replica()
    replica.ok("cluster.init", init_args(admin={"name": "admin", "password_hash": hash_password(admin_password)}))
    replica.ok("user.create", {"name": USER, "role": "user", "password_hash": hash_password(PASSWORD)})
    replica.ok("flavor.create", {"name": "small", "vcpus": 1, "ram_mb": 512, "disk_gb": 5})
    replica.ok("cluster.join_token_create", {"token_id": "jt", "key": "ab" * 16, "expires_at": 10**10})
    replica.ok("node.admit", {"name": "hv0000", "raft_addr": None, "api_addr": "10.1.0.1:8400", "membership": "replica", "join_token_id": "jt"})
    replica.ok("node.register", {"name": "hv0000", "roles": ["hypervisor"], "inventory": {"cpus": 64, "ram_mb": 262144, "disk_gb": 4000.0}}, actor={"node": "hv0000"})
    replica.ok("node.heartbeat", {"name": "hv0000"})
    replica.ok("node.status_set", {"name": "hv0000", "status": "up", "observed_seq": 1})
    replica.ok("vm.create", {"id": "vm000000", "name": "vm-000000", "owner": USER, "flavor": "small", "image": None, "vnc_password": "Abcd1234"})
    replica.ok("vm.place", {"id": "vm000000", "node": "hv0000"})
    replica.ok("vm.report", {"id": "vm000000", "node": "hv0000", "power": "running", "vnc_port": 5900, "disks": ["sda", "vda"],
                             "usage": {"cpu_pct": 3.5, "ram_used_mb": 300.0, "disk_read_bytes": 1e6, "disk_write_bytes": 2e6}})
    doc = make_backup(replica.state, time.time())
    state = doc["state"]
    node0, vm0 = state["nodes"]["hv0000"], state["vms"]["vm000000"]
    for n in range(1, nodes):
        name = f"hv{n:04d}"
        state["nodes"][name] = {**copy.deepcopy(node0), "name": name, "api_addr": f"10.1.{n // 250}.{n % 250 + 1}:8400"}
    for i in range(1, vms):
        vm = copy.deepcopy(vm0)
        vm.update(id=f"vm{i:06d}", name=f"vm-{i:06d}", node=f"hv{i % nodes:04d}", tasks=[])
        state["vms"][vm["id"]] = vm
    state["tasks"] = {}
    vm0["tasks"] = []
    return doc, admin_password


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--vms", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    args = parser.parse_args()
    doc, admin_password = big_backup(args.nodes, args.vms)
    with tempfile.TemporaryDirectory(prefix="cloudd-bench-") as tmp:
        backup = Path(tmp) / "backup.json"
        backup.write_bytes(orjson.dumps(doc))
        print(f"state: {len(doc['state']['vms'])} VMs over {len(doc['state']['nodes'])} nodes, backup {backup.stat().st_size / 1e6:.1f} MB")
        timings = {"heartbeat_interval": 2.0, "suspect_after": 6.0, "down_after": 15.0, "manager_interval": 1.0}
        cluster = LocalCluster(Path(tmp) / "c", timings=timings, first_host=91)
        try:
            started = time.monotonic()
            cluster.restore(backup, admin_password)
            print(f"restored and joined in {time.monotonic() - started:.1f}s")
            token = httpx.post(cluster.nodes["node2"].url + "/api/v1/auth/login", json={"username": USER, "password": PASSWORD}, timeout=30).json()["token"]
            targets = [(n.host, int(n.api_addr.rsplit(":", 1)[1])) for n in cluster.nodes.values()]
            auth = {"Authorization": f"Bearer {token}"}
            first = httpx.get(cluster.nodes["node3"].url + "/api/v1/vms", params={"limit": 100}, headers=auth, timeout=30).json()
            assert first["total"] == args.vms and len(first["items"]) == 100, first.get("total")
            rng = random.Random(7)
            pages = args.vms // 100

            def page(i: int, w: int):  # type: ignore[no-untyped-def]
                return "GET", f"/api/v1/vms?limit=100&offset={rng.randrange(pages) * 100}", b"", auth

            def one(i: int, w: int):  # type: ignore[no-untyped-def]
                return "GET", f"/api/v1/vms/vm{rng.randrange(args.vms):06d}", b"", auth

            def health(i: int, w: int):  # type: ignore[no-untyped-def]
                return "GET", "/healthz", b"", None

            asyncio.run(run_load(targets, page, args.in_flight, 2.0))  # warm up
            base, base_s = asyncio.run(run_load(targets, health, args.in_flight, args.seconds / 2))
            singles, singles_s = asyncio.run(run_load(targets, one, args.in_flight, args.seconds / 2))
            res, res_s = asyncio.run(run_load(targets, page, args.in_flight, args.seconds))
        finally:
            cluster.close()
    base_rate = len(base.latencies) / base_s
    one_rate = singles.statuses.get(200, 0) / singles_s
    rate = res.statuses.get(200, 0) / res_s
    print(f"baseline GET /healthz: {base_rate:.0f}/s p99 {base.percentile(99) * 1000:.1f} ms")
    print(f"GET one VM: {one_rate:.0f}/s p50 {singles.percentile(50) * 1000:.1f} ms p99 {singles.percentile(99) * 1000:.1f} ms statuses {singles.statuses}")
    print(f"GET a page of 100 VMs: {rate:.0f}/s p50 {res.percentile(50) * 1000:.1f} ms p99 {res.percentile(99) * 1000:.1f} ms statuses {res.statuses} errors {res.errors}")
    print(f"pages_vs_healthz_ratio={rate / base_rate:.2f}")
    print(f"api_reads_per_s={rate:.0f} p99_ms={res.percentile(99) * 1000:.1f}")


if __name__ == "__main__":
    main()
