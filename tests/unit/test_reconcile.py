"""The agent's VM reconcile loop against the fake hypervisor, on a virtual clock."""

from __future__ import annotations

import asyncio

from cloudd.ops.fake_compute import FakeCompute
from cloudd.reconcile import ReconcileSettings, VmReconciler
from tests.fake_env import FakeEnv
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm


def setup(honours_acpi: bool = True, drift: str = "repair"):  # type: ignore[no-untyped-def]
    replica = cluster_with_hypervisor()
    new_vm(replica)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    env = FakeEnv(replica, node_name="n1")
    fake = FakeCompute(honours_acpi=honours_acpi)
    agent = VmReconciler(fake, ReconcileSettings(domain_type="qemu", shutdown_timeout_s=30, drift=drift, vm_dir="/srv/vms"))
    return replica, env, fake, agent


def step(agent: VmReconciler, env: FakeEnv, times: int = 1) -> None:
    for _ in range(times):
        asyncio.run(agent.step(env))


def test_a_placed_vm_is_defined_started_and_reported_running() -> None:
    replica, env, fake, agent = setup()
    step(agent, env)
    vm = replica.state.vms["vm1"]
    assert fake.power["vm1"] == "running" and vm["state"] == "running"
    assert fake.defined["vm1"].domain_type == "qemu" and fake.defined["vm1"].disks[0].path == "/srv/vms/vm1/disk.qcow2"
    assert fake.defined["vm1"].vnc_password == "Abcd1234"
    calls = len(fake.calls)
    step(agent, env, 3)
    assert len(fake.calls) == calls  # converged: nothing more to do
    assert [op for op, _ in env.proposed].count("vm.report") == 1


def test_a_vm_created_stopped_stays_off() -> None:
    replica = cluster_with_hypervisor()
    new_vm(replica, power="stopped")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    env, fake = FakeEnv(replica, node_name="n1"), FakeCompute()
    step(VmReconciler(fake), env)
    assert fake.power["vm1"] == "shut_off" and replica.state.vms["vm1"]["state"] == "stopped"


def test_clean_shutdown_is_forced_after_the_timeout() -> None:
    replica, env, fake, agent = setup(honours_acpi=False)
    step(agent, env)
    replica.ok("vm.shutdown", {"id": "vm1"})
    step(agent, env)
    assert ("shutdown", "vm1") in fake.calls and fake.power["vm1"] == "running"
    env.clock = 29.0
    step(agent, env)
    assert ("destroy", "vm1") not in fake.calls and replica.state.vms["vm1"]["state"] == "stopping"
    env.clock = 31.0
    step(agent, env)
    assert ("destroy", "vm1") in fake.calls and replica.state.vms["vm1"]["state"] == "stopped"


def test_force_stop_start_reset_and_delete() -> None:
    replica, env, fake, agent = setup()
    step(agent, env)
    replica.ok("vm.stop", {"id": "vm1"})
    step(agent, env)
    assert fake.calls[-1] == ("destroy", "vm1") and replica.state.vms["vm1"]["state"] == "stopped"
    replica.ok("vm.start", {"id": "vm1"})
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "running"
    replica.ok("vm.reset", {"id": "vm1"})
    step(agent, env, 2)
    assert fake.resets["vm1"] == 1 and replica.state.vms["vm1"]["desired"]["action"] is None
    replica.ok("vm.delete", {"id": "vm1"})
    step(agent, env)
    assert "vm1" not in fake.defined and "vm1" not in replica.state.vms


def test_drift_is_repaired() -> None:
    replica, env, fake, agent = setup()
    step(agent, env)
    fake.kill("vm1")  # virsh destroy behind our back
    step(agent, env)
    assert fake.power["vm1"] == "running" and replica.state.vms["vm1"]["state"] == "running"
    fake.forget("vm1")  # virsh undefine behind our back
    step(agent, env)
    assert fake.power["vm1"] == "running"


def test_drift_is_only_reported_when_so_configured() -> None:
    replica, env, fake, agent = setup(drift="report")
    step(agent, env)
    fake.kill("vm1")
    step(agent, env)
    assert fake.power["vm1"] == "shut_off"
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "stopped" and vm["observed"]["power"] == "shut_off"


def test_a_hypervisor_error_puts_the_vm_in_error_and_a_start_retries() -> None:
    replica, env, fake, agent = setup()
    fake.fail_next("start", "qemu: could not open disk image")
    step(agent, env)
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "error" and "could not open disk image" in vm["error"]
    step(agent, env, 3)
    assert fake.power["vm1"] == "shut_off" and replica.state.vms["vm1"]["state"] == "error"  # waits for the user
    replica.ok("vm.start", {"id": "vm1"})
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "running"


def test_other_nodes_vms_and_foreign_domains_are_left_alone() -> None:
    replica, env, fake, agent = setup()
    env.node_name = "n2"
    step(agent, env)
    assert fake.calls == [] and "vm1" not in fake.defined


def test_usage_is_sampled_every_interval_with_cpu_percent_from_the_counters() -> None:
    replica, env, fake, agent = setup()
    step(agent, env)  # defines, starts, reports running; first usage sample = the baseline
    assert replica.state.vms["vm1"].get("usage") is None
    env.clock = 11.0
    step(agent, env)  # 10 s later: too early (30 s interval)
    assert replica.state.vms["vm1"].get("usage") is None
    env.clock = 31.0
    step(agent, env)
    usage = replica.state.vms["vm1"]["usage"]
    assert usage["cpu_pct"] == round(1.0 / 31.0 * 100, 1) and usage["ram_used_mb"] == 256  # 1 CPU-second in 31 s
    replica.ok("vm.stop", {"id": "vm1"})
    step(agent, env)
    assert replica.state.vms["vm1"]["usage"] is None


def test_a_stopped_vm_started_behind_our_back_is_stopped_again() -> None:
    replica, env, fake, agent = setup()
    step(agent, env)
    replica.ok("vm.stop", {"id": "vm1"})
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "stopped"
    fake.power["vm1"] = "running"  # virsh start behind our back
    step(agent, env, 3)
    assert fake.power["vm1"] == "shut_off" and fake.calls[-1] == ("destroy", "vm1")
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "stopped" and vm["desired"]["power"] == "stopped"
