"""DnsmasqDhcp without a kernel: the dnsmasq command line and hosts file it generates, what
it refuses before running anything (fake runner), and its parsing of a recorded lease file."""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cloudd.ops.dhcp import DnsmasqDhcp, Files, check_spec, dnsmasq_argv, hosts_text, parse_leases, release_packet
from cloudd.ops.network import DhcpSpec, Lease, NetworkError

SPEC = DhcpSpec(
    network_id="0000abcd",
    subnet="10.1.0.0/24",
    server_ip="10.1.0.2",
    gateway="10.1.0.1",
    dns=("10.1.0.1", "9.9.9.9"),
    leases=(Lease("52:54:00:00:00:0B", "10.1.0.11"), Lease("52:54:00:00:00:0a", "10.1.0.10", "web-1")),
    lease_seconds=7200,
    mtu=1450,
)

# a dnsmasq lease file: two IPv4 leases, a DHCPv6 section and a line that is not a lease
RECORDED_LEASES = """1795511132 52:54:00:00:00:02 10.9.0.11 * *
1795511132 52:54:00:00:00:01 10.9.0.10 vm1 01:52:54:00:00:00:01
duid 00:01:00:01:2c:aa:bb:cc:52:54:00:00:00:01
1795511132 1234 fd00::5 * 00:01:00:01
garbage
"""


