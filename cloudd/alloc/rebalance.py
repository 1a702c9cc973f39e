"""Rebalancing: a bounded list of VM moves that evens out the hypervisors (pure).

The cluster's score is, like Ganeti's hbal, a weighted sum of standard deviations across
the usable hypervisors: of the allocated share of RAM and of vCPUs per physical core
(hbal's two balancing terms, weight 1 each), of the allocated share of disk (weight 0.1:
disks even out too, but moves are spent on RAM and CPU first) and, under the usage and
trend policies, of the observed (or forecast) RAM use (weight 1). Lower is better; 0 is
perfectly even.

A plan is made in two steps:

1. **Greedy**, as hbal does it: each round, try moving one VM from one of the fullest
   nodes to one of the emptiest that may take it (hard rules as for placement: room,
   pinning, anti-affinity) and keep the move that lowers the score most, until no move
   helps by at least ``min_gain`` or ``max_moves`` are planned. Once the score is below
   0.05 per unit of weight, a move must gain 0.005 per unit of weight (hbal's rule, 0.01
   below 0.1 for its two terms): no churn for crumbs. Sums and sums of squares are kept
   per metric, so trying a move costs O(1) whatever the cluster's size, and VMs of the
   same shape on one node are tried once.
2. **Polish**: with the number of moves fixed, local search improves the end state: two
   planned moves swap their targets, or a planned move gives way to the best other move,
   as long as the score drops. The same number of migrations ends more evenly: the set
   of moves the greedy took one by one is rarely the best set at its end. A move left
   pointless by this (undoing it would not raise the score) is dropped.

``bench/alloc_vs_hbal.py`` measures the result against hbal itself. The moves come in an
order in which each one fits its target when it runs. When the cluster met N+1 before,
a plan that would break it is cut back until it holds again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cloudd.alloc.placement import n_plus_one
from cloudd.alloc.snapshot import Demand, NodeLoad, Snapshot

METRICS = ("ram", "cpu", "disk", "use")
WEIGHTS = {"ram": 1.0, "cpu": 1.0, "disk": 0.1, "use": 1.0}
EVEN_PER_WEIGHT = 0.05  # below this score per unit of weight the cluster is fairly even ...
GAIN_PER_WEIGHT = 0.005  # ... and a move must gain this much per unit of weight
POLISH_ROUNDS = 4  # local-search passes at most (each pass: swaps, then replacements)
EPSILON = 1e-9


@dataclass(frozen=True)
class Move:
    vm_id: str
    source: str
    target: str
    gain: float  # how much the cluster score would rise without this move (in the final plan)


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
    """The node's shares (0..1+; vCPUs per core) with ``extra`` (vCPUs, RAM MiB, disk GB) added."""
    vcpus, ram, disk = extra
    out = {
        "ram": (load.alloc_ram_mb + ram) / load.cap_ram_mb if load.cap_ram_mb else 0.0,
        "cpu": (load.alloc_vcpus + vcpus) / load.cores,  # hbal's r_cpu
        "disk": (load.alloc_disk_gb + disk) / load.cap_disk_gb if load.cap_disk_gb else 0.0,
    }
    if policy != "resource":
        observed = load.forecast_ram_mb if policy == "trend" else load.used_ram_mb
        out["use"] = (observed + ram) / load.cap_ram_mb if load.cap_ram_mb else 0.0
    return out


class Spread:
    """Sums and sums of squares of each metric over the usable nodes: O(1) updates.
    ``score`` is the weighted sum of the metrics' standard deviations; ``spreads`` the
    unweighted deviations."""

    def __init__(self, values: dict[str, dict[str, float]], weights: dict[str, float] | None = None) -> None:
        self.n = len(values)
        self.values = values
        self.keys: tuple[str, ...] = tuple(next(iter(values.values())).keys()) if values else ()
        w = WEIGHTS if weights is None else weights
        self.weights = {k: w.get(k, 1.0) for k in self.keys}
        self.sum = {k: sum(v[k] for v in values.values()) for k in self.keys}
        self.sq = {k: sum(v[k] ** 2 for v in values.values()) for k in self.keys}

    def weight_sum(self) -> float:
        return sum(self.weights.values())

    def stddev(self, key: str, sum_: float | None = None, sq: float | None = None) -> float:
        s = self.sum[key] if sum_ is None else sum_
        q = self.sq[key] if sq is None else sq
        return math.sqrt(max(0.0, q / self.n - (s / self.n) ** 2)) if self.n else 0.0

    def score(self) -> float:
        return sum(self.weights[k] * self.stddev(k) for k in self.keys)

    def score_if(self, changes: dict[str, dict[str, float]]) -> float:
        """The score if the nodes in ``changes`` had those metric values instead."""
        total = 0.0
        n = self.n
        for k in self.keys:
            s, q = self.sum[k], self.sq[k]
            for node, new in changes.items():
                old = self.values[node][k]
                s += new[k] - old
                q += new[k] ** 2 - old**2
            total += self.weights[k] * math.sqrt(max(0.0, q / n - (s / n) ** 2))
        return total

    def apply(self, changes: dict[str, dict[str, float]]) -> None:
        for node, new in changes.items():
            for k in self.keys:
                old = self.values[node][k]
                self.sum[k] += new[k] - old
                self.sq[k] += new[k] ** 2 - old**2
            self.values[node] = new

    def spreads(self) -> dict[str, float]:
        return {k: round(self.stddev(k), 6) for k in self.keys}


