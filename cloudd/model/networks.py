"""Networks, ports and addresses: pure helpers over the state (no I/O, no clock).

A **network** is a layer-2 segment (a VXLAN VNI over the node underlay, or an 802.1Q VLAN
on a physical uplink) with an IPv4 subnet: a gateway (the router's, outside cloudd), an
address pool VMs get addresses from, and one reserved address, ``dhcp_ip``, that the
DHCP server answers from on every node hosting the network. A network belongs to a user
or is public (``owner`` None; created by an admin).

A **port** is one NIC of a VM on a network: a unique MAC, its IPv4 addresses (the first
one is what DHCP hands out), an optional IPv6 address (SLAAC-style, from the network's
prefix and the MAC), and a firewall profile for inbound traffic. Ports live as long as
their VM: deleting the VM releases them and their addresses.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, Iterable

from cloudd.model.migration import hosts
from cloudd.model.state import State
from cloudd.ops.network import eui64_address  # noqa: F401  (ports' IPv6 addresses; re-exported)

MAC_PREFIX = "52:54:00"  # qemu/KVM's OUI: guests' drivers and tools know it
VNI_FIRST = 1000
VNI_LAST = (1 << 24) - 1


def derived_id(seed: str, taken: Iterable[str] | dict[str, Any]) -> str:
    """An 8-hex-digit id derived from ``seed`` (a request id): the same on every replica,
    never one that is ``taken``."""
    for attempt in range(1000):
        candidate = hashlib.sha256(f"{seed}:{attempt}".encode()).hexdigest()[:8]
        if candidate not in taken:
            return candidate
    raise RuntimeError("no free id")  # 1000 collisions in 2**32: not reachable


def derived_mac(seed: str, taken: set[str]) -> str:
    for attempt in range(1000):
        tail = hashlib.sha256(f"mac:{seed}:{attempt}".encode()).digest()[:3]
        mac = MAC_PREFIX + "".join(f":{b:02x}" for b in tail)
        if mac not in taken:
            return mac
    raise RuntimeError("no free MAC")


def ports_of_vm(state: State, vm_id: str) -> list[dict[str, Any]]:
    """The VM's NICs in the order the guest sees them (``vm["ports"]`` keeps their ids)."""
    vm = state.vms.get(vm_id)
    return [state.ports[p] for p in (vm or {}).get("ports", ()) if p in state.ports]


def ports_on(state: State, network_id: str) -> list[dict[str, Any]]:
    return [p for p in state.ports.values() if p["network"] == network_id]


def addresses_in_use(state: State, network_id: str) -> set[str]:
    return {ip for port in ports_on(state, network_id) for ip in port["ips"]}


def reserved(network: dict[str, Any]) -> set[str]:
    """Addresses no VM may have: the network's and broadcast address, the gateway, the
    DHCP server's and the DNS servers'."""
    net = ipaddress.IPv4Network(network["subnet"])
    out = {str(net.network_address), str(net.broadcast_address), network["dhcp_ip"], *network.get("dns", ())}
    if network.get("gateway"):
        out.add(network["gateway"])
    return out


def free_address(state: State, network: dict[str, Any], also_taken: Iterable[str] = ()) -> str | None:
    """The lowest free address of the network's pool (None when the pool is used up)."""
    used = addresses_in_use(state, network["id"]) | reserved(network) | set(also_taken)
    start = int(ipaddress.IPv4Address(network["pool"]["start"]))
    end = int(ipaddress.IPv4Address(network["pool"]["end"]))
    for value in range(start, end + 1):
        candidate = str(ipaddress.IPv4Address(value))
        if candidate not in used:
            return candidate
    return None


def pool_size(network: dict[str, Any]) -> int:
    return int(ipaddress.IPv4Address(network["pool"]["end"])) - int(ipaddress.IPv4Address(network["pool"]["start"])) + 1


def visible_to(network: dict[str, Any], user: str | None) -> bool:
    """Whether ``user`` (None: an admin) may see and use the network."""
    return user is None or network["owner"] is None or network["owner"] == user


def public_ip_count(state: State, owners: set[str]) -> int:
    """Addresses on public networks held by ports of ``owners``' VMs."""
    count = 0
    for port in state.ports.values():
        if port["owner"] in owners:
            network = state.networks.get(port["network"])
            if network is not None and network["owner"] is None:
                count += len(port["ips"])
    return count


def networks_of_node(state: State, node: str) -> dict[str, dict[str, Any]]:
    """The networks that have a port of a VM assigned to ``node``."""
    out: dict[str, dict[str, Any]] = {}
    for port in state.ports.values():
        vm = state.vms.get(port["vm"])
        if vm is not None and vm["node"] == node and port["network"] in state.networks:
            out[port["network"]] = state.networks[port["network"]]
    return out


def hosting_nodes(state: State, network_id: str) -> set[str]:
    nodes = set()
    for port in ports_on(state, network_id):
        vm = state.vms.get(port["vm"])
        if vm is not None:
            nodes |= hosts(vm)  # a live migration's target hosts the network already
    return nodes
