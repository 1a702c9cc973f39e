"""The pure parts of the netlink link driver, and its refusals before any netlink call."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from cloudd.ops.netlink_links import (
    NO_8021Q,
    NetlinkLinks,
    VxlanConfig,
    bridge_request,
    check_network_spec,
    desired_peers,
    error_message,
    flood_diff,
    learns,
    owned_id,
    vlan_request,
    vxlan_request,
)
from cloudd.ops.network import NetworkError, NetworkSpec, PortSpec

NET = "0a1b2c3d"


def vxlan(**changes: Any) -> NetworkSpec:
    values: dict[str, Any] = {"network_id": NET, "segment_id": 100, "local_ip": "192.0.2.1", "local_port": 4790, "peers": (("192.0.2.2", 4789),)}
    values.update(changes)
    return NetworkSpec(**values)


def vlan(**changes: Any) -> NetworkSpec:
    values: dict[str, Any] = {"network_id": NET, "segment": "vlan", "segment_id": 42, "uplink": "eth1"}
    values.update(changes)
    return NetworkSpec(**values)


class NoNetlink:
    """Any use of the socket fails the test (closing is allowed)."""

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"netlink was called ({name}) before the input was checked")


class Attrs(dict[str, Any]):
    def get_attr(self, name: str) -> Any:
        return self.get(name)


class KernelWithout8021q:
    """Links by name, as netlink shows them; creating a VLAN is not supported."""

    def __init__(self, *names: str) -> None:
        self.links: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        for name in names:
            self.link("add", ifname=name, kind="veth")

    def link(self, command: str, **kwargs: Any) -> list[Any]:
        self.calls.append((command, kwargs))
        name = kwargs.get("ifname") or next((n for n, v in self.links.items() if v["index"] == kwargs.get("index")), "")
        if command == "add":
            if kwargs["kind"] == "vlan":
                raise NetlinkError(errno.EOPNOTSUPP)
            self.links[name] = {"index": len(self.links) + 1, "kind": kwargs["kind"], "up": False, "master": None}
            return []
        if name not in self.links:
            raise NetlinkError(errno.ENODEV)
        link = self.links[name]
        if command == "del":
            del self.links[name]
        elif command == "set":
            link["up"] = link["up"] or kwargs.get("state") == "up"
            link["master"] = kwargs.get("master", link["master"])
        info = Attrs(IFLA_INFO_KIND=link["kind"])
        return [Attrs(index=link["index"], flags=int(link["up"]), IFLA_IFNAME=name, IFLA_MTU=1500, IFLA_MASTER=link["master"], IFLA_LINKINFO=info)]

    def close(self) -> None:
        pass


def test_vxlan_request_names_vni_local_address_port_and_learning_without_group() -> None:
    assert vxlan_request(vxlan(peers=(("192.0.2.2", 4790), ("192.0.2.3", 4790)))) == {
        "ifname": "cdx0a1b2c3d",
        "kind": "vxlan",
        "vxlan_id": 100,
        "vxlan_port": 4790,
        "vxlan_learning": 1,
        "vxlan_local": "192.0.2.1",
    }


def test_learning_only_when_every_peer_listens_on_our_port() -> None:
    assert learns(vxlan(peers=())) and learns(vxlan(peers=(("192.0.2.2", 4790),)))
    mixed = vxlan(peers=(("192.0.2.2", 4790), ("192.0.2.3", 4789)))
    assert not learns(mixed) and vxlan_request(mixed)["vxlan_learning"] == 0
    assert VxlanConfig.wanted(mixed).learning is False


def test_vxlan_request_over_an_ipv6_underlay_and_without_a_local_address() -> None:
    request = vxlan_request(vxlan(local_ip="2001:DB8::0:1", peers=(("2001:db8::2", 4789),)))
    assert request["vxlan_local6"] == "2001:db8::1" and "vxlan_local" not in request
    assert "vxlan_local" not in vxlan_request(vxlan(local_ip=None)) and "vxlan_local6" not in vxlan_request(vxlan(local_ip=None))


def test_vlan_request_is_a_sub_interface_of_the_uplink_index() -> None:
    assert vlan_request(vlan(), uplink_index=7) == {"ifname": "cdv0a1b2c3d", "kind": "vlan", "link": 7, "vlan_id": 42}


def test_bridge_request() -> None:
    assert bridge_request(vxlan(prefix="ab")) == {"ifname": "abb0a1b2c3d", "kind": "bridge", "br_stp_state": 0}


@pytest.mark.parametrize(
    "spec",
    [
        vxlan(network_id="0A1B2C3D"),
        vxlan(network_id="0a1b2c3"),
        vxlan(network_id="../../x1"),
        vxlan(prefix="toolong"),
        vxlan(segment_id=0),
        vxlan(segment_id=1 << 24),
        vxlan(local_port=0),
        vxlan(local_ip="192.0.2.300"),
        vxlan(peers=(("not-an-address", 4789),)),
        vxlan(peers=(("192.0.2.2", 70000),)),
        vxlan(peers=(("2001:db8::2", 4789),)),  # not the underlay's family
        vxlan(peers=(("192.0.2.1", 4790),)),  # this node itself
        vxlan(mtu=10),
        vxlan(segment="gre"),
        vlan(segment_id=4095),
        vlan(uplink=None),
        vlan(uplink="eth1; rm -rf /"),
        vlan(uplink="a-very-long-ifname"),
    ],
)
def test_bad_specs_are_refused_before_any_netlink_call(spec: NetworkSpec) -> None:
    with pytest.raises(NetworkError):
        check_network_spec(spec)
    with pytest.raises(NetworkError):
        NetlinkLinks(ipr=NoNetlink()).ensure_network(spec)


def test_bad_ids_and_prefixes_are_refused_before_any_netlink_call() -> None:
    links = NetlinkLinks(ipr=NoNetlink())
    for bad in ("", "0a1b2c3", "0a1b2c3d0", "0A1B2C3D", "eth0", "0a1b2c3d; x"):
        with pytest.raises(NetworkError):
            links.remove_network(bad)
        with pytest.raises(NetworkError):
            links.remove_port(bad)
        with pytest.raises(NetworkError):
            links.ensure_port(PortSpec(port_id=bad, network_id=NET, mac="52:54:00:00:00:01"))
    with pytest.raises(NetworkError, match="prefix"):
        links.ensure_port(PortSpec(port_id=NET, network_id=NET, mac="52:54:00:00:00:01", prefix="zz"))
    with pytest.raises(NetworkError, match="prefix"):
        NetlinkLinks(prefix="Bad!", ipr=NoNetlink())


def test_a_kernel_refusing_802_1q_gives_a_clear_error() -> None:
    kernel = KernelWithout8021q("eth1")
    with pytest.raises(NetworkError, match=NO_8021Q) as caught:
        NetlinkLinks(ipr=kernel).ensure_network(vlan())
    assert "cdv0a1b2c3d" in str(caught.value) and not caught.value.transient
    assert ("add", {"ifname": "cdv0a1b2c3d", "kind": "vlan", "link": 1, "vlan_id": 42}) in kernel.calls
    assert kernel.links["cdb0a1b2c3d"]["up"]  # the bridge was made before the segment failed


def test_a_missing_uplink_is_a_transient_error() -> None:
    with pytest.raises(NetworkError, match="uplink eth1") as caught:
        NetlinkLinks(ipr=KernelWithout8021q()).ensure_network(vlan())
    assert caught.value.transient


def test_flood_diff_adds_missing_peers_and_removes_stale_ones() -> None:
    desired = {("192.0.2.2", 4789), ("192.0.2.3", 4790)}
    present = {("192.0.2.2", 4789), ("192.0.2.9", 4789), ("192.0.2.3", 4789)}
    assert flood_diff(desired, present) == ([("192.0.2.3", 4790)], [("192.0.2.3", 4789), ("192.0.2.9", 4789)])
    assert flood_diff(desired, desired) == ([], [])
    assert flood_diff(set(), present) == ([], sorted(present))
    assert flood_diff(desired, set()) == (sorted(desired), [])


def test_desired_peers_are_canonical_and_one_per_address_and_port() -> None:
    spec = vxlan(local_ip="2001:db8::1", peers=(("2001:DB8:0::2", 4789), ("2001:db8::2", 4789), ("2001:db8::2", 4790)))
    assert desired_peers(spec) == {("2001:db8::2", 4789), ("2001:db8::2", 4790)}


def test_the_wanted_vxlan_configuration() -> None:
    spec = vxlan(peers=(("192.0.2.2", 4790),))
    assert VxlanConfig.wanted(spec) == VxlanConfig(vni=100, local="192.0.2.1", port=4790, learning=True)
    assert VxlanConfig.wanted(spec) != VxlanConfig(vni=100, local="192.0.2.1", port=4790, learning=True, group="239.1.1.1")


@pytest.mark.parametrize(
    ("name", "kind", "expected"),
    [
        ("cdb0a1b2c3d", "b", NET),
        ("cdt0a1b2c3d", "t", NET),
        ("cdt0a1b2c3d", "b", None),
        ("cdb0a1b2c3", "b", None),
        ("cdb0A1B2C3D", "b", None),
        ("xcdb0a1b2c3d", "b", None),
        ("cdxb0a1b2c3d", "b", None),  # another driver's prefix "cdx"
        ("eth0", "b", None),
        ("", "t", None),
    ],
)
def test_only_names_of_the_prefix_scheme_are_ours(name: str, kind: str, expected: str | None) -> None:
    assert owned_id(name, "cd", kind) == expected


def test_error_messages_name_the_device_and_the_errno() -> None:
    assert error_message("delete", "cdb0a1b2c3d", errno.EBUSY) == "cannot delete cdb0a1b2c3d: Device or resource busy (EBUSY)"