class _Board:
    """The working state of one planning run: the snapshot being changed, its usable
    nodes and their spread. ``relocate`` keeps the three in step."""

    def __init__(self, snap: Snapshot, movable: Callable[[Demand], bool], breadth: int) -> None:
        self.work = snap.copy()
        self.policy = self.work.settings.policy
        self.usable = {n: load for n, load in self.work.nodes.items() if load.usable is None}
        self.spread = Spread({n: node_metrics(load, self.policy) for n, load in self.usable.items()})
        self.movable = movable
        self.breadth = breadth

    def metrics(self, node: str, d: Demand | None = None, sign: int = 1) -> dict[str, float]:
        if d is None:
            return node_metrics(self.usable[node], self.policy)
        return node_metrics(self.usable[node], self.policy, (sign * d.vcpus, sign * d.ram_mb, sign * d.disk_gb))

    def score_of_move(self, d: Demand, source: str, target: str) -> float:
        return self.spread.score_if({source: self.metrics(source, d, -1), target: self.metrics(target, d)})

    def relocate(self, vm_id: str, target: str) -> None:
        source = self.work.where[vm_id]
        d = self.work.remove(vm_id)
        assert d is not None
        self.work.add(d, target)
        self.spread.apply({source: self.metrics(source), target: self.metrics(target)})

    def demand(self, vm_id: str) -> Demand:
        return self.usable[self.work.where[vm_id]].vms[vm_id]

    def needed(self, min_gain: float) -> float:
        """The least gain a move must bring: like hbal, more once the cluster is fairly even."""
        wsum = self.spread.weight_sum()
        if self.spread.score() < EVEN_PER_WEIGHT * wsum:
            return max(min_gain, GAIN_PER_WEIGHT * wsum)
        return min_gain

    def best_move(self, frozen: set[str]) -> tuple[float, str, str, str] | None:
        """The move (new score, vm, source, target) that lowers the score most, among the
        VMs not in ``frozen``, from the ``breadth`` fullest nodes by each metric to the
        ``breadth`` emptiest ones. Ties go to the lowest VM id, then target."""
        spread = self.spread
        sources_set: set[str] = set()
        targets_set: set[str] = set()
        for key in spread.keys:
            ranked = sorted(self.usable, key=lambda n: (spread.values[n][key], n))
            targets_set.update(ranked[: self.breadth])
            sources_set.update(ranked[-self.breadth :])
        targets = sorted(targets_set)
        best: tuple[float, str, str, str] | None = None
        for source in sorted(sources_set):
            for d in _one_per_shape(self.usable[source].vms.values(), frozen, self.movable):
                away = self.metrics(source, d, -1)
                for target in targets:
                    if target == source or self.usable[target].refusal(d) is not None:
                        continue
                    score = spread.score_if({source: away, target: self.metrics(target, d)})
                    if best is None or score < best[0] - 1e-12 or (abs(score - best[0]) <= 1e-12 and (d.vm_id, target) < (best[1], best[3])):
                        best = (score, d.vm_id, source, target)
        return best

    def undo_cost(self, move: Move) -> float | None:
        """How much the score rises if ``move`` is undone (None: its source cannot take
        the VM back)."""
        d = self.demand(move.vm_id)
        if self.usable[move.source].refusal(d) is not None:
            return None
        return self.score_of_move(d, move.target, move.source) - self.spread.score()


def _one_per_shape(vms: Iterable[Demand], frozen: set[str], movable: Callable[[Demand], bool]) -> list[Demand]:
    """The movable VMs of one node, one per shape (VMs alike in size and constraints move
    alike: the lowest id stands for them all)."""
    seen: dict[tuple[object, ...], Demand] = {}
    for d in vms:
        if d.vm_id in frozen or not movable(d):
            continue
        shape = (d.vcpus, d.ram_mb, d.disk_gb, d.group, d.pinned, d.cpu_model)
        kept = seen.get(shape)
        if kept is None or d.vm_id < kept.vm_id:
            seen[shape] = d
    return list(seen.values())


def plan_rebalance(
    snap: Snapshot,
    max_moves: int = 10,
    movable: Callable[[Demand], bool] = lambda d: True,
    min_gain: float = 1e-6,
    breadth: int = 40,
    keep_n_plus_one: bool = True,
    polish: bool = True,
) -> Plan:
    """A plan of at most ``max_moves`` moves (``snap`` is not changed)."""
    plan = Plan()
    board = _Board(snap, movable, breadth)
    if len(board.usable) < 2:
        return plan
    plan.score_before = plan.score_after = board.spread.score()
    plan.spread_before = board.spread.spreads()
    n1_before = not any(n_plus_one(snap).values()) if keep_n_plus_one else True
    plan.n_plus_one_before = n1_before
    moves = _greedy(board, max_moves, min_gain)
    if polish and moves:
        moves = _drop_pointless(board, _polish(board, moves))
    moves = _feasible_order(snap, moves)
    if keep_n_plus_one and n1_before and moves:
        while moves and any(n_plus_one(_after(snap, moves)).values()):
            moves.pop()  # the last moves broke N+1: give them up
    end = _Board(_after(snap, moves), movable, breadth)
    plan.moves = [Move(m.vm_id, m.source, m.target, round(end.undo_cost(m) or 0.0, 6)) for m in moves]
    plan.score_after = end.spread.score()
    plan.spread_after = end.spread.spreads()
    plan.n_plus_one_after = not any(n_plus_one(end.work).values()) if keep_n_plus_one else True
    return plan


