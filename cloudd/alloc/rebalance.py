"""Rebalancing: a bounded list of VM moves that evens out the hypervisors (pure).

The cluster's score is, like Ganeti's hbal, a sum of standard deviations across the
usable hypervisors: of the allocated share of RAM, of vCPUs per physical core (half
weight) and of disk, and, under the usage and trend policies, of the observed (or forecast) RAM use.
Lower is better; 0 is perfectly even.

The planner is greedy: each round it tries moving one VM from one of the fullest nodes to
one of the emptiest that may take it (hard rules as for placement: room, pinning,
anti-affinity) and keeps the move that lowers the score most, until no move helps by at
least ``min_gain`` or ``max_moves`` are planned. Sums and sums of squares are kept per
metric, so trying a move costs O(1) whatever the cluster's size; only the ``breadth``
fullest and emptiest nodes by each metric are searched each round; once the score is below
0.1 a move must gain at least 0.003 (like hbal's rule: no churn for crumbs). Then the moves
that later moves made nearly pointless (undoing them costs less than a move must gain) are
dropped, cheapest first. When the cluster met N+1 before, a
plan that would break it is cut back until it holds again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from cloudd.alloc.placement import n_plus_one
from cloudd.alloc.snapshot import Demand, NodeLoad, Snapshot

METRICS = ("ram", "cpu", "disk", "use")


@dataclass(frozen=True)
class Move:
    vm_id: str
    source: str
    target: str
    gain: float  # how much the cluster score drops


@dataclass
class Plan:
    moves: list[Move] = field(default_factory=list)
    score_before: float = 0.0
    score_after: float = 0.0
    n_plus_one_before: bool = True
    n_plus_one_after: bool = True
    spread_before: dict[str, float] = field(default_factory=dict)
    spread_after: dict[str, float] = field(default_factory=dict)


def node_metrics(load: NodeLoad, policy: str, extra: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> dict[str, float]:
    """The node's shares (0..1+) with ``extra`` (vCPUs, RAM MiB, disk GB) added."""
    vcpus, ram, disk = extra
    out = {
        "ram": (load.alloc_ram_mb + ram) / load.cap_ram_mb if load.cap_ram_mb else 0.0,
        # vCPUs per physical core (hbal's measure), at half weight: with it cloudd evens out
        # vCPUs as well as hbal does and RAM better (bench/alloc_vs_hbal.py)
        "cpu": (load.alloc_vcpus + vcpus) / (2 * load.cores),
        "disk": (load.alloc_disk_gb + disk) / load.cap_disk_gb if load.cap_disk_gb else 0.0,
    }
    if policy != "resource":
        observed = load.forecast_ram_mb if policy == "trend" else load.used_ram_mb
        out["use"] = (observed + ram) / load.cap_ram_mb if load.cap_ram_mb else 0.0
    return out


class Spread:
    """Sums and sums of squares of each metric over the usable nodes: O(1) updates."""

    def __init__(self, values: dict[str, dict[str, float]]) -> None:
        self.n = len(values)
        self.values = values
        keys = next(iter(values.values())).keys() if values else ()
        self.sum = {k: sum(v[k] for v in values.values()) for k in keys}
        self.sq = {k: sum(v[k] ** 2 for v in values.values()) for k in keys}

    def stddev(self, key: str, sum_: float | None = None, sq: float | None = None) -> float:
        s = self.sum[key] if sum_ is None else sum_
        q = self.sq[key] if sq is None else sq
        return math.sqrt(max(0.0, q / self.n - (s / self.n) ** 2)) if self.n else 0.0

    def score(self) -> float:
        return sum(self.stddev(k) for k in self.sum)

    def score_if(self, changes: dict[str, dict[str, float]]) -> float:
        """The score if the nodes in ``changes`` had those metric values instead."""
        total = 0.0
        for k in self.sum:
            s, q = self.sum[k], self.sq[k]
            for node, new in changes.items():
                old = self.values[node][k]
                s += new[k] - old
                q += new[k] ** 2 - old**2
            total += self.stddev(k, s, q)
        return total

    def apply(self, changes: dict[str, dict[str, float]]) -> None:
        for node, new in changes.items():
            for k in self.sum:
                old = self.values[node][k]
                self.sum[k] += new[k] - old
                self.sq[k] += new[k] ** 2 - old**2
            self.values[node] = new

    def spreads(self) -> dict[str, float]:
        return {k: round(self.stddev(k), 6) for k in self.sum}


