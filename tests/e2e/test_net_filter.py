"""NftFilter on a real bridge: a "host" namespace with a Linux bridge and three "VM"
namespaces, each joined by a veth whose host end is named like the port's tap.

Frames are sent raw (AF_PACKET) from a VM namespace and looked for, by a marker they carry,
with an AF_PACKET sniffer in another one; real traffic is busybox ping and TCP connects.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, replace

import pytest

from cloudd.ops.network import NetworkError, PortCounters, PortSpec, link_local_ipv6
from cloudd.ops.nft_filter import NftFilter, run_nft
from tests.e2e.netns import Namespaces, netns  # noqa: F401

pytestmark = [pytest.mark.e2e]

NET = "0000e2e0"
SNIFF = """
import select, socket, sys, time
iface, marker, window = sys.argv[1], bytes.fromhex(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
print("ready", flush=True)
end, seen = time.monotonic() + window, 0
while not seen and (left := end - time.monotonic()) > 0:
    if select.select([s], [], [], left)[0]:
        data, addr = s.recvfrom(65535)
        seen = addr[2] != socket.PACKET_OUTGOING and marker in data
print(int(seen), flush=True)
"""
SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
"""
SERVE = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen()
    while True:
        s.accept()[0].close()
for port in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(port),)).start()
"""
CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
"""


@dataclass
class Vm:
    ns: str
    spec: PortSpec
    ip: str

    @property
    def mac(self) -> bytes:
        return bytes.fromhex(self.spec.mac.replace(":", ""))


@dataclass
class Lan:
    spaces: Namespaces
    host: str
    nft: NftFilter
    vms: dict[str, Vm]

    def counters(self, name: str) -> PortCounters:
        return self.nft.counters().get(self.vms[name].spec.port_id, PortCounters())


@pytest.fixture
def lan(netns: Namespaces) -> Lan:  # noqa: F811
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (its ping applet is used)")
    host = netns.add("h")
    bridge = PortSpec("00000000", NET, "52:54:00:00:00:00").bridge
    netns.run(host, ["ip", "link", "add", bridge, "type", "bridge"])
    netns.run(host, ["ip", "link", "set", bridge, "up"])
    nft = NftFilter(netns=host)
    vms: dict[str, Vm] = {}
    for n, name in enumerate(("a", "b", "c"), start=1):
        ns = netns.add(name)
        ip = f"10.9.0.{n}"
        spec = PortSpec(f"0000e2e{n}", NET, f"52:54:00:e2:e0:0{n}", ipv4=(ip,), ipv6=(f"fd00:e2e::{n}",))
        netns.veth(host, spec.tap, ns, "eth0")
        netns.run(host, ["ip", "link", "set", spec.tap, "master", bridge])
        for argv in (["down"], ["address", spec.mac], ["up"]):  # down/up: the link-local follows the MAC
            netns.run(ns, ["ip", "link", "set", "eth0", *argv])
        netns.addr(ns, "eth0", f"{ip}/24")
        nft.apply_port(spec)
        vms[name] = Vm(ns, spec, ip)
    return Lan(netns, host, nft, vms)


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, marker: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(marker), 0) + marker
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return eth(dst_mac, src_mac, 0x0800, header + udp)


def arp_frame(src_mac: bytes, sender_mac: bytes, sender_ip: str, marker: bytes) -> bytes:
    """A gratuitous ARP reply (the marker rides in the Ethernet padding)."""
    ip = ipaddress.IPv4Address(sender_ip).packed
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, sender_mac, ip, b"\xff" * 6, ip)
    return eth(b"\xff" * 6, src_mac, 0x0806, arp + marker)


def icmpv6_frame(src_mac: bytes, src_ip: str, icmp: bytes, marker: bytes) -> bytes:
    payload = icmp + marker
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 58, 255, ipaddress.IPv6Address(src_ip).packed, ipaddress.IPv6Address("ff02::1").packed)
    return eth(bytes.fromhex("333300000001"), src_mac, 0x86DD, header + payload)