def _greedy(board: _Board, max_moves: int, min_gain: float) -> list[Move]:
    moves: list[Move] = []
    moved: set[str] = set()
    for _ in range(max_moves):
        current = board.spread.score()
        best = board.best_move(moved)
        if best is None or current - best[0] < board.needed(min_gain):
            break
        score, vm_id, source, target = best
        board.relocate(vm_id, target)
        moves.append(Move(vm_id, source, target, round(current - score, 6)))
        moved.add(vm_id)
    return moves


def _polish(board: _Board, moves: list[Move]) -> list[Move]:
    """Local search with the number of moves fixed: swap two moves' targets, or replace a
    move by the best other one, while that lowers the score."""
    plan = list(moves)
    for _ in range(POLISH_ROUNDS):
        improved = _swap_targets(board, plan)
        improved = _replace_moves(board, plan) or improved
        if not improved:
            break
    return plan


def _swap_targets(board: _Board, plan: list[Move]) -> bool:
    improved = False
    for i in range(len(plan)):
        for j in range(i + 1, len(plan)):
            a, b = plan[i], plan[j]
            if a.target == b.target or a.source == b.target or b.source == a.target:
                continue
            da, db = board.demand(a.vm_id), board.demand(b.vm_id)
            diff = (db.vcpus - da.vcpus, db.ram_mb - da.ram_mb, db.disk_gb - da.disk_gb)
            if diff == (0, 0, 0):
                continue
            current = board.spread.score()
            new = board.spread.score_if({
                a.target: node_metrics(board.usable[a.target], board.policy, diff),
                b.target: node_metrics(board.usable[b.target], board.policy, (-diff[0], -diff[1], -diff[2])),
            })
            if new >= current - EPSILON:
                continue
            work = board.work
            work.remove(a.vm_id)
            work.remove(b.vm_id)
            fits = board.usable[b.target].refusal(da) is None and board.usable[a.target].refusal(db) is None
            work.add(da, a.target)
            work.add(db, b.target)
            if not fits:
                continue
            board.relocate(a.vm_id, b.target)
            board.relocate(b.vm_id, a.target)
            plan[i] = Move(a.vm_id, a.source, b.target, 0.0)
            plan[j] = Move(b.vm_id, b.source, a.target, 0.0)
            improved = True
    return improved


def _replace_moves(board: _Board, plan: list[Move]) -> bool:
    improved = False
    for i in range(len(plan)):
        m = plan[i]
        if board.undo_cost(m) is None:
            continue
        current = board.spread.score()
        board.relocate(m.vm_id, m.source)
        frozen = {x.vm_id for x in plan if x is not m}
        best = board.best_move(frozen)
        if best is not None and best[0] < current - EPSILON:
            _, vm_id, source, target = best
            board.relocate(vm_id, target)
            plan[i] = Move(vm_id, source, target, 0.0)
            improved = True
        else:
            board.relocate(m.vm_id, m.target)
    return improved


def _drop_pointless(board: _Board, moves: list[Move]) -> list[Move]:
    """Drop the moves whose undoing would not raise the final score (a replacement can
    leave one behind); ``board`` follows."""
    kept = list(moves)
    while kept:
        cheapest: tuple[float, int] | None = None
        for i, m in enumerate(kept):
            cost = board.undo_cost(m)
            if cost is not None and (cheapest is None or cost < cheapest[0]):
                cheapest = (cost, i)
        if cheapest is None or cheapest[0] > EPSILON:
            break
        m = kept.pop(cheapest[1])
        board.relocate(m.vm_id, m.source)
    return kept


def _feasible_order(snap: Snapshot, moves: list[Move]) -> list[Move]:
    """The moves in an order in which each fits its target when it runs (the plan's
    order where possible); a move that never fits on the way is left out."""
    work = snap.copy()
    pending = list(moves)
    ordered: list[Move] = []
    while pending:
        for i, m in enumerate(pending):
            d = work.nodes[m.source].vms.get(m.vm_id)
            if d is not None and work.nodes[m.target].refusal(d) is None:
                work.remove(m.vm_id)
                work.add(d, m.target)
                ordered.append(pending.pop(i))
                break
        else:
            break  # none of the rest fits: drop them
    return ordered


def _after(snap: Snapshot, moves: list[Move]) -> Snapshot:
    out = snap.copy()
    for move in moves:
        d = out.remove(move.vm_id)
        if d is not None:
            out.add(d, move.target)
    return out
