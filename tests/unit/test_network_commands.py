"""Networks, ports and addresses in the replicated state: allocation, checks, release."""

from __future__ import annotations

from typing import Any

from cloudd.model.networks import eui64_address, free_address
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm, unchanged


def with_network(**extra: Any) -> Any:
    replica = cluster_with_hypervisor()
    replica.ok("network.create", {"id": "0000aaaa", "name": "lan", "subnet": "10.0.0.0/24", **extra})
    return replica


def test_a_network_gets_gateway_dhcp_address_pool_and_a_free_vni() -> None:
    replica = with_network()
    net = replica.state.networks["0000aaaa"]
    assert (net["gateway"], net["dhcp_ip"], net["pool"]) == ("10.0.0.1", "10.0.0.254", {"start": "10.0.0.2", "end": "10.0.0.253"})
    assert (net["segment"], net["segment_id"], net["owner"], net["dhcp"]) == ("vxlan", 1000, None, True)
    second = replica.ok("network.create", {"id": "0000bbbb", "name": "lan2", "subnet": "10.0.1.0/24", "owner": "bob"})
    assert second["segment_id"] == 1001 and second["owner"] == "bob"


def test_bad_networks_are_refused_and_change_nothing() -> None:
    replica = with_network()
    base = {"id": "0000bbbb", "name": "other"}
    assert "overlaps" in unchanged(replica, "network.create", {**base, "subnet": "10.0.0.128/25"}, "conflict")["message"]
    unchanged(replica, "network.create", {**base, "subnet": "10.0.0.5/24"}, "invalid")  # host bits set
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}, "invalid")
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "pool_start": "10.1.0.200", "pool_end": "10.1.0.100"}, "invalid")
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "pool_end": "10.1.0.254"}, "invalid")  # takes the DHCP address
    unchanged(replica, "network.create", {**base, "subnet": "10.0.0.0/8"}, "invalid")  # too big to walk
    unchanged(replica, "network.create", {**base, "subnet": "127.0.0.0/24"}, "invalid")
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "ipv6_prefix": "2001:db8::/48"}, "invalid")
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "segment": "vlan", "uplink": "eth0"}, "invalid")  # no VLAN id
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "segment": "vlan", "segment_id": 5, "uplink": "eth0", "owner": "bob"}, "forbidden")
    unchanged(replica, "network.create", {**base, "subnet": "10.1.0.0/24", "segment_id": 1000}, "conflict")  # VNI taken
    unchanged(replica, "network.create", {**base, "name": "lan", "subnet": "10.1.0.0/24"}, "conflict")
    # another user's private networks may overlap each other, not a public one
    replica.ok("network.create", {"id": "0000cccc", "name": "mine", "subnet": "192.168.0.0/24", "owner": "bob"})
    replica.ok("network.create", {"id": "0000dddd", "name": "mine", "subnet": "192.168.0.0/24", "owner": "admin"})


def test_vm_create_with_nics_allocates_addresses_and_macs_and_delete_releases_them() -> None:
    replica = with_network(ipv6_prefix="2001:db8:1::/64")
    new_vm(replica, "vm1", networks=[{"network": "0000aaaa"}, {"network": "0000aaaa", "ip": "10.0.0.77"}])
    new_vm(replica, "vm2", networks=[{"network": "0000aaaa"}])
    ports = sorted(replica.state.ports.values(), key=lambda p: (p["vm"], p["slot"]))
    assert [(p["vm"], p["slot"], p["ips"]) for p in ports] == [("vm1", 0, ["10.0.0.2"]), ("vm1", 1, ["10.0.0.77"]), ("vm2", 0, ["10.0.0.3"])]
    assert len({p["mac"] for p in ports}) == 3 and all(p["mac"].startswith("52:54:00:") for p in ports)
    assert ports[0]["ipv6"] == eui64_address("2001:db8:1::/64", ports[0]["mac"])
    # bad NICs: nothing is created, not even the VM
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa", "ip": "10.0.0.77"}]}, "conflict")
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa", "ip": "10.9.0.7"}]}, "invalid")
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa", "ip": "10.0.0.254"}]}, "invalid")
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa", "mac": "01:00:5e:00:00:01"}]}, "invalid")
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa", "mac": ports[0]["mac"]}]}, "conflict")
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000ffff"}]}, "not_found")
    # a network with ports cannot go; once the VM is gone its address is free again
    unchanged(replica, "network.delete", {"id": "0000aaaa"}, "conflict")
    replica.ok("vm.delete", {"id": "vm1"})  # never placed: gone at once
    assert {p["vm"] for p in replica.state.ports.values()} == {"vm2"}
    assert free_address(replica.state, replica.state.networks["0000aaaa"]) == "10.0.0.2"


