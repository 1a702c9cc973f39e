"""``LinkDriver`` over netlink (pyroute2): bridges, VXLAN and 802.1Q segments, taps.

Everything is read back from the kernel on every call, so nothing is remembered between
calls and a device deleted, detached or recreated by hand is repaired by the next
``ensure_network``. Only devices named by ``network.device_name`` with this driver's
prefix are ever created, changed or deleted (a VLAN's uplink is only referred to).

VXLAN uses head-end replication: no multicast group, one all-zero-MAC flood entry per
peer in the VXLAN device's FDB, each naming the peer's address *and* UDP port, so nodes
listening on different ports (even several on one host) reach each other.

Learning (remote MACs learned from received traffic, so unicast goes to one peer) is on
only when every peer listens on this node's own port: the kernel files a learned MAC
under the sender's address and *this device's* port, which is wrong for a peer on
another port. With mixed ports learning is off and unknown unicast is sent to every peer
like broadcast (correct, N copies). A change between the two recreates the device.

The pure parts (request builders, spec checks, the flood-entry diff, name parsing) are
module functions; ``NetlinkLinks`` only reads state, calls them and sends the requests.
One ``NetlinkLinks`` holds one netlink socket: use it from one thread at a time.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from cloudd.ops.network import (
    DEFAULT_PREFIX,
    PREFIX_RE,
    NetworkError,
    NetworkSpec,
    PortSpec,
    check_id,
    device_name,
)

FLOOD_MAC = "00:00:00:00:00:00"
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
MAX_VNI = (1 << 24) - 1
MAX_VLAN_ID = 4094
NO_8021Q = "this kernel has no 802.1Q support"
TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.ENOBUFS, errno.EINTR, errno.ENODEV, errno.EEXIST})

Peer = tuple[str, int]
Request = dict[str, Any]


# --- pure parts ------------------------------------------------------------------------


def check_network_spec(spec: NetworkSpec) -> None:
    """Refuse a spec that cannot name devices or a segment; raises ``NetworkError``."""
    check_id(spec.network_id, "network id")
    device_name(spec.prefix, "b", spec.network_id)
    if spec.mtu is not None and not 68 <= spec.mtu <= 65535:
        raise NetworkError(f"invalid MTU {spec.mtu}")
    if spec.segment == "vxlan":
        if not 1 <= spec.segment_id <= MAX_VNI:
            raise NetworkError(f"invalid VNI {spec.segment_id}")
        _check_port(spec.local_port)
        local = _address(spec.local_ip) if spec.local_ip is not None else None
        for address, port in spec.peers:
            peer = _address(address)
            _check_port(port)
            if local is not None and peer.version != local.version:
                raise NetworkError(f"peer {address} is not of the underlay's address family ({spec.local_ip})")
            if local is not None and (peer, port) == (local, spec.local_port):
                raise NetworkError(f"peer {address}:{port} is this node itself")
    elif spec.segment == "vlan":
        if not 1 <= spec.segment_id <= MAX_VLAN_ID:
            raise NetworkError(f"invalid 802.1Q id {spec.segment_id}")
        if spec.uplink is None or not IFNAME_RE.fullmatch(spec.uplink):
            raise NetworkError(f"invalid uplink {spec.uplink!r}")
    else:
        raise NetworkError(f"unknown segment type {spec.segment!r}")


def bridge_request(spec: NetworkSpec) -> Request:
    """``link("add", **r)`` attributes of the network's bridge (STP off: ports forward at once)."""
    return {"ifname": spec.bridge, "kind": "bridge", "br_stp_state": 0}


def vxlan_request(spec: NetworkSpec) -> Request:
    """``link("add", **r)`` attributes of the VXLAN device: VNI, local address and UDP port,
    learning as ``learns`` says, no group (flooding goes to the FDB's all-zero entries)."""
    check_network_spec(spec)
    request: Request = {
        "ifname": spec.segment_device,
        "kind": "vxlan",
        "vxlan_id": spec.segment_id,
        "vxlan_port": spec.local_port,
        "vxlan_learning": int(learns(spec)),
    }
    if spec.local_ip is not None:
        local = _address(spec.local_ip)
        request["vxlan_local6" if local.version == 6 else "vxlan_local"] = str(local)
    return request


