"""NftFilter without a kernel: the scripts it generates (fake runner), what it refuses
before running anything, its parsing of recorded ``nft -j`` output, and ``nft -c`` (check
mode, in a throwaway network namespace) on the generated scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest

from cloudd.ops.network import (
    PROFILES,
    NetworkError,
    PortCounters,
    PortSpec,
    link_local_ipv6,
)
from cloudd.ops.nft_filter import NftFilter, run_nft

SPEC = PortSpec("0000000a", "000000aa", "52:54:00:12:34:56", ipv4=("10.0.0.5", "10.0.0.7"), ipv6=("2001:db8::5",), profile="web")

# ``nft -j list ruleset bridge`` with ports 0000000a and 0000000b (rules left out, counters
# of 0000000a set by hand) plus another bridge table that must be ignored.
RECORDED = """{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "bridge", "name": "other", "handle": 7}},
{"chain": {"family": "bridge", "table": "other", "name": "p0000000c_out", "handle": 1}},
{"table": {"family": "bridge", "name": "cdfilter", "handle": 1}},
{"counter": {"family": "bridge", "name": "c0000000a_tx", "table": "cdfilter", "handle": 9, "packets": 12, "bytes": 1200}},
{"counter": {"family": "bridge", "name": "c0000000a_rx", "table": "cdfilter", "handle": 10, "packets": 7, "bytes": 700}},
{"counter": {"family": "bridge", "name": "c0000000a_drop", "table": "cdfilter", "handle": 11, "packets": 3, "bytes": 180}},
{"counter": {"family": "bridge", "name": "c0000000b_tx", "table": "cdfilter", "handle": 49, "packets": 0, "bytes": 0}},
{"counter": {"family": "bridge", "name": "c0000000b_rx", "table": "cdfilter", "handle": 50, "packets": 0, "bytes": 0}},
{"counter": {"family": "bridge", "name": "c0000000b_drop", "table": "cdfilter", "handle": 51, "packets": 0, "bytes": 0}},
{"map": {"family": "bridge", "name": "out_ports", "table": "cdfilter", "type": "ifname", "handle": 1, "map": "verdict",
  "elem": [["cdt0000000a", {"goto": {"target": "p0000000a_out"}}], ["cdt0000000b", {"goto": {"target": "p0000000b_out"}}]]}},
{"map": {"family": "bridge", "name": "in_ports", "table": "cdfilter", "type": "ifname", "handle": 2, "map": "verdict",
  "elem": [["cdt0000000a", {"goto": {"target": "p0000000a_in"}}], ["cdt0000000b", {"goto": {"target": "p0000000b_in"}}]]}},
{"chain": {"family": "bridge", "table": "cdfilter", "name": "prerouting", "handle": 3, "type": "filter", "hook": "prerouting", "prio": -200, "policy": "accept"}},
{"chain": {"family": "bridge", "table": "cdfilter", "name": "postrouting", "handle": 4, "type": "filter", "hook": "postrouting", "prio": -200, "policy": "accept"}},
{"chain": {"family": "bridge", "table": "cdfilter", "name": "p0000000a_out", "handle": 12}},
{"chain": {"family": "bridge", "table": "cdfilter", "name": "p0000000a_in", "handle": 13}},
{"chain": {"family": "bridge", "table": "cdfilter", "name": "p0000000b_out", "handle": 52}},
{"chain": {"family": "bridge", "table": "cdfilter", "name": "p0000000b_in", "handle": 53}}]}"""
EMPTY = '{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}]}'


class FakeNft:
    """Records (argv, stdin); answers ``-j`` listings with ``listing``."""

    def __init__(self, listing: str = EMPTY, fail_first: str | None = None) -> None:
        self.calls: list[tuple[list[str], str | None]] = []
        self.listing = listing
        self.fail_first = fail_first

    def __call__(self, argv: list[str], stdin: str | None) -> str:
        self.calls.append((argv, stdin))
        if "-j" in argv:
            return self.listing
        if self.fail_first:
            message, self.fail_first = self.fail_first, None
            raise NetworkError(f"nft failed: {message}")
        return ""

    @property
    def scripts(self) -> list[str]:
        return [stdin for argv, stdin in self.calls if stdin is not None]


def rules(script: str, chain: str) -> list[str]:
    head = f"add rule bridge cdfilter {chain} "
    return [line[len(head):] for line in script.splitlines() if line.startswith(head)]


def test_apply_port_is_one_script_through_stdin() -> None:
    fake = FakeNft()
    NftFilter(runner=fake).apply_port(SPEC)
    assert fake.calls == [(["nft", "-f", "-"], fake.scripts[0])]
    script = fake.scripts[0]
    assert script.startswith("add table bridge cdfilter\n")
    assert 'add element bridge cdfilter out_ports { "cdt0000000a" : goto p0000000a_out }' in script
    assert 'add element bridge cdfilter in_ports { "cdt0000000a" : goto p0000000a_in }' in script
    for kind in ("tx", "rx", "drop"):
        assert f"add counter bridge cdfilter c0000000a_{kind}" in script
    assert script.index("flush chain bridge cdfilter p0000000a_out") < script.index("add rule bridge cdfilter p0000000a_out")


def test_outbound_rules_name_the_mac_and_addresses() -> None:
    fake = FakeNft()
    NftFilter(runner=fake).apply_port(SPEC)
    out = rules(fake.scripts[0], "p0000000a_out")
    assert out[0] == "ether saddr != 52:54:00:12:34:56 counter name c0000000a_drop drop"
    assert any("arp saddr ether 52:54:00:12:34:56 arp saddr ip { 0.0.0.0, 10.0.0.5, 10.0.0.7 }" in r for r in out)
    assert "ether type ip ip saddr { 10.0.0.5, 10.0.0.7 } counter name c0000000a_tx accept" in out
    assert f"ether type ip6 ip6 saddr {{ 2001:db8::5, {link_local_ipv6(SPEC.mac)} }} counter name c0000000a_tx accept" in out
    na = next(r for r in out if "nd-neighbor-advert @th,64,128" in r)
    assert "0x20010db8000000000000000000000005" in na and "0xfe80000000000000505400fffe123456" in na
    assert any("@th,208,48 != 0x525400123456" in r for r in out)
    assert any(r.startswith("icmpv6 type { nd-router-advert, nd-redirect }") and r.endswith("drop") for r in out)
    assert out[-1] == "counter name c0000000a_drop drop"


def test_a_port_without_addresses_may_only_ask_dhcp() -> None:
    fake = FakeNft()
    NftFilter(runner=fake).apply_port(replace(SPEC, ipv4=(), ipv6=()))
    out = rules(fake.scripts[0], "p0000000a_out")
    assert not any("ip saddr {" in r for r in out)
    assert "ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 counter name c0000000a_tx accept" in out
    assert any("arp saddr ip { 0.0.0.0 }" in r for r in out)
    assert f"ether type ip6 ip6 saddr {{ {link_local_ipv6(SPEC.mac)} }} counter name c0000000a_tx accept" in out


@pytest.mark.parametrize(("profile", "ports"), [("web", "{ 22, 80, 443 }"), ("ssh", "{ 22 }"), ("closed", None)])
def test_inbound_profiles(profile: str, ports: str | None) -> None:
    fake = FakeNft()
    NftFilter(runner=fake).apply_port(replace(SPEC, profile=profile))
    inbound = rules(fake.scripts[0], "p0000000a_in")
    assert "tcp flags & (syn | ack) != syn counter name c0000000a_rx accept" in inbound
    assert "udp sport { 53, 123 } counter name c0000000a_rx accept" in inbound
    dport = [r for r in inbound if r.startswith("tcp dport")]
    assert dport == ([f"tcp dport {ports} counter name c0000000a_rx accept"] if ports else [])
    assert inbound[-1] == "counter name c0000000a_drop drop"


def test_open_profile_delivers_everything() -> None:
    fake = FakeNft()
    NftFilter(runner=fake).apply_port(replace(SPEC, profile="open"))
    assert rules(fake.scripts[0], "p0000000a_in") == ["counter name c0000000a_rx accept"]


def test_netns_runs_nft_through_ip_netns_exec() -> None:
    fake = FakeNft()
    NftFilter(netns="cdtest1", runner=fake).ensure_base()
    assert fake.calls[0][0] == ["ip", "netns", "exec", "cdtest1", "nft", "-f", "-"]
    assert "p0000000a" not in (fake.calls[0][1] or "")


def test_another_prefix_gets_its_own_table_and_taps() -> None:
    fake = FakeNft()
    NftFilter(prefix="zz", runner=fake).apply_port(replace(SPEC, prefix="zz"))
    assert "add table bridge zzfilter" in fake.scripts[0]
    assert 'iifname "zzt*" drop' in fake.scripts[0] and '"zzt0000000a" : goto' in fake.scripts[0]


@pytest.mark.parametrize("change", [
    {"mac": "52:54:00:12:34"},
    {"mac": "52:54:00:12:34:5g"},
    {"mac": "01:00:5e:00:00:01"},  # multicast
    {"mac": "00:00:00:00:00:00"},
    {"mac": '52:54:00:12:34:56" accept'},
    {"ipv4": ("10.0.0.256",)},
    {"ipv4": ("10.0.0.0/24",)},
    {"ipv4": ("0.0.0.0",)},
    {"ipv4": ("224.0.0.1",)},
    {"ipv4": ("10.0.0.5 }; flush ruleset",)},
    {"ipv4": "10.0.0.5"},  # a string, not a tuple
    {"ipv6": ("fe80::1%eth0 } ; flush ruleset",)},  # ipaddress accepts scope ids
    {"ipv6": ("ff02::1",)},
    {"ipv6": ("::",)},
    {"ipv6": ("10.0.0.5",)},
    {"profile": "wide"},
    {"port_id": "0000000A"},
    {"port_id": "../etc"},
    {"network_id": "x"},
    {"prefix": "zz"},
])
def test_invalid_specs_run_nothing(change: dict[str, object]) -> None:
    fake = FakeNft()
    with pytest.raises(NetworkError):
        NftFilter(runner=fake).apply_port(replace(SPEC, **change))  # type: ignore[arg-type]
    assert fake.calls == []


@pytest.mark.parametrize(("prefix", "netns"), [("CD", None), ("toolong", None), ("cd", "-x"), ("cd", "a b"), ("cd", "a/b")])
def test_invalid_constructor_arguments(prefix: str, netns: str | None) -> None:
    with pytest.raises(NetworkError):
        NftFilter(prefix=prefix, netns=netns, runner=FakeNft())


def test_ports_and_counters_from_recorded_output() -> None:
    nft = NftFilter(runner=FakeNft(RECORDED))
    assert nft.ports() == {"0000000a", "0000000b"}
    assert nft.counters() == {
        "0000000a": PortCounters(tx_bytes=1200, tx_packets=12, rx_bytes=700, rx_packets=7, dropped_packets=3),
        "0000000b": PortCounters(),
    }
    assert NftFilter(runner=FakeNft()).ports() == set()
    assert NftFilter(runner=FakeNft()).counters() == {}


def test_remove_port_is_one_transaction() -> None:
    fake = FakeNft(RECORDED)
    NftFilter(runner=fake).remove_port("0000000a")
    assert fake.scripts == [(
        'delete element bridge cdfilter out_ports { "cdt0000000a" }\n'
        'delete element bridge cdfilter in_ports { "cdt0000000a" }\n'
        "delete chain bridge cdfilter p0000000a_out\n"
        "delete chain bridge cdfilter p0000000a_in\n"
        "delete counter bridge cdfilter c0000000a_tx\n"
        "delete counter bridge cdfilter c0000000a_rx\n"
        "delete counter bridge cdfilter c0000000a_drop\n"
    )]


def test_removing_what_is_absent_does_nothing() -> None:
    for listing in (RECORDED, EMPTY):
        fake = FakeNft(listing)
        NftFilter(runner=fake).remove_port("0000000c")
        assert fake.scripts == []
    fake = FakeNft(EMPTY)
    NftFilter(runner=fake).remove_all()
    assert fake.scripts == []
    fake = FakeNft(RECORDED)
    NftFilter(runner=fake).remove_all()
    assert fake.scripts == ["delete table bridge cdfilter\n"]
    with pytest.raises(NetworkError):
        NftFilter(runner=FakeNft()).remove_port("nope")


def test_an_element_pointing_elsewhere_is_replaced() -> None:
    tampered = RECORDED.replace('"goto": {"target": "p0000000a_in"}', '"goto": {"target": "p0000000b_in"}')
    fake = FakeNft(tampered, fail_first="Error: Could not process rule: File exists")
    NftFilter(runner=fake).apply_port(SPEC)
    assert len(fake.scripts) == 2
    assert fake.scripts[1].startswith('delete element bridge cdfilter in_ports { "cdt0000000a" }\nadd table')
    other = FakeNft(RECORDED, fail_first="Error: Could not process rule: File exists")
    with pytest.raises(NetworkError, match="File exists"):
        NftFilter(runner=other).apply_port(SPEC)


def test_run_nft_reports_failures() -> None:
    with pytest.raises(NetworkError, match="not installed"):
        run_nft(["/nonexistent/nft", "-f", "-"], "")
    busy = [sys.executable, "-c", "import sys; sys.stderr.write('Error: Device or resource busy'); sys.exit(1)"]
    with pytest.raises(NetworkError, match="resource busy") as info:
        run_nft(busy, None)
    assert info.value.transient
    assert run_nft([sys.executable, "-c", "import sys; print(sys.stdin.read())"], "add table") == "add table\n"


def nft_check(script: str) -> subprocess.CompletedProcess[str]:
    for tool in ("nft", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install.sh installs nftables)")
    if os.geteuid() != 0:
        pytest.skip("nft -c in a new network namespace needs root")
    return subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], check=False, input=script, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("profile", PROFILES)
def test_generated_scripts_parse_in_nft(profile: str) -> None:
    fake = FakeNft()
    nft = NftFilter(runner=fake)
    nft.apply_port(replace(SPEC, profile=profile))
    nft.apply_port(replace(SPEC, port_id="0000000b", mac="52:54:00:00:00:0b", ipv4=(), ipv6=(), profile=profile))
    removal = FakeNft(RECORDED)
    NftFilter(runner=removal).remove_port("0000000b")
    script = "".join(fake.scripts) + removal.scripts[0] + "delete table bridge cdfilter\n"
    done = nft_check(script)
    assert done.returncode == 0, done.stderr
    assert nft_check("add table bridge cdfilter\nadd rule bridge cdfilter nosuchchain accept\n").returncode != 0


def test_many_ports_are_applied_and_removed_in_one_transaction_each() -> None:
    other = PortSpec("0000000b", "000000aa", "52:54:00:12:34:57", ipv4=("10.0.0.8",))
    fake = FakeNft(RECORDED)
    nft = NftFilter(runner=fake)
    nft.apply_ports([SPEC, other])
    nft.remove_ports(["0000000a", "0000000b"])
    assert len(fake.scripts) == 2 and [argv for argv, _ in fake.calls].count(["nft", "-j", "list", "ruleset", "bridge"]) <= 1
    applied, removed = fake.scripts
    assert "p0000000a_out" in applied and "p0000000b_out" in applied and applied.count("add table bridge cdfilter") == 1
    assert "delete chain bridge cdfilter p0000000a_out" in removed and "delete chain bridge cdfilter p0000000b_in" in removed
    with pytest.raises(NetworkError):  # one bad spec: nothing runs
        nft.apply_ports([SPEC, PortSpec("0000000c", "000000aa", "01:00:5e:00:00:01")])
    assert len(fake.scripts) == 2