def neighbour_advert(target: str, option_mac: bytes) -> bytes:
    return struct.pack("!BBHI16sBB6s", 136, 0, 0, 0x20000000, ipaddress.IPv6Address(target).packed, 2, 1, option_mac)


def delivered(lan: Lan, sender: str, receiver: str, frame: bytes, marker: bytes, window: float = 0.8) -> bool:
    """Send ``frame`` from the sender's eth0; whether the receiver's eth0 saw it."""
    rx = lan.vms[receiver].ns
    sniffer = subprocess.Popen(["ip", "netns", "exec", rx, sys.executable, "-c", SNIFF, "eth0", marker.hex(), str(window)], stdout=subprocess.PIPE, text=True)
    try:
        assert sniffer.stdout is not None and sniffer.stdout.readline().strip() == "ready"
        lan.spaces.run(lan.vms[sender].ns, [sys.executable, "-c", SEND, "eth0", frame.hex()])
        seen = sniffer.stdout.readline().strip() == "1"
        sniffer.wait(timeout=10)
        return seen
    finally:
        if sniffer.poll() is None:
            sniffer.kill()
            sniffer.wait()


def ping(lan: Lan, sender: str, dst: str) -> bool:
    return lan.spaces.run(lan.vms[sender].ns, ["busybox", "ping", "-c", "1", "-W", "1", dst], check=False).returncode == 0


def connects(lan: Lan, sender: str, dst: str, port: int, timeout: float = 1.0) -> bool:
    argv = [sys.executable, "-c", CONNECT, dst, str(port), str(timeout)]
    return lan.spaces.run(lan.vms[sender].ns, argv, check=False).returncode == 0


def test_vms_send_only_from_their_own_mac_and_addresses(lan: Lan) -> None:
    a, b, c = lan.vms["a"], lan.vms["b"], lan.vms["c"]
    assert lan.nft.ports() == {a.spec.port_id, b.spec.port_id, c.spec.port_id}
    assert ping(lan, "a", b.ip)
    after_ping = lan.counters("b")
    assert lan.counters("a").tx_packets >= 2 and after_ping.rx_packets >= 2  # ARP + echo each way

    def probe(frame: bytes, marker: bytes) -> tuple[bool, int, int]:
        before = lan.counters("c")
        seen = delivered(lan, "c", "b", frame, marker)
        after = lan.counters("c")
        return seen, after.tx_packets - before.tx_packets, after.dropped_packets - before.dropped_packets

    def marker() -> bytes:
        return b"cloudd" + secrets.token_bytes(8)

    m = marker()
    seen, tx, dropped = probe(udp_frame(c.mac, b.mac, c.ip, b.ip, m), m)
    assert seen and tx >= 1 and dropped == 0
    m = marker()
    seen, tx, dropped = probe(udp_frame(c.mac, b.mac, "10.9.0.99", b.ip, m), m)
    assert not seen and dropped == 1, "a spoofed source IP is dropped"
    m = marker()
    seen, tx, dropped = probe(udp_frame(bytes.fromhex("525400e2e099"), b.mac, c.ip, b.ip, m), m)
    assert not seen and dropped == 1, "another source MAC is dropped"
    m = marker()
    seen, tx, dropped = probe(arp_frame(c.mac, c.mac, c.ip, m), m)
    assert seen and dropped == 0
    m = marker()
    seen, tx, dropped = probe(arp_frame(c.mac, c.mac, a.ip, m), m)
    assert not seen and dropped == 1, "ARP claiming another VM's address is dropped"
    m = marker()
    seen, tx, dropped = probe(arp_frame(c.mac, a.mac, c.ip, m), m)
    assert not seen and dropped == 1, "ARP naming another MAC as sender is dropped"

    own_ll = link_local_ipv6(c.spec.mac)
    m = marker()
    seen, tx, dropped = probe(icmpv6_frame(c.mac, own_ll, neighbour_advert(own_ll, c.mac), m), m)
    assert seen and dropped == 0, "a neighbour advertisement for its own address passes"
    m = marker()
    seen, tx, dropped = probe(icmpv6_frame(c.mac, own_ll, neighbour_advert(link_local_ipv6(a.spec.mac), c.mac), m), m)
    assert not seen and dropped == 1, "a neighbour advertisement for another VM's address is dropped"
    m = marker()
    seen, tx, dropped = probe(icmpv6_frame(c.mac, own_ll, neighbour_advert("fd00:e2e::3", a.mac), m), m)
    assert not seen and dropped == 1, "a link-layer option naming another MAC is dropped"
    m = marker()
    router_advert = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    seen, tx, dropped = probe(icmpv6_frame(c.mac, own_ll, router_advert, m), m)
    assert not seen and dropped == 1, "router advertisements from a VM are dropped"

    for argv in (["address", "52:54:00:e2:e0:99"], ["address", c.spec.mac]):
        lan.spaces.run(c.ns, ["ip", "neigh", "flush", "dev", "eth0"])
        lan.spaces.run(c.ns, ["ip", "link", "set", "eth0", *argv])
        assert ping(lan, "c", b.ip) == (argv[1] == c.spec.mac)
    assert lan.counters("a").dropped_packets == 0, "a well-behaved VM (IPv6 DAD, MLD, RS included) loses nothing"


