"""Per-port packet filters with nftables (bridge family): the ``FilterDriver`` of a node.

Everything lives in one table, ``bridge <prefix>filter``::

    map out_ports  ifname : verdict   tap -> goto p<port>_out   (frames sent by the VM)
    map in_ports   ifname : verdict   tap -> goto p<port>_in    (frames sent to the VM)
    chain prerouting   hook prerouting   iifname vmap @out_ports; iifname "<prefix>t*" drop
    chain postrouting  hook postrouting  oifname vmap @in_ports;  oifname "<prefix>t*" drop
    chain forward      hook forward      DHCP server veth (<prefix>d…) <-> segment (<prefix>x…, <prefix>v…): drop
    counters c<port>_tx, c<port>_rx, c<port>_drop

``prerouting`` sees every frame a tap brings into the bridge, whether it is forwarded to
another port or delivered to the host; ``postrouting`` sees every frame the bridge hands to
a tap (each copy of a flooded frame included). A tap with our prefix but no rules yet is
fail-closed: nothing passes until ``apply_port`` has run for it.

``apply_port`` is one ``nft -f -`` script, so one kernel transaction: the base objects are
added when missing, the port's chains are flushed and refilled and its map elements added;
either all of it applies or nothing does. The counters are named objects the rules refer to,
so rebuilding the chains keeps them.

Outbound (anti-spoofing), in order: a source MAC other than the port's is dropped; ARP must
be Ethernet/IPv4 with the port's MAC as sender and one of its IPv4 addresses (or 0.0.0.0, a
probe) as sender IP; IPv4 from 0.0.0.0 passes only as a DHCP request (udp 68 -> 67), DHCP
server replies (udp sport 67) are dropped, other IPv4 needs one of the port's addresses as
source; IPv6: router advertisements and redirects are dropped, a neighbour advertisement
must name one of the port's addresses as target (nft 1.0.6 has no ``icmpv6 taddr``: the
raw ``@th,64,128``), a neighbour solicitation/advertisement whose first option is a
link-layer address must carry the port's MAC, ``::`` may only send neighbour/router
solicitations and MLD reports (DAD), DHCPv6 server replies (udp sport 547) are dropped,
other IPv6 needs one of the port's addresses or its EUI-64 link-local one as source. Any
other ethertype is dropped. Accepted frames count on ``tx``, dropped ones on ``drop``.

Inbound profiles. Conntrack (``ct state``) is not available in the bridge family on our
kernels, so the profiles are stateless approximations:

- ``open``: everything is delivered;
- ``web`` / ``ssh`` / ``closed``: ARP, ICMP errors and echo replies, ICMPv6 errors, echo
  replies, neighbour discovery, router advertisements and MLD queries, DHCP (udp 67 -> 68)
  and DHCPv6 (547 -> 546) replies, UDP from source ports 53 and 123 (DNS and NTP replies),
  non-first IPv4 fragments (useless without their first fragment, which is judged), TCP
  segments that do not open a connection (``tcp flags & (syn|ack) != syn``), and new TCP
  connections to 22, 80, 443 (``web``), 22 (``ssh``) or none (``closed``) are delivered;
  everything else (other UDP, echo requests, other ethertypes) is dropped.

The price of statelessness: anyone may send the VM non-SYN TCP segments (the VM's stack
answers them with a RST) and UDP from ports 53/123, and a UDP service of the VM cannot be
reached unless the profile is ``open``. Delivered frames count on ``rx``, refused ones on
``drop``.

Everything that reaches a script is validated first (ids, MAC, addresses through
``ipaddress``, profile); an invalid spec raises ``NetworkError`` before nft runs. nft is run
with argument lists (``ip netns exec <ns> nft ...`` for another namespace), scripts go
through stdin, state is read with ``nft -j``. Nothing is remembered between calls.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cloudd.ops.network import (
    DEFAULT_PREFIX,
    PREFIX_RE,
    PROFILES,
    NetworkError,
    PortCounters,
    PortSpec,
    check_id,
    check_mac,
    link_local_ipv6,
)

Runner = Callable[[list[str], str | None], str]
"""Runs an argv list (stdin text or None) and returns its stdout; raises NetworkError."""

NETNS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
PORT_CHAIN_RE = re.compile(r"^p([0-9a-f]{8})_(out|in)$")
PORT_COUNTER_RE = re.compile(r"^c([0-9a-f]{8})_(tx|rx|drop)$")
OUT_MAP, IN_MAP = "out_ports", "in_ports"
PROFILE_PORTS = {"web": (22, 80, 443), "ssh": (22,), "closed": ()}
ICMP_IN = ("echo-reply", "destination-unreachable", "time-exceeded", "parameter-problem")
ICMPV6_IN = (
    "destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem", "echo-reply",
    "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert", "mld-listener-query",
)
TRANSIENT_ERRORS = ("Device or resource busy", "Resource temporarily unavailable", "Interrupted system call")


def run_nft(argv: list[str], stdin: str | None = None, timeout: float = 30.0) -> str:
    """The default runner: no shell; NetworkError with nft's message when it fails."""
    try:
        done = subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise NetworkError(f"{argv[0]} is not installed on this node") from None
    except subprocess.CalledProcessError as exc:
        message = (exc.stderr or exc.stdout or "").strip()
        transient = any(text in message for text in TRANSIENT_ERRORS)
        raise NetworkError(f"nft failed: {message[:600]}", transient=transient) from None
    except subprocess.TimeoutExpired:
        raise NetworkError("nft timed out", transient=True) from None
    return done.stdout