def vlan_request(spec: NetworkSpec, uplink_index: int) -> Request:
    """``link("add", **r)`` attributes of the 802.1Q sub-interface of the uplink (by index)."""
    check_network_spec(spec)
    return {"ifname": spec.segment_device, "kind": "vlan", "link": uplink_index, "vlan_id": spec.segment_id}


def learns(spec: NetworkSpec) -> bool:
    """Whether the VXLAN device may learn remote MACs: only when every peer listens on this
    node's port (the kernel files learned MACs under the device's own port)."""
    return all(port == spec.local_port for _, port in spec.peers)


def desired_peers(spec: NetworkSpec) -> set[Peer]:
    """The flood entries ``spec`` asks for, addresses in canonical form."""
    return {(str(_address(address)), port) for address, port in spec.peers}


def flood_diff(desired: set[Peer], present: set[Peer]) -> tuple[list[Peer], list[Peer]]:
    """(entries to add, entries to delete), each sorted, so that ``present`` becomes ``desired``."""
    return sorted(desired - present), sorted(present - desired)


def owned_id(name: str, prefix: str, kind: str) -> str | None:
    """The id in ``<prefix><kind><8 hex>``, or None when ``name`` is not such a device."""
    match = re.fullmatch(re.escape(prefix) + re.escape(kind) + r"([0-9a-f]{8})", name)
    return match.group(1) if match else None


@dataclass(frozen=True)
class VxlanConfig:
    """What ``ensure_network`` compares on an existing VXLAN device (recreated when it differs)."""

    vni: int
    local: str | None
    port: int
    learning: bool
    group: str | None = None

    @classmethod
    def wanted(cls, spec: NetworkSpec) -> VxlanConfig:
        local = str(_address(spec.local_ip)) if spec.local_ip is not None else None
        return cls(spec.segment_id, local, spec.local_port, learns(spec))


def error_message(action: str, device: str, code: int) -> str:
    name = errno.errorcode.get(code, str(code))
    return f"cannot {action} {device}: {os.strerror(code)} ({name})"


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise NetworkError(f"invalid underlay address {text!r}") from None


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise NetworkError(f"invalid UDP port {port}")


# --- the driver ------------------------------------------------------------------------


