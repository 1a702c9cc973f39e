"""The network contracts: bridges and their segments, per-port filters, DHCP.

On every hypervisor that hosts a port (a VM NIC) of a network, the node's agent asks:

- a ``LinkDriver`` for the network's bridge and its segment (a VXLAN device over the node
  underlay, or an 802.1Q sub-interface of a physical uplink) and for the port's tap to be a
  member of that bridge (libvirt creates and enslaves the tap; the driver repairs it);
- a ``FilterDriver`` for the port's nftables rules (bridge family): the VM may only send
  from its MAC and its assigned addresses, and receives what its firewall profile allows;
- a ``DhcpDriver`` for a dnsmasq that hands out static leases only (MAC → address) on
  that node's bridge of the network.

Every method is idempotent (asking for what exists does nothing, removing what is gone
does nothing) and raises ``NetworkError`` (``transient=True`` when retrying may help).
Everything that becomes a device name, an nft identifier or a dnsmasq argument is built
from the validated specs below, never from free text, and no shell is ever involved.

Device names are ``<prefix><kind><id>`` with ids of 8 lowercase hex digits and a prefix of
at most 4 characters, so every name fits Linux's 15 characters:
``b`` bridge, ``x`` VXLAN device, ``v`` VLAN sub-interface, ``t`` a port's tap, ``d`` the
host end of the DHCP server's veth. The DHCP server of a network runs in its own network
namespace ``<prefix>dhcp-<network id>`` so the host never gets an address in (or a route
to) a VM network.

Implementations: ``netlink_links.NetlinkLinks`` (pyroute2), ``nft_filter.NftFilter``,
``dhcp.DnsmasqDhcp``; ``fake_network.FakeNetwork`` (all three) for the simulator and unit
tests.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence

NET_ID_RE = re.compile(r"^[0-9a-f]{8}$")
PORT_ID_RE = NET_ID_RE
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,3}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
PROFILES = ("open", "web", "ssh", "closed")
DEFAULT_PREFIX = "cd"
VXLAN_PORT = 4789


class NetworkError(Exception):
    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def check_id(value: str, what: str = "id") -> str:
    if not NET_ID_RE.fullmatch(value):
        raise NetworkError(f"invalid {what} {value!r}")
    return value


def check_mac(mac: str) -> str:
    """A unicast MAC in lowercase colon form; anything else is refused."""
    mac = mac.lower()
    if not MAC_RE.fullmatch(mac):
        raise NetworkError(f"invalid MAC address {mac!r}")
    if int(mac[:2], 16) & 1:
        raise NetworkError(f"{mac} is a multicast MAC address")
    if mac == "00:00:00:00:00:00":
        raise NetworkError("the all-zero MAC address is not a port's address")
    return mac


def device_name(prefix: str, kind: str, object_id: str) -> str:
    """``<prefix><kind><id>``: the name of a device cloudd owns (see the module doc)."""
    if not PREFIX_RE.fullmatch(prefix) or kind not in "bxvtd" or len(kind) != 1:
        raise NetworkError(f"invalid device prefix {prefix!r} or kind {kind!r}")
    return f"{prefix}{kind}{check_id(object_id)}"


def dhcp_namespace(prefix: str, network_id: str) -> str:
    return f"{prefix}dhcp-{check_id(network_id, 'network id')}"


@dataclass(frozen=True)
class NetworkSpec:
    """One network's bridge and segment on one node."""

    network_id: str
    prefix: str = DEFAULT_PREFIX
    segment: str = "vxlan"  # "vxlan" or "vlan"
    segment_id: int = 1  # VNI (1..16777215) or 802.1Q id (1..4094)
    uplink: str | None = None  # vlan: the physical interface carrying the tagged frames
    local_ip: str | None = None  # vxlan: this node's underlay address
    local_port: int = VXLAN_PORT  # vxlan: the UDP port this node listens on
    peers: tuple[tuple[str, int], ...] = ()  # vxlan: (underlay address, port) of the other nodes hosting the network
    mtu: int | None = None  # None: leave the MTU as it is (a new VXLAN device gets 1500: set 1450 on a 1500 underlay)

    @property
    def bridge(self) -> str:
        return device_name(self.prefix, "b", self.network_id)

    @property
    def segment_device(self) -> str:
        return device_name(self.prefix, "x" if self.segment == "vxlan" else "v", self.network_id)


