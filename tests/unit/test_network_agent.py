"""The node's network agent and the VM NICs, against the fake host network and hypervisor."""

from __future__ import annotations

import asyncio

from cloudd.network_agent import NetworkAgent
from cloudd.ops.fake_compute import FakeCompute
from cloudd.ops.fake_network import FakeNetwork
from cloudd.ops.network import PortCounters
from cloudd.reconcile import ReconcileSettings, VmReconciler
from tests.fake_env import FakeEnv
from tests.factories import admit
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm

NET = "0000aaaa"


def setup():  # type: ignore[no-untyped-def]
    replica = cluster_with_hypervisor()
    replica.ok("network.create", {"id": NET, "name": "lan", "subnet": "10.0.0.0/24", "dns": ["10.0.0.1"]})
    new_vm(replica, "vm1", networks=[{"network": NET}])
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    env = FakeEnv(replica, node_name="n1")
    host = FakeNetwork()
    agent = NetworkAgent(host.drivers, local_ip="192.0.2.1", usage_interval_s=30)
    compute = FakeCompute()
    vms = VmReconciler(compute, ReconcileSettings(domain_type="qemu", vm_dir="/srv/vms"))
    return replica, env, host, agent, compute, vms


def step(env: FakeEnv, *loops) -> None:  # type: ignore[no-untyped-def]
    for loop in loops:
        asyncio.run(loop.step(env))


def test_a_vm_with_a_nic_gets_bridge_filter_dhcp_and_a_tap_in_its_domain() -> None:
    replica, env, host, agent, compute, vms = setup()
    step(env, agent, vms)
    (port,) = replica.state.ports.values()
    assert host.bridges[NET].segment_id == 1000 and host.bridges[NET].local_ip == "192.0.2.1"
    spec = host.rules[port["id"]]
    assert (spec.mac, spec.ipv4, spec.profile) == (port["mac"], ("10.0.0.2",), "open")
    lease = host.leases[NET]
    assert [(x.mac, x.ip, x.hostname) for x in lease.leases] == [(port["mac"], "10.0.0.2", "web-vm1")]
    assert lease.server_ip == "10.0.0.254" and lease.gateway == "10.0.0.1" and lease.dns == ("10.0.0.1",)
    (nic,) = compute.defined["vm1"].interfaces
    assert (nic.mac, nic.bridge, nic.tap) == (port["mac"], f"cdb{NET}", f"cdt{port['id']}")
    assert replica.state.vms["vm1"]["observed"]["nics"] == [port["mac"]]
    # converged: another pass changes nothing
    calls = len(host.calls)
    step(env, agent)
    assert [c for c in host.calls[calls:] if c[0] != "ensure_base"] == []


def test_what_is_deleted_by_hand_comes_back_and_a_profile_change_rebuilds_the_rules() -> None:
    replica, env, host, agent, compute, vms = setup()
    step(env, agent, vms)
    (port_id,) = replica.state.ports
    host.delete_link(NET)
    host.flush_rules(port_id)
    host.plug_tap(port_id)
    step(env, agent)
    assert NET in host.bridges and port_id in host.rules and host.taps[port_id] == NET
    replica.ok("port.update", {"id": port_id, "profile": "ssh"})
    step(env, agent)
    assert host.rules[port_id].profile == "ssh"


def test_counters_and_errors_reach_the_state() -> None:
    replica, env, host, agent, compute, vms = setup()
    step(env, agent)
    (port_id,) = replica.state.ports
    host.counts[port_id] = PortCounters(tx_bytes=100, tx_packets=1, rx_bytes=200, rx_packets=2, dropped_packets=3)
    step(env, agent)
    assert replica.state.ports[port_id]["usage"] is not None  # the first pass reported
    env.clock = 31.0
    step(env, agent)
    usage = replica.state.ports[port_id]["usage"]
    assert (usage["tx_bytes"], usage["rx_packets"], usage["dropped_packets"]) == (100, 2, 3)
    host.fail_next("apply_ports", "nft: no such table")  # the batch fails, then the port alone
    host.fail_next("apply_port", "nft: no such table")
    replica.ok("port.update", {"id": port_id, "profile": "web"})
    step(env, agent)  # an error is reported at once, not at the next interval
    assert replica.state.ports[port_id]["error"] == "nft: no such table"
    step(env, agent)
    assert replica.state.ports[port_id]["error"] is None and host.rules[port_id].profile == "web"


def test_a_deleted_vm_leaves_nothing_on_the_host() -> None:
    replica, env, host, agent, compute, vms = setup()
    step(env, agent, vms)
    replica.ok("vm.delete", {"id": "vm1"})
    step(env, agent, vms)  # the agent undefines; the VM leaves the state
    step(env, agent)
    assert replica.state.ports == {} and "vm1" not in replica.state.vms
    assert host.bridges == {} and host.rules == {} and host.leases == {}


def test_nics_are_hot_plugged_into_a_running_vm_and_the_task_follows() -> None:
    replica, env, host, agent, compute, vms = setup()
    step(env, agent, vms)
    attached = replica.ok("vm.nic.attach", {"id": "vm1", "network": NET})
    step(env, agent, vms)
    mac = attached["port"]["mac"]
    assert mac in compute.live_nics["vm1"] and ("attach_nic_live", "vm1") in compute.calls
    assert replica.state.tasks[attached["task"]["id"]]["state"] == "succeeded"
    detached = replica.ok("vm.nic.detach", {"id": "vm1", "port": attached["port"]["id"]})
    step(env, agent, vms)
    assert mac not in compute.live_nics["vm1"] and replica.state.tasks[detached["task"]["id"]]["state"] == "succeeded"
    assert attached["port"]["id"] not in host.rules


def test_vxlan_peers_are_the_other_nodes_hosting_the_network() -> None:
    replica, env, host, agent, compute, vms = setup()
    admit(replica, "n2", 2)
    replica.ok("node.register", {"name": "n2", "roles": ["hypervisor"], "inventory": {"cpus": 4, "ram_mb": 9216, "disk_gb": 100.0}, "network": {"underlay": "192.0.2.2:4790"}})
    replica.ok("node.heartbeat", {"name": "n2"})
    replica.ok("node.status_set", {"name": "n2", "status": "up", "observed_seq": 1})
    new_vm(replica, "vm2", networks=[{"network": NET}])
    replica.ok("vm.place", {"id": "vm2", "node": "n2"})
    step(env, agent)
    assert host.bridges[NET].peers == (("192.0.2.2", 4790),)
    assert [x.ip for x in host.leases[NET].leases] == ["10.0.0.2"]  # only this node's VMs