def test_a_private_network_is_invisible_to_other_users_and_the_pool_lock_holds() -> None:
    replica = with_network()
    replica.ok("network.create", {"id": "0000cccc", "name": "adminnet", "subnet": "10.5.0.0/24", "owner": "admin"})
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000cccc"}]}, "not_found")
    replica.ok("pool.create", {"name": "team", "networks": ["other"], "limits": {"public_ips": 1}})
    replica.ok("user.update", {"name": "bob", "pool": "team"})
    unchanged(replica, "vm.create", {"id": "vm3", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa"}]}, "forbidden")
    replica.ok("pool.update", {"name": "team", "networks": ["lan"]})
    new_vm(replica, "vm3", networks=[{"network": "0000aaaa"}])
    # one public address is the pool's limit: a second NIC or address is refused
    error = unchanged(replica, "vm.nic.attach", {"id": "vm3", "network": "0000aaaa"}, "quota_exceeded")
    assert error["details"]["limit"] == "public_ips"
    (port_id,) = replica.state.ports
    unchanged(replica, "port.ip.assign", {"id": port_id}, "quota_exceeded")


def test_nic_attach_detach_and_extra_addresses() -> None:
    replica = with_network()
    new_vm(replica, "vm1")
    attached = replica.ok("vm.nic.attach", {"id": "vm1", "network": "0000aaaa", "profile": "web"})
    port = attached["port"]
    assert port["profile"] == "web" and port["ips"] == ["10.0.0.2"] and attached["task"]["op"] == "vm.nic.attach"
    assert replica.ok("port.ip.assign", {"id": port["id"], "ip": "10.0.0.9"})["ips"] == ["10.0.0.2", "10.0.0.9"]
    unchanged(replica, "port.ip.assign", {"id": port["id"], "ip": "10.0.0.9"}, "conflict")
    unchanged(replica, "port.ip.assign", {"id": port["id"], "ip": "10.0.0.0"}, "invalid")
    replica.ok("port.ip.unassign", {"id": port["id"], "ip": "10.0.0.2"})
    unchanged(replica, "port.ip.unassign", {"id": port["id"], "ip": "10.0.0.9"}, "conflict")  # the last one stays
    replica.ok("port.update", {"id": port["id"], "profile": "closed"})
    replica.ok("vm.nic.detach", {"id": "vm1", "port": port["id"]})
    assert replica.state.ports == {}
    unchanged(replica, "vm.nic.detach", {"id": "vm1", "port": port["id"]}, "not_found")


def test_a_pool_that_runs_out_of_addresses_says_so() -> None:
    replica = with_network(pool_start="10.0.0.10", pool_end="10.0.0.11")
    new_vm(replica, "vm1", networks=[{"network": "0000aaaa"}, {"network": "0000aaaa"}])
    error = unchanged(replica, "vm.create", {"id": "vm2", "name": "x", "owner": "bob", "flavor": "small", "networks": [{"network": "0000aaaa"}]}, "conflict")
    assert "no free address" in error["message"]


def test_port_reports_keep_counters_of_ports_hosted_by_the_reporting_node() -> None:
    replica = with_network()
    new_vm(replica, "vm1", networks=[{"network": "0000aaaa"}])
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    (port_id,) = replica.state.ports
    counters = {"tx_bytes": 10, "tx_packets": 1, "rx_bytes": 20, "rx_packets": 2, "dropped_packets": 3}
    assert replica.ok("port.report", {"node": "n2", "ports": {port_id: counters}})["ports"] == 0
    assert replica.ok("port.report", {"node": "n1", "ports": {port_id: counters, "ffffffff": counters}})["ports"] == 1
    assert replica.state.ports[port_id]["usage"]["rx_bytes"] == 20


def test_review_findings_lock_by_public_name_pool_range_user_delete_and_fresh_port_ids() -> None:
    replica = with_network(pool_start="10.0.0.10", pool_end="10.0.0.99", dns=["10.0.0.53"])
    # a user takes an address outside the pool (the admin's hosts) only as an admin
    bob = {"user": "bob"}
    error = replica.do("vm.create", {"id": "vm1", "name": "a", "owner": "bob", "flavor": "small", "networks": [{"network": NET_A, "ip": "10.0.0.150"}]}, actor=bob)["error"]
    assert error["code"] == "forbidden" and "outside" in error["message"]
    replica.ok("vm.create", {"id": "vm1", "name": "a", "owner": "bob", "flavor": "small", "networks": [{"network": NET_A, "ip": "10.0.0.150"}]}, actor={"user": "admin"})
    unchanged(replica, "vm.nic.attach", {"id": "vm1", "network": NET_A, "ip": "10.0.0.53"}, "invalid")  # a DNS server's
    # a detached NIC's id (and tap name) is never given to the next one
    first = replica.ok("vm.nic.attach", {"id": "vm1", "network": NET_A})["port"]["id"]
    replica.ok("vm.nic.detach", {"id": "vm1", "port": first})
    assert replica.ok("vm.nic.attach", {"id": "vm1", "network": NET_A})["port"]["id"] != first
    # a pool locked to the public "lan" does not let a private network named lan through
    replica.ok("network.create", {"id": "0000bbbb", "name": "lan", "subnet": "10.9.0.0/24", "owner": "bob"})
    replica.ok("pool.create", {"name": "team", "networks": ["lan"]})
    replica.ok("user.update", {"name": "bob", "pool": "team"})
    unchanged(replica, "vm.nic.attach", {"id": "vm1", "network": "0000bbbb"}, "forbidden")
    replica.ok("vm.nic.attach", {"id": "vm1", "network": NET_A})
    # a user who owns a network cannot be deleted (it would be left with an unknown owner)
    replica.ok("vm.delete", {"id": "vm1"})
    error = unchanged(replica, "user.delete", {"name": "bob"}, "conflict")
    assert "networks" in error["message"]
    # users' private networks do not block a public one
    replica.ok("network.create", {"id": "0000cccc", "name": "pub2", "subnet": "10.9.0.0/25"})


NET_A = "0000aaaa"