def test_profile_change_is_one_transaction(lan: Lan) -> None:
    a, b = lan.vms["a"], lan.vms["b"]
    lan.spaces.spawn(b.ns, [sys.executable, "-c", SERVE, "22", "8080"])
    assert any(connects(lan, "a", b.ip, 8080) for _ in range(30)), "b's listener never came up"
    before = lan.counters("b")

    ssh = replace(b.spec, profile="ssh")
    broken = NftFilter(netns=lan.host, runner=lambda argv, stdin: run_nft(argv, stdin and stdin + "add rule bridge cdfilter nosuchchain accept\n"))
    chain = ["nft", "list", "chain", "bridge", "cdfilter", f"p{b.spec.port_id}_in"]
    listing = lan.spaces.run(lan.host, chain).stdout
    with pytest.raises(NetworkError):
        broken.apply_port(ssh)
    assert lan.spaces.run(lan.host, chain).stdout == listing, "a failed transaction leaves the old rules"
    assert connects(lan, "a", b.ip, 8080)

    lan.nft.apply_port(ssh)
    assert not connects(lan, "a", b.ip, 8080, timeout=0.7)
    assert connects(lan, "a", b.ip, 22)
    assert ping(lan, "b", a.ip), "echo replies come back in"
    assert not ping(lan, "a", b.ip), "echo requests do not"
    after = lan.counters("b")
    assert after.rx_packets > before.rx_packets and after.tx_packets > before.tx_packets, "counters survive apply_port"
    assert after.dropped_packets >= before.dropped_packets + 2  # the refused SYN (and its retry) + echo request

    lan.nft.apply_port(replace(b.spec, profile="open"))
    assert connects(lan, "a", b.ip, 8080)


def test_remove_port_leaves_nothing(lan: Lan) -> None:
    b, c = lan.vms["b"], lan.vms["c"]
    lan.nft.remove_port(c.spec.port_id)
    lan.nft.remove_port(c.spec.port_id)
    assert lan.nft.ports() == {lan.vms["a"].spec.port_id, b.spec.port_id}
    marker = b"cloudd" + secrets.token_bytes(8)
    assert not delivered(lan, "c", "b", udp_frame(c.mac, b.mac, c.ip, b.ip, marker), marker), "a tap without rules is closed"

    for vm in lan.vms.values():
        lan.nft.remove_port(vm.spec.port_id)
    assert lan.nft.ports() == set() and lan.nft.counters() == {}
    text = lan.spaces.run(lan.host, ["nft", "list", "table", "bridge", "cdfilter"]).stdout
    assert "0000e2e" not in text and "counter" not in text
    lan.nft.remove_all()
    lan.nft.remove_all()
    assert lan.spaces.run(lan.host, ["nft", "list", "tables"]).stdout.strip() == ""