class NetlinkLinks:
    """``LinkDriver`` acting in network namespace ``netns`` (None: this process's).

    The namespace must exist (it is never created). ``ipr`` replaces the pyroute2 socket
    (tests pass their own); the driver closes whichever it uses. Errors come out as ``NetworkError``
    naming the device and the errno; ``transient`` is set when a retry may succeed (a
    device appearing or vanishing under us, a busy kernel).
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, netns: str | None = None, *, ipr: Any = None) -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise NetworkError(f"invalid device prefix {prefix!r}")
        self.prefix = prefix
        self.netns = netns
        if ipr is not None:
            self._ipr = ipr
            return
        try:
            # strict_check: the kernel honours dump filters (see _flood_entries);
            # flags=0: pyroute2 would otherwise create a missing namespace
            self._ipr = IPRoute(strict_check=True) if netns is None else IPRoute(netns=netns, flags=0, strict_check=True)
        except FileNotFoundError:
            raise NetworkError(f"network namespace {netns!r} does not exist") from None

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- LinkDriver ---------------------------------------------------------------------

    def ensure_network(self, spec: NetworkSpec) -> None:
        """Bridge up (with ``spec.mtu``), segment device up and in the bridge, VXLAN flood
        entries exactly ``spec.peers``. A segment device of the other type is deleted; one
        whose configuration differs is recreated. Partial failure leaves what was done."""
        self._check_prefix(spec.prefix)
        check_network_spec(spec)
        bridge = self._ensure_bridge(spec)
        other = device_name(spec.prefix, "v" if spec.segment == "vxlan" else "x", spec.network_id)
        self._delete(other)
        if spec.segment == "vxlan":
            segment = self._ensure_vxlan(spec)
        else:
            segment = self._ensure_vlan(spec)
        self._join(segment, bridge, spec.segment_device, spec.mtu)
        if spec.mtu is not None:  # read again: joining a port may have lowered it
            joined = self._get(spec.bridge)
            if joined is not None and joined["mtu"] != spec.mtu:
                with self._netlink("set the MTU of", spec.bridge):
                    self._ipr.link("set", index=joined["index"], mtu=spec.mtu)
        if spec.segment == "vxlan":
            self._sync_flood(spec, segment)

    def remove_network(self, network_id: str) -> None:
        """Delete the network's segment devices (VXLAN and VLAN) and its bridge."""
        names = [device_name(self.prefix, kind, network_id) for kind in "xvb"]
        for name in names:
            self._delete(name)

    def ensure_port(self, spec: PortSpec) -> bool:
        """Put an existing tap in its bridge and up; False when there is no such tap. The
        bridge must exist (``ensure_network`` first), else a transient ``NetworkError``."""
        self._check_prefix(spec.prefix)
        tap = self._get(spec.tap)
        if tap is None:
            return False
        bridge = self._get(spec.bridge)
        if bridge is None:
            raise NetworkError(f"bridge {spec.bridge} of port {spec.port_id} does not exist", transient=True)
        self._join(tap, bridge, spec.tap, None)
        return True

    def remove_port(self, port_id: str) -> None:
        self._delete(device_name(self.prefix, "t", port_id))

    def networks(self) -> set[str]:
        return self._owned("b")

    def ports(self) -> set[str]:
        return self._owned("t")

    # -- steps --------------------------------------------------------------------------

    def _ensure_bridge(self, spec: NetworkSpec) -> dict[str, Any]:
        present = self._get(spec.bridge)
        if present is not None and present["kind"] != "bridge":
            self._delete(spec.bridge)
            present = None
        if present is None:
            present = self._add(bridge_request(spec))
        if not present["up"]:
            with self._netlink("bring up", spec.bridge):
                self._ipr.link("set", index=present["index"], state="up")
        return present

    def _ensure_vxlan(self, spec: NetworkSpec) -> dict[str, Any]:
        present = self._get(spec.segment_device)
        if present is not None and (present["kind"] != "vxlan" or present["vxlan"] != VxlanConfig.wanted(spec)):
            self._delete(spec.segment_device)
            present = None
        return present if present is not None else self._add(vxlan_request(spec))

    def _ensure_vlan(self, spec: NetworkSpec) -> dict[str, Any]:
        assert spec.uplink is not None  # check_network_spec
        uplink = self._get(spec.uplink)
        if uplink is None:
            raise NetworkError(f"uplink {spec.uplink} of {spec.segment_device} does not exist", transient=True)
        present = self._get(spec.segment_device)
        wanted = (uplink["index"], spec.segment_id)
        if present is not None and (present["kind"] != "vlan" or (present["link"], present["vlan_id"]) != wanted):
            self._delete(spec.segment_device)
            present = None
        return present if present is not None else self._add(vlan_request(spec, uplink["index"]))

    def _join(self, link: dict[str, Any], bridge: dict[str, Any], name: str, mtu: int | None) -> None:
        changes: dict[str, Any] = {}
        if link["master"] != bridge["index"]:
            changes["master"] = bridge["index"]
        if not link["up"]:
            changes["state"] = "up"
        if mtu is not None and link["mtu"] != mtu:
            changes["mtu"] = mtu
        if changes:
            with self._netlink(f"join {bridge['name']} with", name):
                self._ipr.link("set", index=link["index"], **changes)

    def _sync_flood(self, spec: NetworkSpec, vxlan: dict[str, Any]) -> None:
        index = vxlan["index"]
        with self._netlink("read the flood entries of", spec.segment_device):
            entries = [e for e in self._fdb_dump(index) if e["ifindex"] == index and e.get_attr("NDA_LLADDR") == FLOOD_MAC]
        if any(e.get_attr("NDA_DST") is None or e.get_attr("NDA_VNI") is not None or e.get_attr("NDA_IFINDEX") is not None for e in entries):
            # a remote we never make (no address, other VNI, other device): drop all flood remotes at once
            with self._netlink("flush the flood entries of", spec.segment_device):
                self._ipr.fdb("del", ifindex=index, lladdr=FLOOD_MAC)
            entries = []
        present = {(str(ipaddress.ip_address(e.get_attr("NDA_DST"))), e.get_attr("NDA_PORT") or spec.local_port) for e in entries}
        adds, removes = flood_diff(desired_peers(spec), present)  # NDA_PORT absent: the device's port
        for address, port in removes:
            with self._netlink(f"delete flood entry {address}:{port} of", spec.segment_device):
                self._ipr.fdb("del", ifindex=index, lladdr=FLOOD_MAC, dst=address, port=port)
        for address, port in adds:
            with self._netlink(f"add flood entry {address}:{port} to", spec.segment_device):
                self._ipr.fdb("append", ifindex=index, lladdr=FLOOD_MAC, dst=address, port=port)

    # -- netlink ------------------------------------------------------------------------

    def _fdb_dump(self, index: int) -> list[Any]:
        """The FDB entries of device ``index``. pyroute2's ``fdb("dump", ifindex=…)`` dumps
        every entry of the namespace and filters in Python (~17 ms at 800 entries); on a
        strict-checking socket the kernel filters on ``ndm_ifindex`` itself (~0.5 ms)."""
        request = ndmsg()
        request["family"] = socket.AF_BRIDGE
        request["ifindex"] = index
        request["header"]["type"] = RTM_GETNEIGH
        request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        return list(self._ipr.nlm_request_batch([request]))

    def _owned(self, kind: str) -> set[str]:
        with self._netlink("list", "links"):
            links = self._ipr.get_links()
        names = (link.get_attr("IFLA_IFNAME") for link in links)
        return {object_id for name in names if (object_id := owned_id(name or "", self.prefix, kind))}

    def _get(self, name: str) -> dict[str, Any] | None:
        """The link called ``name`` as a plain dict, or None when there is none."""
        try:
            messages = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise NetworkError(error_message("read", name, exc.code), exc.code in TRANSIENT_ERRNOS) from None
        return _describe(messages[0])

    def _add(self, request: Request) -> dict[str, Any]:
        name = request["ifname"]
        kind = request["kind"]
        try:
            self._ipr.link("add", **request)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                reason = NO_8021Q if kind == "vlan" else f"this kernel has no {kind} support"
                raise NetworkError(f"cannot create {kind} device {name}: {reason}") from None
            raise NetworkError(error_message(f"create {kind} device", name, exc.code), exc.code in TRANSIENT_ERRNOS) from None
        created = self._get(name)
        if created is None:
            raise NetworkError(f"{name} vanished right after its creation", transient=True)
        return created

    def _delete(self, name: str) -> None:
        """Delete ``name`` (one of our devices) if it exists."""
        try:
            self._ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise NetworkError(error_message("delete", name, exc.code), exc.code in TRANSIENT_ERRNOS) from None

    @contextmanager
    def _netlink(self, action: str, device: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as exc:
            raise NetworkError(error_message(action, device, exc.code), exc.code in TRANSIENT_ERRNOS) from None

    def _check_prefix(self, prefix: str) -> None:
        if prefix != self.prefix:
            raise NetworkError(f"spec prefix {prefix!r} is not this driver's {self.prefix!r}")


def _describe(message: Any) -> dict[str, Any]:
    """The fields of an RTM_NEWLINK message that the driver compares."""
    info = message.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    described: dict[str, Any] = {
        "index": message["index"],
        "name": message.get_attr("IFLA_IFNAME"),
        "kind": kind,
        "master": message.get_attr("IFLA_MASTER"),
        "up": bool(message["flags"] & 1),  # IFF_UP
        "mtu": message.get_attr("IFLA_MTU"),
        "link": message.get_attr("IFLA_LINK"),
        "vlan_id": None,
        "vxlan": None,
    }
    if kind == "vxlan" and data is not None:
        local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6")
        group = data.get_attr("IFLA_VXLAN_GROUP") or data.get_attr("IFLA_VXLAN_GROUP6")
        described["vxlan"] = VxlanConfig(
            vni=data.get_attr("IFLA_VXLAN_ID"),
            local=str(ipaddress.ip_address(local)) if local else None,
            port=data.get_attr("IFLA_VXLAN_PORT"),
            learning=bool(data.get_attr("IFLA_VXLAN_LEARNING")),
            group=group or None,
        )
    elif kind == "vlan" and data is not None:
        described["vlan_id"] = data.get_attr("IFLA_VLAN_ID")
    return described