class Recorder:
    """A runner that records argv and answers queries as a node with nothing on it."""

    def __init__(self, links: list[dict[str, object]] | None = None, namespaces: list[str] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.links = links or []
        self.namespaces = namespaces or []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[-3:] == ["-j", "netns", "list"]:
            return json.dumps([{"name": name} for name in self.namespaces])
        if argv[-2:] == ["link", "show"]:
            return json.dumps(self.links)
        return ""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory dnsmasq could reach after dropping its privileges (``tmp_path`` is
    under a 0700 directory)."""
    with tempfile.TemporaryDirectory(prefix="cloudd-test-dhcp-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


def driver(tmp_path: Path, run: Recorder, netns: str | None = "hv") -> DnsmasqDhcp:
    return DnsmasqDhcp(tmp_path / "run", netns=netns, run=run)


def test_argv_names_everything_from_the_spec(tmp_path: Path) -> None:
    files = Files.of(tmp_path, SPEC.network_id)
    assert dnsmasq_argv(check_spec(SPEC), files) == [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--interface=eth0",
        "--dhcp-range=10.1.0.0,static,255.255.255.0,7200",
        f"--dhcp-hostsfile={tmp_path}/0000abcd.hosts",
        f"--dhcp-leasefile={tmp_path}/0000abcd.leases",
        f"--pid-file={tmp_path}/0000abcd.pid",
        "--dhcp-authoritative",
        "--dhcp-option=option:router,10.1.0.1",
        "--dhcp-option=option:dns-server,10.1.0.1,9.9.9.9",
        "--dhcp-option=option:mtu,1450",
    ]


def test_argv_without_gateway_sends_an_empty_router_option(tmp_path: Path) -> None:
    spec = replace(SPEC, subnet="172.16.0.0/16", server_ip="172.16.255.254", gateway=None, dns=(), mtu=None, leases=())
    argv = dnsmasq_argv(check_spec(spec), Files.of(tmp_path, spec.network_id), log_file=True)
    assert "--dhcp-range=172.16.0.0,static,255.255.0.0,7200" in argv
    assert "--dhcp-option=option:router" in argv  # without it dnsmasq names itself the router
    assert not [arg for arg in argv if arg.startswith(("--dhcp-option=option:dns", "--dhcp-option=option:mtu"))]
    assert argv[-1] == f"--log-facility={tmp_path}/0000abcd.log"


def test_hosts_file_is_canonical_and_sorted_by_address() -> None:
    assert hosts_text(check_spec(SPEC)) == "52:54:00:00:00:0a,10.1.0.10,web-1\n52:54:00:00:00:0b,10.1.0.11\n"
    reordered = replace(SPEC, leases=tuple(reversed(SPEC.leases)))
    assert hosts_text(check_spec(reordered)) == hosts_text(check_spec(SPEC))
    assert hosts_text(check_spec(replace(SPEC, leases=()))) == ""


@pytest.mark.parametrize("name", ["ignore", "infinite", "deprecated", "123", "45m", "2w"])
def test_names_dnsmasq_would_misread_are_left_out(name: str) -> None:
    spec = replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10", name),))
    assert hosts_text(check_spec(spec)) == "52:54:00:00:00:0a,10.1.0.10\n"


BAD = {
    "subnet with host bits": replace(SPEC, subnet="10.1.0.1/24"),
    "IPv6 subnet": replace(SPEC, subnet="fd00::/64"),
    "garbage subnet": replace(SPEC, subnet="10.1.0.0/24,static"),
    "/31 subnet": replace(SPEC, subnet="10.1.0.0/31", server_ip="10.1.0.1", gateway=None, leases=()),
    "server outside": replace(SPEC, server_ip="10.2.0.2"),
    "server is the network address": replace(SPEC, server_ip="10.1.0.0"),
    "server is the broadcast address": replace(SPEC, server_ip="10.1.0.255"),
    "server with a comma": replace(SPEC, server_ip="10.1.0.2,10.1.0.3"),
    "gateway outside": replace(SPEC, gateway="192.168.0.1"),
    "gateway is the server": replace(SPEC, gateway="10.1.0.2"),
    "dns not an address": replace(SPEC, dns=("dns.example",)),
    "dns 0.0.0.0": replace(SPEC, dns=("0.0.0.0",)),
    "dns as a string": replace(SPEC, dns="9.9.9.9"),  # type: ignore[arg-type]
    "lease outside": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.1.10"),)),
    "lease on the server": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.2"),)),
    "lease on the gateway": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.1"),)),
    "lease on the broadcast": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.255"),)),
    "duplicate MAC": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10"), Lease("52:54:00:00:00:0A", "10.1.0.11"))),
    "duplicate address": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10"), Lease("52:54:00:00:00:0b", "10.1.0.10"))),
    "bad MAC": replace(SPEC, leases=(Lease("52:54:00:00:0a", "10.1.0.10"),)),
    "MAC with a comma": replace(SPEC, leases=(Lease("52:54:00:00:00:0a,10.1.0.99", "10.1.0.10"),)),
    "multicast MAC": replace(SPEC, leases=(Lease("01:00:5e:00:00:01", "10.1.0.10"),)),
    "hostname with a comma": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10", "a,ignore"),)),
    "hostname uppercase": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10", "Web"),)),
    "hostname too long": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10", "a" * 64),)),
    "hostname leading hyphen": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10", "-web"),)),
    "hostname empty": replace(SPEC, leases=(Lease("52:54:00:00:00:0a", "10.1.0.10", ""),)),
    "lease time too short": replace(SPEC, lease_seconds=60),
    "lease time a bool": replace(SPEC, lease_seconds=True),
    "mtu too small": replace(SPEC, mtu=500),
    "bad network id": replace(SPEC, network_id="0000ABCD"),
    "other prefix": replace(SPEC, prefix="zz"),
}


@pytest.mark.parametrize("spec", BAD.values(), ids=BAD.keys())
def test_invalid_specs_are_refused_before_anything_runs(tmp_path: Path, spec: DhcpSpec) -> None:
    run = Recorder()
    with pytest.raises(NetworkError):
        driver(tmp_path, run).ensure(spec)
    assert run.calls == []
    assert not (tmp_path / "run").exists()


def test_missing_bridge_is_an_error_and_nothing_is_created(open_dir: Path) -> None:
    run = Recorder(links=[{"ifname": "lo", "ifindex": 1, "mtu": 65536, "flags": ["UP"]}])
    with pytest.raises(NetworkError, match="bridge cdb0000abcd does not exist"):
        driver(open_dir, run).ensure(SPEC)
    assert run.calls == [["ip", "-n", "hv", "-d", "-j", "link", "show"]]
    assert list((open_dir / "run").iterdir()) == []


def test_a_run_dir_dnsmasq_cannot_reach_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    locked.chmod(0o700)
    run = Recorder()
    with pytest.raises(NetworkError, match="not searchable by others"):
        DnsmasqDhcp(locked / "run", run=run).ensure(SPEC)
    assert run.calls == []


def test_remove_of_an_absent_network_only_looks(tmp_path: Path) -> None:
    run = Recorder(namespaces=["cddhcp-0000ffff"])
    driver(tmp_path, run, netns=None).remove(SPEC.network_id)
    assert not [argv for argv in run.calls if "del" in argv]


def test_networks_are_our_namespaces(tmp_path: Path) -> None:
    run = Recorder(namespaces=["cddhcp-0000ffff", "cddhcp-0000FFFF", "xxdhcp-0000aaaa", "cddhcp-0000ffff0", "tab12vm1", "cdddhcp-0000bbbb"])
    assert driver(tmp_path, run).networks() == {"0000ffff"}


def test_invalid_ids_are_refused(tmp_path: Path) -> None:
    run = Recorder()
    for bad in ("../etc", "0000abc", ""):
        with pytest.raises(NetworkError):
            driver(tmp_path, run).remove(bad)
    with pytest.raises(NetworkError):
        DnsmasqDhcp(tmp_path, prefix="Bad!")
    assert run.calls == []


def test_lease_file_parsing_keeps_ipv4_leases_only() -> None:
    assert parse_leases(RECORDED_LEASES) == [("52:54:00:00:00:02", "10.9.0.11"), ("52:54:00:00:00:01", "10.9.0.10")]


def test_release_packet_is_a_dhcprelease_from_the_client() -> None:
    packet = release_packet("52:54:00:00:00:0a", "10.1.0.10", "10.1.0.2")
    op, htype, hlen = struct.unpack("!BBB", packet[:3])
    assert (op, htype, hlen) == (1, 1, 6)
    assert socket.inet_ntoa(packet[12:16]) == "10.1.0.10"  # ciaddr
    assert packet[28:34] == bytes.fromhex("52540000000a")  # chaddr
    assert packet[236:240] == b"\x63\x82\x53\x63"
    assert packet[240:] == bytes([53, 1, 7, 54, 4, 10, 1, 0, 2, 255])