def _ipv4(text: object) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(text if isinstance(text, str) else "")
    except ValueError:
        raise NetworkError(f"invalid IPv4 address {text!r}") from None
    if addr.is_unspecified or addr.is_multicast or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise NetworkError(f"{addr} is not a port's address")
    return addr


def _ipv6(text: object) -> ipaddress.IPv6Address:
    try:
        addr = ipaddress.IPv6Address(text if isinstance(text, str) else "")
    except ValueError:
        raise NetworkError(f"invalid IPv6 address {text!r}") from None
    if addr.scope_id is not None or addr.is_unspecified or addr.is_multicast:
        raise NetworkError(f"{text!r} is not a port's address")
    return addr


def _set(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


class NftFilter:
    """``FilterDriver`` on nftables; see the module doc for the rules and their limits."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, netns: str | None = None, runner: Runner | None = None) -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise NetworkError(f"invalid prefix {prefix!r}")
        if netns is not None and not NETNS_RE.fullmatch(netns):
            raise NetworkError(f"invalid network namespace name {netns!r}")
        self.prefix = prefix
        self.netns = netns
        self.table = f"{prefix}filter"
        self._runner: Runner = runner or run_nft

    # -- the FilterDriver contract ---------------------------------------------------------

    def ensure_base(self) -> None:
        """Create the table, maps and hooked chains when missing; the ports stay as they are."""
        self._apply(self._base_script())

    def apply_port(self, spec: PortSpec) -> None:
        """Rebuild the port's rules in one transaction (base objects included); keeps its
        counters. Raises NetworkError, before running anything, when the spec is invalid."""
        script = self._base_script() + self.port_script(spec)
        try:
            self._apply(script)
        except NetworkError as exc:
            if "File exists" not in str(exc):
                raise
            # a map element for the tap points elsewhere (edited by hand): replace it
            stale = self._stale_elements(spec)
            if not stale:
                raise
            self._apply(stale + script)

    def apply_ports(self, specs: Sequence[PortSpec]) -> None:
        """``apply_port`` for many ports in ONE transaction (the base objects once): all of
        them or none. Raises NetworkError before running anything when a spec is invalid."""
        if not specs:
            return
        if len(specs) == 1:
            self.apply_port(specs[0])
            return
        self._apply(self._base_script() + "".join(self.port_script(spec) for spec in specs))

    def remove_port(self, port_id: str) -> None:
        """Delete the port's map elements, chains and counters in one transaction; nothing
        happens when the port has none."""
        self.remove_ports([port_id])

    def remove_ports(self, port_ids: Iterable[str]) -> None:
        """``remove_port`` for many ports: one read of the table, one transaction."""
        wanted = {check_id(port_id, "port id") for port_id in port_ids}
        if not wanted:
            return
        state = self._state()
        lines: list[str] = []
        for map_name, direction in ((OUT_MAP, "out"), (IN_MAP, "in")):
            for key, verdict in state["maps"].get(map_name, {}).items():
                match = PORT_CHAIN_RE.fullmatch(verdict)
                if match and match.group(1) in wanted and verdict.endswith(f"_{direction}"):
                    lines.append(f'delete element bridge {self.table} {map_name} {{ "{key}" }}')
        for port_id in sorted(wanted):
            for direction in ("out", "in"):
                if f"p{port_id}_{direction}" in state["chains"]:
                    lines.append(f"delete chain bridge {self.table} p{port_id}_{direction}")
            for kind in ("tx", "rx", "drop"):
                if f"c{port_id}_{kind}" in state["counters"]:
                    lines.append(f"delete counter bridge {self.table} c{port_id}_{kind}")
        if lines:
            self._apply("\n".join(lines) + "\n")

    def ports(self) -> set[str]:
        """Ids of the ports that have chains in the table."""
        return {m.group(1) for name in self._state()["chains"] if (m := PORT_CHAIN_RE.fullmatch(name))}

    def counters(self) -> dict[str, PortCounters]:
        """Cumulative counters of every port that has any."""
        out: dict[str, PortCounters] = {}
        for name, (packets, nbytes) in self._state()["counters"].items():
            match = PORT_COUNTER_RE.fullmatch(name)
            if not match:
                continue
            port = out.setdefault(match.group(1), PortCounters())
            if match.group(2) == "tx":
                port.tx_packets, port.tx_bytes = packets, nbytes
            elif match.group(2) == "rx":
                port.rx_packets, port.rx_bytes = packets, nbytes
            else:
                port.dropped_packets = packets
        return out

    def remove_all(self) -> None:
        """Delete the whole table (every port's rules and counters); nothing when absent."""
        if self._state()["present"]:
            self._apply(f"delete table bridge {self.table}\n")

    # -- scripts ---------------------------------------------------------------------------

    def _base_script(self) -> str:
        t = f"bridge {self.table}"
        taps = f'"{self.prefix}t*"'
        return "\n".join([
            f"add table {t}",
            f"add map {t} {OUT_MAP} {{ type ifname : verdict; }}",
            f"add map {t} {IN_MAP} {{ type ifname : verdict; }}",
            f"add chain {t} prerouting {{ type filter hook prerouting priority filter; policy accept; }}",
            f"add chain {t} postrouting {{ type filter hook postrouting priority filter; policy accept; }}",
            f"flush chain {t} prerouting",
            f"flush chain {t} postrouting",
            f"add rule {t} prerouting iifname vmap @{OUT_MAP}",
            f"add rule {t} prerouting iifname {taps} drop",
            f"add rule {t} postrouting oifname vmap @{IN_MAP}",
            f"add rule {t} postrouting oifname {taps} drop",
            # every node hosting a network runs its DHCP server with the same address: its
            # frames never cross to another node, and no other node's reach it
            f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
            f"flush chain {t} forward",
            f'add rule {t} forward iifname "{self.prefix}d*" oifname {{ "{self.prefix}x*", "{self.prefix}v*" }} drop',
            f'add rule {t} forward iifname {{ "{self.prefix}x*", "{self.prefix}v*" }} oifname "{self.prefix}d*" drop',
        ]) + "\n"

    def port_script(self, spec: PortSpec) -> str:
        """The port's part of ``apply_port``'s script (validates the whole spec first)."""
        port_id = check_id(spec.port_id, "port id")
        check_id(spec.network_id, "network id")
        if spec.prefix != self.prefix:
            raise NetworkError(f"port {port_id} has prefix {spec.prefix!r}, this filter {self.prefix!r}")
        if spec.profile not in PROFILES:
            raise NetworkError(f"unknown firewall profile {spec.profile!r} (one of {', '.join(PROFILES)})")
        if isinstance(spec.ipv4, str) or isinstance(spec.ipv6, str):
            raise NetworkError("ipv4 and ipv6 are tuples of addresses")
        mac = check_mac(spec.mac)
        tap = spec.tap
        v4 = sorted({_ipv4(a) for a in spec.ipv4})
        v6 = sorted({_ipv6(a) for a in spec.ipv6} | {ipaddress.IPv6Address(link_local_ipv6(mac))})
        t = f"bridge {self.table}"
        out, inn = f"p{port_id}_out", f"p{port_id}_in"
        tx = f"counter name c{port_id}_tx accept"
        rx = f"counter name c{port_id}_rx accept"
        drop = f"counter name c{port_id}_drop drop"
        lines = [f"add counter {t} c{port_id}_{kind}" for kind in ("tx", "rx", "drop")]
        lines += [f"add chain {t} {out}", f"add chain {t} {inn}", f"flush chain {t} {out}", f"flush chain {t} {inn}"]
        lines += [f"add rule {t} {out} {rule}" for rule in self._out_rules(mac, v4, v6, tx, drop)]
        lines += [f"add rule {t} {inn} {rule}" for rule in self._in_rules(spec.profile, rx, drop)]
        lines.append(f'add element {t} {OUT_MAP} {{ "{tap}" : goto {out} }}')
        lines.append(f'add element {t} {IN_MAP} {{ "{tap}" : goto {inn} }}')
        return "\n".join(lines) + "\n"

    @staticmethod
    def _out_rules(mac: str, v4: list[ipaddress.IPv4Address], v6: list[ipaddress.IPv6Address], tx: str, drop: str) -> list[str]:
        mac_int = "0x" + mac.replace(":", "")
        arp_ips = _set(["0.0.0.0"] + [str(a) for a in v4])
        rules = [
            f"ether saddr != {mac} {drop}",
            f"ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {arp_ips} {tx}",
            f"ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 {tx}",
            f"ether type ip udp sport 67 {drop}",
        ]
        if v4:
            rules.append(f"ether type ip ip saddr {_set([str(a) for a in v4])} {tx}")
        targets = _set([f"0x{int(a):032x}" for a in v6])
        rules += [
            f"icmpv6 type {{ nd-router-advert, nd-redirect }} {drop}",
            f"icmpv6 type nd-neighbor-advert @th,64,128 != {targets} {drop}",
            f"icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} @th,192,16 {{ 0x0101, 0x0201 }} @th,208,48 != {mac_int} {drop}",
            f"ip6 saddr :: icmpv6 type {{ nd-neighbor-solicit, nd-router-solicit, mld-listener-report, mld2-listener-report }} {tx}",
            f"ether type ip6 udp sport 547 {drop}",
            f"ether type ip6 ip6 saddr {_set([str(a) for a in v6])} {tx}",
            drop,
        ]
        return rules

    @staticmethod
    def _in_rules(profile: str, rx: str, drop: str) -> list[str]:
        if profile == "open":
            return [rx]
        rules = [
            f"ether type arp {rx}",
            f"icmp type {_set(list(ICMP_IN))} {rx}",
            f"icmpv6 type {_set(list(ICMPV6_IN))} {rx}",
            f"ether type ip udp sport 67 udp dport 68 {rx}",
            f"ether type ip6 udp sport 547 udp dport 546 {rx}",
            f"udp sport {{ 53, 123 }} {rx}",
            f"ether type ip ip frag-off & 0x1fff != 0 {rx}",
            f"tcp flags & (syn | ack) != syn {rx}",
        ]
        if PROFILE_PORTS[profile]:
            rules.append(f"tcp dport {_set([str(p) for p in PROFILE_PORTS[profile]])} {rx}")
        rules.append(drop)
        return rules

    # -- running nft -----------------------------------------------------------------------

    def _nft(self, *args: str) -> list[str]:
        base = ["nft", *args]
        return base if self.netns is None else ["ip", "netns", "exec", self.netns, *base]

    def _apply(self, script: str) -> None:
        self._runner(self._nft("-f", "-"), script)

    def _stale_elements(self, spec: PortSpec) -> str:
        state = self._state()
        lines = []
        for map_name, target in ((OUT_MAP, f"p{spec.port_id}_out"), (IN_MAP, f"p{spec.port_id}_in")):
            current = state["maps"].get(map_name, {}).get(spec.tap)
            if current is not None and current != target:
                lines.append(f'delete element bridge {self.table} {map_name} {{ "{spec.tap}" }}')
        return "".join(line + "\n" for line in lines)

    def _state(self) -> dict[str, Any]:
        """Our table as {present, chains, counters: {name: (packets, bytes)}, maps: {map:
        {key: goto target}}} from ``nft -j list ruleset bridge`` (no error when absent)."""
        text = self._runner(self._nft("-j", "list", "ruleset", "bridge"), None)
        return parse_ruleset(text, self.table)


def parse_ruleset(text: str, table: str) -> dict[str, Any]:
    """The parts of ``nft -j list ruleset bridge`` that belong to ``table``."""
    state: dict[str, Any] = {"present": False, "chains": set(), "counters": {}, "maps": {}}
    try:
        objects = json.loads(text).get("nftables", []) if text.strip() else []
    except (ValueError, AttributeError):
        raise NetworkError("nft -j printed something that is not its JSON") from None
    for obj in objects:
        kind, body = next(iter(obj.items()))
        if not isinstance(body, dict) or body.get("family") != "bridge":
            continue
        if kind == "table" and body.get("name") == table:
            state["present"] = True
        if body.get("table") != table:
            continue
        if kind == "chain":
            state["chains"].add(body["name"])
        elif kind == "counter":
            state["counters"][body["name"]] = (int(body.get("packets", 0)), int(body.get("bytes", 0)))
        elif kind == "map":
            elements: dict[str, str] = {}
            for key, verdict in body.get("elem", []):
                if isinstance(key, str) and isinstance(verdict, dict):
                    jump = verdict.get("goto") or verdict.get("jump") or {}
                    elements[key] = jump.get("target", "")
            state["maps"][body["name"]] = elements
    return state


__all__ = ["NftFilter", "Runner", "parse_ruleset", "run_nft"]
