"""Real bridges and VXLAN segments built by ``NetlinkLinks`` in network namespaces.

Two "hypervisors" (namespaces joined by a veth underlay) host networks A and B; two nodes
sharing one host listen on different UDP ports; "VMs" are namespaces whose NIC's host end is named
like the port's tap. Traffic between VMs crosses hosts over VXLAN (busybox ping: there is
no ping binary), stays inside its network, and survives devices deleted by hand.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cloudd.ops.netlink_links import NO_8021Q, NetlinkLinks
from cloudd.ops.network import NetworkError, NetworkSpec, PortSpec
from tests.e2e.netns import Namespaces, netns  # noqa: F401

pytestmark = [pytest.mark.e2e]

NET_A, NET_B = "0000000a", "0000000b"
VNI = {NET_A: 100, NET_B: 200}
UNDERLAY = {"hv1": ("192.0.2.1", 4789), "hv2": ("192.0.2.2", 4789)}


@dataclass
class Cloud:
    spaces: Namespaces
    hv: dict[str, str] = field(default_factory=dict)  # role -> namespace
    links: dict[str, NetlinkLinks] = field(default_factory=dict)
    vms: int = 0

    def spec(self, host: str, network_id: str, peers: tuple[tuple[str, int], ...] | None = None, **changes: Any) -> NetworkSpec:
        address, port = UNDERLAY[host]
        if peers is None:
            peers = tuple(UNDERLAY[other] for other in UNDERLAY if other != host)
        values: dict[str, Any] = {"network_id": network_id, "segment_id": VNI[network_id], "local_ip": address, "local_port": port, "peers": peers}
        values.update(changes)
        return NetworkSpec(**values)

    def vm(self, host: str, network_id: str, ip: str, links: NetlinkLinks | None = None) -> tuple[str, PortSpec]:
        """A VM namespace with ``nic0`` at ``ip``/24, its tap put in the bridge by ensure_port."""
        links = links or self.links[host]
        self.vms += 1
        port = PortSpec(port_id=f"{self.vms:08x}", network_id=network_id, mac=f"52:54:00:00:00:{self.vms:02x}", prefix=links.prefix)
        ns = self.spaces.add(f"vm{self.vms}")
        self.spaces.veth(ns, "nic0", links.netns, port.tap)
        self.spaces.addr(ns, "nic0", f"{ip}/24")
        assert links.ensure_port(port) is True
        assert links.ensure_port(port) is True  # idempotent
        return ns, port


@pytest.fixture
def cloud(netns: Namespaces) -> Iterator[Cloud]:  # noqa: F811
    made = Cloud(netns)
    for host in UNDERLAY:
        made.hv[host] = netns.add(host)
    netns.veth(made.hv["hv1"], "ul0", made.hv["hv2"], "ul0")
    for host, (address, _) in UNDERLAY.items():
        netns.addr(made.hv[host], "ul0", f"{address}/24")
        made.links[host] = NetlinkLinks(netns=made.hv[host])
    try:
        yield made
    finally:
        for links in made.links.values():
            links.close()


def reaches(spaces: Namespaces, ns: str, ip: str, count: int = 2) -> bool:
    wait = "2" if count > 1 else "1"
    return spaces.run(ns, ["busybox", "ping", "-c", str(count), "-W", wait, ip], check=False).returncode == 0


def flood_entries(spaces: Namespaces, ns: str, device: str, device_port: int) -> set[tuple[str, int]]:
    """The VXLAN device's all-zero FDB entries as iproute2 shows them (port omitted: the device's)."""
    shown = json.loads(spaces.run(ns, ["bridge", "-j", "fdb", "show", "dev", device]).stdout or "[]")
    return {(e["dst"], e.get("port", device_port)) for e in shown if e["mac"] == "00:00:00:00:00:00"}


def learned(spaces: Namespaces, ns: str, device: str, mac: str) -> list[dict[str, Any]]:
    shown = json.loads(spaces.run(ns, ["bridge", "-j", "fdb", "show", "dev", device]).stdout or "[]")
    return [e for e in shown if e["mac"] == mac and "dst" in e]


def link_details(spaces: Namespaces, ns: str, device: str) -> dict[str, Any]:
    shown: list[dict[str, Any]] = json.loads(spaces.run(ns, ["ip", "-j", "-d", "link", "show", device]).stdout)
    return shown[0]


def test_networks_span_hosts_over_vxlan_and_stay_apart(cloud: Cloud) -> None:
    spaces = cloud.spaces
    for host in UNDERLAY:
        for network_id in (NET_A, NET_B):
            cloud.links[host].ensure_network(cloud.spec(host, network_id))
    a1, _ = cloud.vm("hv1", NET_A, "10.9.0.1")
    a2, port_a2 = cloud.vm("hv2", NET_A, "10.9.0.2")
    b1, _ = cloud.vm("hv1", NET_B, "10.9.0.3")
    b2, _ = cloud.vm("hv2", NET_B, "10.9.0.4")

    assert reaches(spaces, a1, "10.9.0.2")
    assert reaches(spaces, b2, "10.9.0.3")
    # a2's MAC was learned on hv1's VXLAN device, behind hv2's underlay address
    vxlan_a = cloud.spec("hv1", NET_A).segment_device
    nic_mac = link_details(spaces, a2, "nic0")["address"]
    assert [e["dst"] for e in learned(spaces, cloud.hv["hv1"], vxlan_a, nic_mac)] == [UNDERLAY["hv2"][0]]
    # same subnet, other network: nothing gets through, neither across hosts nor on one host
    assert not reaches(spaces, b1, "10.9.0.2", count=1)
    assert not reaches(spaces, b1, "10.9.0.1", count=1)

    details = link_details(spaces, cloud.hv["hv1"], vxlan_a)["linkinfo"]["info_data"]
    assert (details["id"], details["local"], details["port"], details["learning"], "group" in details) == (100, "192.0.2.1", 4789, True, False)
    assert flood_entries(spaces, cloud.hv["hv1"], vxlan_a, 4789) == {UNDERLAY["hv2"]}
    assert cloud.links["hv1"].networks() == {NET_A, NET_B} == cloud.links["hv2"].networks()
    assert cloud.links["hv2"].ports() == {port_a2.port_id, "00000004"}
    index = link_details(spaces, cloud.hv["hv1"], vxlan_a)["ifindex"]
    cloud.links["hv1"].ensure_network(cloud.spec("hv1", NET_A))  # nothing to do: nothing recreated
    assert link_details(spaces, cloud.hv["hv1"], vxlan_a)["ifindex"] == index


def test_hosts_listening_on_different_ports_reach_each_other(cloud: Cloud) -> None:
    ports = {"hv1": 4789, "hv2": 4790}
    for host, other in (("hv1", "hv2"), ("hv2", "hv1")):
        peer = (UNDERLAY[other][0], ports[other])
        cloud.links[host].ensure_network(cloud.spec(host, NET_A, peers=(peer,), local_port=ports[host]))
    a1, _ = cloud.vm("hv1", NET_A, "10.9.0.1")
    cloud.vm("hv2", NET_A, "10.9.0.2")
    assert reaches(cloud.spaces, a1, "10.9.0.2")
    details = link_details(cloud.spaces, cloud.hv["hv1"], cloud.spec("hv1", NET_A).segment_device)
    assert details["linkinfo"]["info_data"]["learning"] is False  # learned MACs would carry our own port


def test_devices_deleted_or_detached_by_hand_are_repaired(cloud: Cloud) -> None:
    spaces, hv1, hv2 = cloud.spaces, cloud.hv["hv1"], cloud.hv["hv2"]
    for host in UNDERLAY:
        cloud.links[host].ensure_network(cloud.spec(host, NET_A))
    a1, _ = cloud.vm("hv1", NET_A, "10.9.0.1")
    _, port_a2 = cloud.vm("hv2", NET_A, "10.9.0.2")
    spec1, spec2 = cloud.spec("hv1", NET_A), cloud.spec("hv2", NET_A)
    assert reaches(spaces, a1, "10.9.0.2")

    spaces.run(hv1, ["ip", "link", "del", spec1.segment_device])
    assert not reaches(spaces, a1, "10.9.0.2", count=1)
    cloud.links["hv1"].ensure_network(spec1)
    assert reaches(spaces, a1, "10.9.0.2")
    assert flood_entries(spaces, hv1, spec1.segment_device, 4789) == {UNDERLAY["hv2"]}

    spaces.run(hv2, ["ip", "link", "set", spec2.segment_device, "nomaster"])
    cloud.links["hv2"].ensure_network(spec2)
    assert link_details(spaces, hv2, spec2.segment_device)["master"] == spec2.bridge

    spaces.run(hv2, ["ip", "link", "del", spec2.bridge])  # its ports (VXLAN device, tap) are released
    cloud.links["hv2"].ensure_network(spec2)
    assert cloud.links["hv2"].ensure_port(port_a2)  # what the agent does for every port it hosts
    assert reaches(spaces, a1, "10.9.0.2")


def test_changed_peers_ports_and_vni_are_applied(cloud: Cloud) -> None:
    spaces, hv1 = cloud.spaces, cloud.hv["hv1"]
    links = cloud.links["hv1"]
    stale = ("192.0.2.9", 4789)
    links.ensure_network(cloud.spec("hv1", NET_A, peers=(UNDERLAY["hv2"], stale, ("192.0.2.2", 4791))))
    device = cloud.spec("hv1", NET_A).segment_device
    assert flood_entries(spaces, hv1, device, 4789) == {UNDERLAY["hv2"], stale, ("192.0.2.2", 4791)}
    links.ensure_network(cloud.spec("hv1", NET_A))
    assert flood_entries(spaces, hv1, device, 4789) == {UNDERLAY["hv2"]}
    # an entry made by hand for the device's own port (shown without a port) is also ours to remove
    spaces.run(hv1, ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", device, "dst", "192.0.2.8"])
    links.ensure_network(cloud.spec("hv1", NET_A))
    assert flood_entries(spaces, hv1, device, 4789) == {UNDERLAY["hv2"]}
    # one to another VNI: all flood entries are made again
    spaces.run(hv1, ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", device, "dst", "192.0.2.7", "vni", "55"])
    links.ensure_network(cloud.spec("hv1", NET_A))
    shown = json.loads(spaces.run(hv1, ["bridge", "-j", "fdb", "show", "dev", device]).stdout)
    assert [(e["dst"], e.get("vni")) for e in shown if e["mac"] == "00:00:00:00:00:00"] == [(UNDERLAY["hv2"][0], None)]

    assert link_details(spaces, hv1, device)["linkinfo"]["info_data"]["learning"] is True

    changed = cloud.spec("hv1", NET_A, segment_id=300, local_port=4799, mtu=1400)  # the peer's port is now another
    links.ensure_network(changed)
    details = link_details(spaces, hv1, device)
    data = details["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["learning"], details["mtu"]) == (300, 4799, False, 1400)
    assert details["master"] == changed.bridge and "UP" in details["flags"]
    assert link_details(spaces, hv1, changed.bridge)["mtu"] == 1400
    assert flood_entries(spaces, hv1, device, 4799) == {UNDERLAY["hv2"]}


def test_remove_and_list_only_touch_our_devices(cloud: Cloud) -> None:
    spaces, hv1 = cloud.spaces, cloud.hv["hv1"]
    links = cloud.links["hv1"]
    for network_id in (NET_A, NET_B):
        links.ensure_network(cloud.spec("hv1", network_id))
    _, port_a = cloud.vm("hv1", NET_A, "10.9.0.1")
    _, port_b = cloud.vm("hv1", NET_B, "10.9.0.2")
    for foreign in (["br0", "type", "bridge"], ["cdbnothexx", "type", "bridge"], ["ceb0000000a", "type", "bridge"]):
        spaces.run(hv1, ["ip", "link", "add", *foreign])
    assert links.networks() == {NET_A, NET_B} and links.ports() == {port_a.port_id, port_b.port_id}

    links.remove_network(NET_B)
    links.remove_network(NET_B)  # gone: nothing to do
    assert links.networks() == {NET_A}
    assert links.ports() == {port_a.port_id, port_b.port_id}  # the tap outlives its bridge
    links.remove_port(port_b.port_id)
    links.remove_port(port_b.port_id)
    assert links.ports() == {port_a.port_id} and links.ensure_port(port_b) is False
    links.remove_network(NET_A)
    with pytest.raises(NetworkError, match="does not exist") as caught:  # a tap whose bridge is gone
        links.ensure_port(port_a)
    assert caught.value.transient
    names = {link["ifname"] for link in json.loads(spaces.run(hv1, ["ip", "-j", "link", "show"]).stdout)}
    assert {"br0", "cdbnothexx", "ceb0000000a", "ul0"} <= names
    assert not {n for n in names if n.startswith(("cdb", "cdx"))} - {"cdbnothexx"}
    with NetlinkLinks(prefix="ce", netns=hv1) as other:  # another prefix: its own scheme
        assert other.networks() == {NET_A}


def test_two_nodes_on_one_host_reach_each_other_through_their_ports(netns: Namespaces) -> None:  # noqa: F811
    host = netns.add("hv")
    nodes = {"ca": 4789, "cb": 4790}
    links = {prefix: NetlinkLinks(prefix=prefix, netns=host) for prefix in nodes}
    cloud = Cloud(netns)
    try:
        for prefix, port in nodes.items():
            (other_port,) = (p for x, p in nodes.items() if x != prefix)
            links[prefix].ensure_network(NetworkSpec(NET_A, prefix=prefix, segment_id=100, local_ip="127.0.0.1", local_port=port, peers=(("127.0.0.1", other_port),)))
        vm_a, _ = cloud.vm("hv", NET_A, "10.9.0.1", links["ca"])
        cloud.vm("hv", NET_A, "10.9.0.2", links["cb"])
        assert reaches(netns, vm_a, "10.9.0.2")
        # flood to a port nobody listens on: the other node is out of reach again
        spec = NetworkSpec(NET_A, prefix="ca", segment_id=100, local_ip="127.0.0.1", local_port=4789, peers=(("127.0.0.1", 4791),))
        links["ca"].ensure_network(spec)
        netns.run(vm_a, ["ip", "neigh", "flush", "all"])  # the ARP request must be flooded again
        assert not reaches(netns, vm_a, "10.9.0.2", count=1)
    finally:
        for each in links.values():
            each.close()


def test_vlan_segments_need_802_1q_in_the_kernel(netns: Namespaces) -> None:  # noqa: F811
    host = netns.add("hv")
    netns.veth(host, "up0", host, "up1")  # the uplink (this kernel has no dummy driver either)
    probe = netns.run(host, ["ip", "link", "add", "probe", "link", "up0", "type", "vlan", "id", "9"], check=False)
    spec = NetworkSpec(NET_A, segment="vlan", segment_id=42, uplink="up0")
    with NetlinkLinks(netns=host) as links:
        if probe.returncode != 0:
            with pytest.raises(NetworkError, match=NO_8021Q):
                links.ensure_network(spec)
            return
        links.ensure_network(spec)  # a kernel with 802.1Q: the sub-interface is made and joined
        details = link_details(netns, host, spec.segment_device)
        assert details["linkinfo"]["info_data"]["id"] == 42 and details["master"] == spec.bridge


def test_a_missing_namespace_is_an_error_and_is_not_created(netns: Namespaces) -> None:  # noqa: F811
    name = f"t{netns.tag}none"
    with pytest.raises(NetworkError, match="does not exist"):
        NetlinkLinks(netns=name)
    assert name not in subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
