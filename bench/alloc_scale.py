"""The allocator at scale: 1,000 hypervisors, 20,000 VMs (pure Python, no cluster).

Measures, in one run:
- placement: 20,000 VMs placed one by one with ``place`` (every node scored, the best
  taken, the snapshot updated), per VM; baseline: the same VMs by first fit (no scoring)
  over the same nodes;
- the N+1 question over the full cluster;
- rebalance planning: a cluster where 50 nodes hold twice their share, planned with
  ``plan_rebalance`` (10 moves, N+1 kept).

Last line: ``place_ms_per_vm=<ms> rebalance_plan_s=<s>`` (target: ≤ 5 ms per VM).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from cloudd.alloc.placement import n_plus_one, place
from cloudd.alloc.rebalance import plan_rebalance
from cloudd.alloc.snapshot import AllocSettings, Demand, Snapshot

SIZES = [(1, 1024, 10.0), (2, 2048, 20.0), (2, 4096, 40.0), (4, 8192, 80.0), (8, 16384, 160.0)]


def cluster(nodes: int) -> dict[str, dict[str, Any]]:
    return {
        f"hv{i:04d}": {
            "name": f"hv{i:04d}", "roles": ["hypervisor"], "status": "up", "maintenance": False,
            "inventory": {"cpus": 48, "ram_mb": 393216, "disk_gb": 8000.0},
            "usage": {"ram_used_mb": 1000.0, "load1": 0.5},
        }
        for i in range(nodes)
    }


def demands(count: int, rng: random.Random) -> list[Demand]:
    out = []
    for i in range(count):
        vcpus, ram, disk = rng.choice(SIZES)
        out.append(Demand(f"vm{i:05d}", vcpus, ram, disk, group=f"g{i % 500}" if i % 10 == 0 else None))
    return out


def first_fit(snap: Snapshot, d: Demand) -> str | None:
    for name, load in snap.nodes.items():
        if load.refusal(d) is None:
            return name
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nodes = cluster(args.nodes)
    wanted = demands(args.vms, rng)

    snap = Snapshot.build(nodes, [], AllocSettings())
    start = time.perf_counter()
    unplaced = 0
    for d in wanted:
        decision = place(snap, d)
        if decision.node is None:
            unplaced += 1
        else:
            snap.add(d, decision.node)
    place_s = time.perf_counter() - start

    baseline = Snapshot.build(nodes, [], AllocSettings())
    start = time.perf_counter()
    for d in wanted:
        node = first_fit(baseline, d)
        if node is not None:
            baseline.add(d, node)
    first_fit_s = time.perf_counter() - start

    start = time.perf_counter()
    stranded = n_plus_one(snap)
    n1_s = time.perf_counter() - start

    # unbalance: 50 nodes take a second share of VMs moved from the others
    skewed = snap.copy()
    heavy = list(skewed.nodes)[:50]
    for vm_id in list(skewed.where)[: args.vms // 10]:
        d = skewed.remove(vm_id)
        assert d is not None
        target = heavy[hash(vm_id) % len(heavy)]
        if skewed.nodes[target].refusal(d) is None:
            skewed.add(d, target)
        else:
            skewed.add(d, first_fit(skewed, d) or target)
    start = time.perf_counter()
    plan = plan_rebalance(skewed, max_moves=10)
    plan_s = time.perf_counter() - start

    per_vm_ms = place_s / len(wanted) * 1000
    print(f"{args.nodes} nodes, {args.vms} VMs ({unplaced} unplaced)")
    print(f"placement (score every node):  {place_s:8.2f} s   {per_vm_ms:.3f} ms per VM")
    print(f"first fit (baseline):          {first_fit_s:8.2f} s   {first_fit_s / len(wanted) * 1000:.3f} ms per VM")
    print(f"N+1 over the cluster:          {n1_s:8.2f} s   ({sum(1 for v in stranded.values() if v)} nodes whose loss strands VMs)")
    print(f"rebalance plan, 10 moves:      {plan_s:8.2f} s   score {plan.score_before:.4f} -> {plan.score_after:.4f}, {len(plan.moves)} moves")
    print(f"placement_vs_first_fit_ratio={place_s / first_fit_s:.2f}")
    print(f"place_ms_per_vm={per_vm_ms:.3f} rebalance_plan_s={plan_s:.2f}")


if __name__ == "__main__":
    main()
