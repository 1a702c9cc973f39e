"""The simulator itself: Raft's rules, determinism, the invariant check, the data files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sim.simulator import Simulator, run_scenario
from tests.sim.spec import ClusterSpec, load_scenario, parse_cmdlist

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def three_nodes(**sim: float) -> ClusterSpec:
    return ClusterSpec.from_dict(
        {"sim": {"until": 0, **sim}, "nodes": [{"name": "n1"}, {"name": "n2"}, {"name": "n3"}], "vms": [{"id": "web", "node": "n2", "ha": True}]}
    )


def test_the_same_scenario_gives_the_same_log() -> None:
    spec, actions = load_scenario(SCENARIOS / "leader-lost-mid-recovery")
    assert run_scenario(spec, actions).log_text() == run_scenario(spec, actions).log_text()


def test_a_cut_off_leader_believes_it_leads_for_the_fallback_but_commits_nothing() -> None:
    sim = Simulator(three_nodes(leader_fallback=3.0))
    sim.run([(5.0, "isolate", ("n1",))], until=5.0)
    raft = sim.raft
    assert raft.leader is None and raft.is_leader("n1") and raft.can_commit("n1") == "no quorum"
    assert raft.can_commit("n2") == "no leader"
    sim.run([], until=5.5)
    assert raft.leader == "n2" and raft.term == 2 and raft.can_commit("n2") is None
    assert raft.is_leader("n1") and raft.known_term["n1"] == 1
    sim.run([], until=8.0)
    assert not raft.is_leader("n1")
    sim.close()


def test_a_cut_off_node_reads_the_state_it_had_when_it_left() -> None:
    sim = Simulator(three_nodes())
    sim.run([(5.0, "isolate", ("n3",))], until=5.0)
    sim.admin("vm.stop", {"id": "web"})
    assert sim.envs["n3"].vms()["web"]["desired"]["power"] == "running"
    assert sim.envs["n2"].vms()["web"]["desired"]["power"] == "stopped"
    sim.run([(6.0, "heal", ())], until=6.0)
    assert sim.envs["n3"].vms()["web"]["desired"]["power"] == "stopped"
    sim.close()


def test_a_vm_active_on_two_hosts_is_reported() -> None:
    sim = Simulator(three_nodes())
    sim.run([], until=1.0)
    spec = sim.hosts["n2"].compute.defined["web"]
    sim.acting["n3"] = "n3/test"
    sim.hosts["n3"].compute.define(spec)
    sim.hosts["n3"].compute.start("web")
    assert [(v.vm, v.hosts) for v in sim.violations] == [("web", ("n2", "n3"))]
    assert "INVARIANT: VM web is active on n2 and n3 at once" in sim.log_text()
    sim.close()


def test_no_majority_means_no_leader_and_no_commit() -> None:
    sim = Simulator(three_nodes())
    sim.run([(2.0, "power_off", ("n2",)), (2.0, "power_off", ("n3",))], until=3.0)
    assert sim.raft.leader is None and sim.raft.can_commit("n1") == "no quorum"
    assert sim.admin("vm.stop", {"id": "web"}) is None
    sim.close()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ([1, "explode", "n1"], "unknown action"),
        ([1, "power_off"], "power_off takes node"),
        ([1.25, "heal"], "not a multiple of the tick"),
    ],
)
def test_a_bad_cmdlist_entry_is_refused(entry: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cmdlist([entry], 0.5)


def test_a_bad_cluster_is_refused() -> None:
    with pytest.raises(ValueError, match="1, 3 or 5 voters"):
        ClusterSpec.from_dict({"nodes": [{"name": "n1"}, {"name": "n2"}]})
    with pytest.raises(ValueError, match="unknown NodeSpec fields: colour"):
        ClusterSpec.from_dict({"nodes": [{"name": "n1", "colour": "red"}]})