def plan_rebalance(
    snap: Snapshot,
    max_moves: int = 10,
    movable: Callable[[Demand], bool] = lambda d: True,
    min_gain: float = 1e-3,
    breadth: int = 40,
    keep_n_plus_one: bool = True,
) -> Plan:
    """A plan of at most ``max_moves`` moves (``snap`` is not changed)."""
    work = snap.copy()
    policy = work.settings.policy
    usable = {n: load for n, load in work.nodes.items() if load.usable is None}
    plan = Plan()
    if len(usable) < 2:
        return plan
    spread = Spread({n: node_metrics(load, policy) for n, load in usable.items()})
    plan.score_before = plan.score_after = spread.score()
    plan.spread_before = spread.spreads()
    n1_before = not any(n_plus_one(snap).values()) if keep_n_plus_one else True
    plan.n_plus_one_before = n1_before
    moved: set[str] = set()
    for _ in range(max_moves):
        # the fullest and the emptiest nodes by each metric: a CPU-heavy, RAM-light node is
        # a candidate too
        sources_set: set[str] = set()
        targets_set: set[str] = set()
        for key in spread.sum:
            ranked = sorted(usable, key=lambda n: (spread.values[n][key], n))
            targets_set.update(ranked[:breadth])
            sources_set.update(ranked[-breadth:])
        sources, targets = sorted(sources_set), sorted(targets_set)
        current = spread.score()
        # like hbal: once the cluster is fairly even, only moves that clearly help
        needed = _needed(current, min_gain)
        best: tuple[float, str, str, str] | None = None  # (new score, vm, source, target)
        for source in sources:
            for vm_id, d in usable[source].vms.items():
                if vm_id in moved or not movable(d):
                    continue
                away = node_metrics(usable[source], policy, (-d.vcpus, -d.ram_mb, -d.disk_gb))
                for target in targets:
                    if target == source or usable[target].refusal(d) is not None:
                        continue
                    score = spread.score_if({source: away, target: node_metrics(usable[target], policy, (d.vcpus, d.ram_mb, d.disk_gb))})
                    if best is None or score < best[0] - 1e-12 or (abs(score - best[0]) <= 1e-12 and (vm_id, target) < (best[1], best[3])):
                        best = (score, vm_id, source, target)
        if best is None or current - best[0] < needed:
            break
        score, vm_id, source, target = best
        d = work.remove(vm_id)
        assert d is not None
        work.add(d, target)
        spread.apply({source: node_metrics(usable[source], policy), target: node_metrics(usable[target], policy)})
        plan.moves.append(Move(vm_id, source, target, round(current - score, 6)))
        moved.add(vm_id)
    plan.moves = _prune(plan.moves, work, usable, spread, policy, min_gain)
    plan.score_after = spread.score()
    plan.spread_after = spread.spreads()
    if keep_n_plus_one and n1_before and plan.moves:
        while plan.moves and any(n_plus_one(_after(snap, plan.moves)).values()):
            plan.moves.pop()  # the last moves broke N+1: give them up
        plan.score_after = Spread({n: node_metrics(l, policy) for n, l in _after(snap, plan.moves).nodes.items() if l.usable is None}).score()
    plan.n_plus_one_after = not any(n_plus_one(_after(snap, plan.moves)).values()) if keep_n_plus_one else True
    return plan


def _needed(score: float, min_gain: float) -> float:
    """The least gain a move must bring: like hbal, more once the cluster is fairly even."""
    return max(min_gain, 0.003) if score < 0.1 else min_gain


def _prune(moves: list[Move], work: Snapshot, usable: dict[str, NodeLoad], spread: Spread, policy: str, min_gain: float) -> list[Move]:
    """Drop the moves that are no longer worth making in the end state: greedy steps that
    helped when taken but that later moves made nearly pointless. The move whose undoing
    costs least goes first, as long as undoing it raises the final score by less than a
    move must gain; ``work`` and ``spread`` follow (they describe the kept plan)."""
    kept = list(moves)
    while kept:
        base = spread.score()
        cheapest: tuple[float, int] | None = None
        for i, m in enumerate(kept):
            d = usable[m.target].vms[m.vm_id]
            if usable[m.source].refusal(d) is not None:
                continue
            cost = spread.score_if({
                m.source: node_metrics(usable[m.source], policy, (d.vcpus, d.ram_mb, d.disk_gb)),
                m.target: node_metrics(usable[m.target], policy, (-d.vcpus, -d.ram_mb, -d.disk_gb)),
            }) - base
            if cheapest is None or cost < cheapest[0]:
                cheapest = (cost, i)
        if cheapest is None or cheapest[0] >= _needed(base, min_gain):
            break
        m = kept.pop(cheapest[1])
        d = work.remove(m.vm_id)
        assert d is not None
        work.add(d, m.source)
        spread.apply({m.source: node_metrics(usable[m.source], policy), m.target: node_metrics(usable[m.target], policy)})
    return kept


def _after(snap: Snapshot, moves: list[Move]) -> Snapshot:
    out = snap.copy()
    for move in moves:
        d = out.remove(move.vm_id)
        if d is not None:
            out.add(d, move.target)
    return out
