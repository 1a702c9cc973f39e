"""A minimal DHCPv4 client for the network tests (stdlib only; no DHCP client is installed).

Run it inside a VM's namespace::

    ip netns exec NS /work/main/.venv/bin/python -m tests.e2e.dhcp_client --iface veth0 --mac 52:54:00:00:00:01

It gives the interface the MAC (replies are matched by it), sends DHCPDISCOVER, takes the
first OFFER for its transaction and MAC, sends DHCPREQUEST and waits for the ACK. It asks
for broadcast replies (the interface has no address yet) from a UDP socket bound to port 68
on that interface. It configures nothing: it prints what it was offered as one JSON line,
``{"ip", "mask", "router", "dns", "mtu", "hostname", "lease", "server"}``, or
``{"error": "no offer" | "no ack" | "nak"}`` with exit code 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_MTU = 1, 3, 6, 12, 26
OPT_REQUESTED_IP, OPT_LEASE, OPT_TYPE, OPT_SERVER_ID, OPT_PARAMS, OPT_END = 50, 51, 53, 54, 55, 255
BROADCAST_FLAG = 0x8000
RETRANSMIT = 1.0


def build(kind: int, xid: int, mac: bytes, extra: dict[int, bytes] | None = None) -> bytes:
    """A BOOTREQUEST of DHCP message type ``kind`` (padded to BOOTP's 300 bytes)."""
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, BROADCAST_FLAG,
                         bytes(4), bytes(4), bytes(4), bytes(4), mac.ljust(16, b"\0"), bytes(64), bytes(128))
    options = {OPT_TYPE: bytes([kind]), OPT_PARAMS: bytes([OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_MTU, OPT_LEASE, OPT_SERVER_ID])}
    options.update(extra or {})
    body = b"".join(bytes([code, len(value)]) + value for code, value in options.items())
    return (header + MAGIC + body + bytes([OPT_END])).ljust(300, b"\0")


def parse(packet: bytes, xid: int, mac: bytes) -> tuple[str, dict[int, bytes]] | None:
    """(yiaddr, options) of a BOOTREPLY to our transaction and MAC; None for anything else."""
    if len(packet) < 240 or packet[236:240] != MAGIC:
        return None
    op, _htype, hlen, _hops, got_xid = struct.unpack("!BBBBI", packet[:8])
    if op != 2 or got_xid != xid or hlen != 6 or packet[28:34] != mac:
        return None
    options: dict[int, bytes] = {}
    i = 240
    while i < len(packet):
        code = packet[i]
        if code == OPT_END:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(packet):
            break
        length = packet[i + 1]
        options[code] = options.get(code, b"") + packet[i + 2:i + 2 + length]
        i += 2 + length
    return socket.inet_ntoa(packet[16:20]), options


def set_mac(iface: str, mac: str) -> None:
    current = Path(f"/sys/class/net/{iface}/address").read_text().strip()
    if current == mac:
        return
    if subprocess.run(["ip", "link", "set", "dev", iface, "address", mac], check=False, capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "set", "dev", iface, "down"], check=True)
        subprocess.run(["ip", "link", "set", "dev", iface, "address", mac], check=True)
    subprocess.run(["ip", "link", "set", "dev", iface, "up"], check=True)


def exchange(sock: socket.socket, request: bytes, want: set[int], xid: int, mac: bytes, deadline: float) -> tuple[str, dict[int, bytes]] | None:
    """Send ``request`` (again every second) until a reply of a type in ``want`` arrives."""
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            return None
        if now >= next_send:
            sock.sendto(request, ("255.255.255.255", 67))
            next_send = now + RETRANSMIT
        ready, _, _ = select.select([sock], [], [], max(0.0, min(deadline, next_send) - now))
        if not ready:
            continue
        reply = parse(sock.recv(4096), xid, mac)
        if reply is not None and reply[1].get(OPT_TYPE, b"\0")[0] in want:
            return reply


def addresses(value: bytes | None) -> list[str]:
    value = value or b""
    return [socket.inet_ntoa(value[i:i + 4]) for i in range(0, len(value) - len(value) % 4, 4)]


def lease(iface: str, mac_text: str, timeout: float) -> dict[str, object]:
    mac = bytes.fromhex(mac_text.replace(":", ""))
    xid = secrets.randbits(32)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        sock.bind(("", 68))
        offer = exchange(sock, build(DISCOVER, xid, mac), {OFFER}, xid, mac, deadline)
        if offer is None:
            return {"error": "no offer"}
        offered, options = offer
        server = options.get(OPT_SERVER_ID, b"")
        request = build(REQUEST, xid, mac, {OPT_REQUESTED_IP: socket.inet_aton(offered), OPT_SERVER_ID: server})
        ack = exchange(sock, request, {ACK, NAK}, xid, mac, deadline)
    if ack is None:
        return {"error": "no ack"}
    ip, options = ack
    if options[OPT_TYPE][0] == NAK:
        return {"error": "nak"}
    mask = addresses(options.get(OPT_MASK))
    routers = addresses(options.get(OPT_ROUTER))
    mtu = options.get(OPT_MTU)
    lease_time = options.get(OPT_LEASE)
    return {
        "ip": ip,
        "mask": mask[0] if mask else None,
        "prefixlen": ipaddress.IPv4Network(f"0.0.0.0/{mask[0]}").prefixlen if mask else None,
        "router": routers[0] if routers else None,
        "dns": addresses(options.get(OPT_DNS)),
        "mtu": struct.unpack("!H", mtu)[0] if mtu and len(mtu) == 2 else None,
        "hostname": options[OPT_HOSTNAME].decode(errors="replace") if OPT_HOSTNAME in options else None,
        "lease": struct.unpack("!I", lease_time)[0] if lease_time and len(lease_time) == 4 else None,
        "server": addresses(options.get(OPT_SERVER_ID))[0] if options.get(OPT_SERVER_ID) else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", required=True)
    parser.add_argument("--mac", required=True, help="the client's MAC; the interface is given it")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds for the whole exchange")
    args = parser.parse_args(argv)
    mac = args.mac.lower()
    set_mac(args.iface, mac)
    result = lease(args.iface, mac, args.timeout)
    print(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
