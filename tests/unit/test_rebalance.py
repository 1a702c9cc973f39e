"""The rebalance planner and the allocator's scoring, on built snapshots."""

from __future__ import annotations

from typing import Any

from cloudd.alloc.placement import fit_count, n_plus_one, place
from cloudd.alloc.rebalance import plan_rebalance
from cloudd.alloc.snapshot import AllocSettings, Demand, Snapshot, forecast


def node(name: str, cpus: int = 8, ram_mb: int = 17408, disk_gb: float = 200.0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "roles": ["hypervisor"], "status": "up", "maintenance": False, "inventory": {"cpus": cpus, "ram_mb": ram_mb, "disk_gb": disk_gb}, **extra}


def vm(vm_id: str, where: str, ram_mb: int = 2048, vcpus: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": vm_id, "node": where, "state": "running", "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": 10, **extra}


def test_an_unbalanced_cluster_gets_a_short_plan_that_evens_it_out() -> None:
    nodes = {n: node(n) for n in ("a", "b", "c", "d")}
    vms = [vm(f"v{i}", "a") for i in range(6)] + [vm("w0", "b")]
    snap = Snapshot.build(nodes, vms)
    plan = plan_rebalance(snap, max_moves=10)
    assert plan.score_after < plan.score_before / 3
    assert 3 <= len(plan.moves) <= 5 and all(m.source in ("a", "b") and m.gain > 0 for m in plan.moves)
    assert snap.nodes["a"].alloc_ram_mb == 6 * 2048  # the snapshot itself is untouched
    assert plan.spread_after["ram"] < plan.spread_before["ram"]
    # a balanced cluster: nothing to do
    even = Snapshot.build(nodes, [vm(f"e{n}", n) for n in nodes])
    assert plan_rebalance(even).moves == []


def test_the_planner_keeps_the_hard_rules_and_the_bound() -> None:
    nodes = {n: node(n) for n in ("a", "b", "c")}
    vms = [vm(f"v{i}", "a", placement={"nodes": ["a"]}) for i in range(4)] + [vm("g1", "a", placement={"group": "db"}), vm("g2", "b", placement={"group": "db"})]
    plan = plan_rebalance(Snapshot.build(nodes, vms), max_moves=1)
    assert [(m.vm_id, m.target) for m in plan.moves] == [("g1", "c")]  # pinned ones stay; db never lands on b


def test_n_plus_one_and_fit_counts() -> None:
    nodes = {n: node(n, ram_mb=9216) for n in ("a", "b")}  # 8 GiB usable each
    snap = Snapshot.build(nodes, [vm("x", "a", ram_mb=6144), vm("y", "b", ram_mb=6144)])
    assert n_plus_one(snap) == {"a": ["x"], "b": ["y"]}  # losing either strands its VM
    assert fit_count(snap, Demand("", 1, 1024, 1.0)) == {"a": 2, "b": 2}
    small = Snapshot.build(nodes, [vm("x", "a", ram_mb=2048)])
    assert n_plus_one(small) == {"a": [], "b": []}


def test_policies_and_explanations() -> None:
    busy = node("busy", usage={"ram_used_mb": 15000, "load1": 7.5})
    idle = node("idle", usage={"ram_used_mb": 1000, "load1": 0.1})
    nodes = {"busy": busy, "idle": idle}
    vms = [vm("a1", "idle", ram_mb=8192)]  # idle holds more allocations, busy uses more
    d = Demand("new", 1, 1024, 5.0)
    assert place(Snapshot.build(nodes, vms, AllocSettings(policy="resource")), d).node == "busy"
    decision = place(Snapshot.build(nodes, vms, AllocSettings(policy="usage")), d)
    assert decision.node == "idle"
    explained = decision.to_dict()
    assert [c["node"] for c in explained["candidates"]] == ["idle", "busy"] and set(explained["candidates"][0]) >= {"total", "ram", "cpu", "disk"}
    pinned = place(Snapshot.build(nodes, vms), Demand("p", 1, 1024, 1.0, pinned=("idle",)))
    assert pinned.node == "idle" and "pinned" in pinned.refused["busy"]


def test_the_trend_policy_avoids_a_node_that_is_filling_up() -> None:
    rising = [[t * 60.0, 1.0, 2000 + 200 * t, 10.0] for t in range(20)]  # +200 MiB a minute
    flat = [[t * 60.0, 1.0, 5000, 10.0] for t in range(20)]
    assert forecast(rising, 2, 1800) > 10_000 and abs(forecast(flat, 2, 1800) - 5000) < 1
    nodes = {
        "rising": node("rising", usage={"ram_used_mb": 5800, "load1": 1}, usage_history=rising),
        "flat": node("flat", usage={"ram_used_mb": 5000, "load1": 1}, usage_history=flat),
    }
    d = Demand("new", 1, 1024, 5.0)
    assert place(Snapshot.build(nodes, [], AllocSettings(policy="usage")), d).node == "flat"
    nodes["rising"]["usage"]["ram_used_mb"] = 4000  # uses less now, but not for long
    assert place(Snapshot.build(nodes, [], AllocSettings(policy="usage")), d).node == "rising"
    assert place(Snapshot.build(nodes, [], AllocSettings(policy="trend")), d).node == "flat"


def test_polished_plans_are_no_longer_and_end_more_evenly_with_every_move_worth_making() -> None:
    """The polish keeps the greedy's number of moves (or drops some) and never ends less
    even; undoing any kept move raises the final score; and the moves run in an order in
    which each fits its target when it runs."""
    import random

    from cloudd.alloc.rebalance import Spread, node_metrics

    rng = random.Random(7)
    better = 0
    for _ in range(20):
        nodes = {f"n{i}": node(f"n{i}", cpus=rng.choice((8, 16)), ram_mb=rng.choice((32768, 65536))) for i in range(6)}
        crowded = [f"n{i}" for i in range(2)]
        vms = [vm(f"v{i}", rng.choice(crowded), ram_mb=rng.choice((1024, 2048, 4096, 8192)), vcpus=rng.choice((1, 2, 4))) for i in range(30)]
        snap = Snapshot.build(nodes, vms)
        plan = plan_rebalance(snap, max_moves=40, keep_n_plus_one=False)
        greedy = plan_rebalance(snap, max_moves=40, keep_n_plus_one=False, polish=False)
        assert len(plan.moves) <= len(greedy.moves)
        assert plan.score_after <= greedy.score_after + 1e-9
        better += plan.score_after < greedy.score_after - 1e-6
        end = snap.copy()
        for m in plan.moves:
            d = end.nodes[m.source].vms[m.vm_id]
            assert end.nodes[m.target].refusal(d) is None  # fits when it runs
            end.add(end.remove(m.vm_id), m.target)  # type: ignore[arg-type]
        spread = Spread({n: node_metrics(load, "resource") for n, load in end.nodes.items()})
        base = spread.score()
        assert abs(base - plan.score_after) < 1e-9
        for m in plan.moves:
            d = end.nodes[m.target].vms[m.vm_id]
            undone = spread.score_if({
                m.source: node_metrics(end.nodes[m.source], "resource", (d.vcpus, d.ram_mb, d.disk_gb)),
                m.target: node_metrics(end.nodes[m.target], "resource", (-d.vcpus, -d.ram_mb, -d.disk_gb)),
            })
            assert undone > base or end.nodes[m.source].refusal(d) is not None
            assert abs(m.gain - round(undone - base, 6)) < 1e-6 or end.nodes[m.source].refusal(d) is not None
    assert better >= 5  # the polish finds something on a good share of these clusters


def test_moves_are_ordered_so_each_fits_when_it_runs() -> None:
    """A move into room another move frees must come after it."""
    from cloudd.alloc.rebalance import Move, _feasible_order

    nodes = {n: node(n, ram_mb=9216) for n in ("a", "b", "c")}  # 8 GiB usable each
    snap = Snapshot.build(nodes, [vm("big", "a", ram_mb=6144), vm("s1", "b", ram_mb=2048), vm("s2", "b", ram_mb=4096)])
    moves = [Move("s2", "b", "a", 0.0), Move("big", "a", "c", 0.0)]  # s2 does not fit on a until big leaves
    assert [m.vm_id for m in _feasible_order(snap, moves)] == ["big", "s2"]
    stuck = [Move("s2", "b", "a", 0.0), Move("s1", "b", "a", 0.0)]  # 6 GiB onto a's 2 free
    assert [m.vm_id for m in _feasible_order(snap, stuck)] == ["s1"]