@dataclass(frozen=True)
class PortSpec:
    """One VM NIC: its tap on the network's bridge, and what it may send and receive."""

    port_id: str
    network_id: str
    mac: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()  # addresses (the link-local one derived from the MAC is always allowed)
    profile: str = "open"
    prefix: str = DEFAULT_PREFIX

    @property
    def tap(self) -> str:
        return device_name(self.prefix, "t", self.port_id)

    @property
    def bridge(self) -> str:
        return device_name(self.prefix, "b", self.network_id)


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: str
    hostname: str | None = None


@dataclass(frozen=True)
class DhcpSpec:
    """A network's DHCP service on one node: static leases only."""

    network_id: str
    subnet: str  # e.g. "10.1.0.0/24"
    server_ip: str  # the DHCP server's own address in the subnet (never given to a VM)
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    leases: tuple[Lease, ...] = ()
    lease_seconds: int = 3600
    mtu: int | None = None
    prefix: str = DEFAULT_PREFIX

    @property
    def bridge(self) -> str:
        return device_name(self.prefix, "b", self.network_id)

    @property
    def namespace(self) -> str:
        return dhcp_namespace(self.prefix, self.network_id)

    @property
    def host_veth(self) -> str:
        return device_name(self.prefix, "d", self.network_id)


@dataclass
class PortCounters:
    """Cumulative nftables counters of one port (from the VM's point of view)."""

    tx_bytes: int = 0  # sent by the VM and let through
    tx_packets: int = 0
    rx_bytes: int = 0  # delivered to the VM
    rx_packets: int = 0
    dropped_packets: int = 0  # sent by the VM and dropped (spoofing) or refused inbound by its profile


class LinkDriver(Protocol):
    prefix: str

    def ensure_network(self, spec: NetworkSpec) -> None:
        """Make the bridge and its segment device exist, be up and be joined; for VXLAN, make
        the flood entries name exactly ``spec.peers``. Repairs a link deleted by hand."""

    def remove_network(self, network_id: str) -> None:
        """Delete the bridge and its segment device."""

    def ensure_port(self, spec: PortSpec) -> bool:
        """Make the tap (when it exists: libvirt creates it) a member of the port's bridge and
        up. False when there is no such tap (the VM is not running here)."""

    def remove_port(self, port_id: str) -> None:
        """Delete a leftover tap of a port that is no longer here (libvirt removes its own)."""

    def networks(self) -> set[str]:
        """Ids of the networks whose bridge exists on this node (devices with our prefix)."""

    def ports(self) -> set[str]:
        """Ids of the ports whose tap exists on this node."""


class FilterDriver(Protocol):
    prefix: str

    def ensure_base(self) -> None:
        """Create the table, its maps and hooks when they are missing (keeps the ports)."""

    def apply_port(self, spec: PortSpec) -> None:
        """Rebuild the port's rules in one nftables transaction: either the new rules are in
        place or the old ones still are. Keeps the port's counters."""

    def apply_ports(self, specs: Sequence[PortSpec]) -> None:
        """``apply_port`` for many ports in one transaction: all of them or none."""

    def remove_port(self, port_id: str) -> None: ...

    def remove_ports(self, port_ids: Iterable[str]) -> None:
        """``remove_port`` for many ports at once."""

    def ports(self) -> set[str]:
        """Ids of the ports that have rules."""

    def counters(self) -> dict[str, PortCounters]: ...


class DhcpDriver(Protocol):
    prefix: str

    def ensure(self, spec: DhcpSpec) -> None:
        """Run the network's dnsmasq with exactly ``spec.leases`` (reloaded in place when only
        the leases changed), its namespace and veth in the bridge included."""

    def remove(self, network_id: str) -> None:
        """Stop the network's dnsmasq and remove its namespace and veth."""

    def networks(self) -> set[str]:
        """Ids of the networks whose DHCP server runs on this node."""


@dataclass
class NetworkDrivers:
    """The three drivers a node's network agent works with."""

    links: LinkDriver
    filters: FilterDriver
    dhcp: DhcpDriver
    notes: list[str] = field(default_factory=list)


def eui64_address(prefix: str, mac: str) -> str:
    """The address a guest forms from a /64 ``prefix`` and its MAC (modified EUI-64,
    RFC 4291)."""
    octets = [int(part, 16) for part in mac.lower().split(":")]
    octets[0] ^= 0x02
    eui = bytes(octets[:3] + [0xFF, 0xFE] + octets[3:])
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Network(prefix).network_address) | int.from_bytes(eui, "big")))


def link_local_ipv6(mac: str) -> str:
    """The EUI-64 link-local address a guest derives from its MAC."""
    return eui64_address("fe80::/64", check_mac(mac))
