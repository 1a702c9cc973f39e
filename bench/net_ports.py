"""Set up and tear down N ports (bridge membership + nft filter + DHCP lease) on one node:
through ``NetworkAgent.sync`` with the real drivers, against the raw operations alone.

Everything happens in a "hypervisor" network namespace the benchmark creates (its
bridges, nft tables and VXLAN port are private to it); the DHCP server gets its own
``<prefix>dhcp-<network>`` namespace as in production. One VXLAN network without
peers, N ports (one VM each, firewall profiles in turn, a /24 or larger subnet).

The taps are libvirt's job, so they are not timed: before each set-up the benchmark
makes N veth pairs (``PortSpec.tap`` in the hypervisor namespace, the "VM" end in a
second namespace), and before each tear-down it removes them, as libvirt does when the
VMs stop (the agent would otherwise delete them as leftovers).

- **agent**: set-up = ``sync(view)`` with the N ports (bridge + VXLAN, DHCP with N
  leases, one filter transaction per port, each tap into the bridge); tear-down =
  ``sync`` of an empty view (filters, DHCP server, bridge removed).
- **raw** (the baseline): the same end state by the bare operations: pyroute2 creates
  the bridge and VXLAN (``bridge_request``/``vxlan_request``) and enslaves the taps, one
  ``nft -f -`` holds the base table and every port's rules (``NftFilter``'s own script
  text), one ``DnsmasqDhcp.ensure``; tear-down = ``delete table``, ``DnsmasqDhcp.remove``,
  two link deletions.

Both end states are checked (untimed) after every phase. Rounds alternate the modes;
results are medians. Last line: ``port_setup_ms=<agent set-up per port>
overhead_ratio=<agent/raw, set-up + tear-down>``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyroute2 import IPRoute  # type: ignore[import-untyped]

from cloudd.network_agent import NetworkAgent, NetworkView
from cloudd.ops.dhcp import DnsmasqDhcp, Files, process_cmdline
from cloudd.ops.netlink_links import NetlinkLinks, bridge_request, vxlan_request
from cloudd.ops.network import (
    PROFILES,
    NetworkDrivers,
    device_name,
)
from cloudd.ops.nft_filter import NftFilter, run_nft

PHASES = ("setup", "teardown")


def ip(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["ip", *args], check=False, input=stdin, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args[:6])}: {done.stderr.strip()[:300]}")
    return done.stdout


def namespaces() -> set[str]:
    out = ip("-j", "netns", "list").strip()
    return {entry["name"] for entry in json.loads(out)} if out else set()


# --- the view ------------------------------------------------------------------------


def build_view(ports: int, network_id: str) -> NetworkView:
    """One VXLAN network with DHCP and ``ports`` ports, one VM each."""
    prefixlen = min(24, 32 - (ports + 16).bit_length())
    subnet = ipaddress.IPv4Network(f"10.{secrets.randbelow(200) + 20}.0.0/{prefixlen}")
    hosts = list(subnet.hosts())
    network = {
        "id": network_id, "name": "bench", "segment": "vxlan", "segment_id": 4242, "uplink": None, "mtu": None,
        "dhcp": True, "subnet": str(subnet), "dhcp_ip": str(hosts[1]), "gateway": str(hosts[0]), "dns": [str(hosts[0])],
    }
    view = NetworkView(networks={network_id: network}, peers={network_id: []})
    for i in range(ports):
        port_id, vm_id = f"{0xA0000000 + i:08x}", f"vm{i:06d}"
        view.ports[port_id] = {
            "id": port_id, "vm": vm_id, "slot": 0, "network": network_id, "mac": f"52:54:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            "ips": [str(hosts[10 + i])], "ipv6": None, "profile": PROFILES[i % len(PROFILES)],
        }
        view.vm_names[vm_id] = f"vm-{i:06d}"
    return view


# --- timing --------------------------------------------------------------------------


class Clock:
    """Seconds spent per part (links, nft, dhcp) during the current phase."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] += time.perf_counter() - started


class Timed:
    """A driver whose method calls add their time to ``clock`` under ``part``."""

    def __init__(self, driver: Any, clock: Clock, part: str) -> None:
        self._driver, self._clock, self._part = driver, clock, part

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._driver, name)
        if not callable(value):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._clock.part(self._part):
                return value(*args, **kwargs)

        return timed


# --- the lab -------------------------------------------------------------------------


@dataclass
class Lab:
    """The namespaces, drivers and run directory of one benchmark run (``close`` removes all)."""

    prefix: str
    hypervisor: str
    guests: str
    run_dir: Path
    view: NetworkView
    network_id: str
    ipr: Any = None
    links: NetlinkLinks | None = None
    filters: NftFilter = field(init=False)
    dhcp: DnsmasqDhcp = field(init=False)

    def __post_init__(self) -> None:
        self.filters = NftFilter(prefix=self.prefix, netns=self.hypervisor)
        self.dhcp = DnsmasqDhcp(self.run_dir, prefix=self.prefix, netns=self.hypervisor)

    @classmethod
    def open(cls, ports: int) -> Lab:
        prefix = "b" + secrets.token_hex(1)
        run_dir = Path(tempfile.mkdtemp(prefix="cloudd-bench-", dir="/run"))
        run_dir.chmod(0o755)  # dnsmasq reads its hosts file as nobody
        network_id = secrets.token_hex(4)
        lab = cls(prefix, f"{prefix}hv", f"{prefix}vm", run_dir, build_view(ports, network_id), network_id)
        try:
            for name in (lab.hypervisor, lab.guests):
                ip("netns", "add", name)
                ip("-n", name, "link", "set", "lo", "up")
            lab.ipr = IPRoute(netns=lab.hypervisor, flags=0)
            lab.links = NetlinkLinks(prefix, lab.hypervisor)
        except BaseException:
            lab.close()
            raise
        return lab

    def taps(self) -> list[str]:
        return [device_name(self.prefix, "t", port_id) for port_id in sorted(self.view.ports)]

    def plug_taps(self) -> None:
        """What libvirt does when the VMs start: a veth per port, the tap end loose."""
        if self.guests not in namespaces():
            ip("netns", "add", self.guests)
            ip("-n", self.guests, "link", "set", "lo", "up")
        ends = [f"g{port_id}" for port_id in sorted(self.view.ports)]
        ip("-n", self.hypervisor, "-batch", "-", stdin="".join(
            f"link add {tap} type veth peer name {end} netns {self.guests}\n" for tap, end in zip(self.taps(), ends)))
        ip("-n", self.guests, "-batch", "-", stdin="".join(f"link set {end} up\n" for end in ends))

    def unplug_taps(self) -> None:
        """What libvirt does when the VMs stop: their taps go (here: with the VM namespace)."""
        ip("netns", "del", self.guests)
        deadline = time.monotonic() + 30
        while self.present_taps():
            if time.monotonic() > deadline:
                raise RuntimeError("the taps did not go away")
            time.sleep(0.02)

    def present_taps(self) -> set[str]:
        return {link.get_attr("IFLA_IFNAME") for link in self.ipr.get_links()} & set(self.taps())

    def dnsmasq_pids(self) -> set[int]:
        """Every dnsmasq of this run: by PID file, and any left in the DHCP namespace."""
        files = Files.of(self.run_dir, self.network_id)
        pids: set[int] = set()
        try:
            pids.add(int(files.pid.read_text().strip()))
        except (OSError, ValueError):
            pass
        namespace = self.dhcp_spec_namespace
        if namespace in namespaces():
            pids |= {int(p) for p in ip("netns", "pids", namespace).split() if p.isdigit()}
        return {pid for pid in pids if (cmd := process_cmdline(pid)) and Path(cmd[0]).name == "dnsmasq" and str(self.run_dir) in " ".join(cmd)}

    @property
    def dhcp_spec_namespace(self) -> str:
        return f"{self.prefix}dhcp-{self.network_id}"

    def close(self) -> None:
        """Remove everything, whatever state a failure left: dnsmasq by PID, namespaces
        (their links and nft tables go with them), the run directory."""
        problems = []
        try:
            for pid in self.dnsmasq_pids():
                os.kill(pid, signal.SIGKILL)
        except Exception as exc:  # noqa: BLE001 - go on cleaning
            problems.append(f"dnsmasq: {exc}")
        for closable in (self.links, self.ipr):
            if closable is not None:
                try:
                    closable.close()
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"netlink: {exc}")
        for name in (self.dhcp_spec_namespace, self.guests, self.hypervisor):
            try:
                if name in namespaces():
                    ip("netns", "del", name)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"namespace {name}: {exc}")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        if problems:
            print("cleanup problems: " + "; ".join(problems), file=sys.stderr)


# --- the two modes -------------------------------------------------------------------


def agent_round(lab: Lab) -> dict[str, dict[str, float]]:
    clock = Clock()
    assert lab.links is not None
    drivers = NetworkDrivers(links=Timed(lab.links, clock, "links"), filters=Timed(lab.filters, clock, "nft"), dhcp=Timed(lab.dhcp, clock, "dhcp"))
    agent = NetworkAgent(drivers, prefix=lab.prefix)
    out: dict[str, dict[str, float]] = {}
    for phase, view in (("setup", lab.view), ("teardown", NetworkView())):
        if phase == "setup":
            lab.plug_taps()
        else:
            lab.unplug_taps()
        clock.parts.clear()
        started = time.perf_counter()
        errors = agent.sync(view)
        total = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"agent {phase}: {len(errors)} port errors, e.g. {next(iter(errors.items()))}")
        out[phase] = {"total": total, **clock.parts}
        check(lab, set_up=phase == "setup")
    # the empty-view pass leaves the (empty) base table: drop it, untimed, so both modes start alike
    run_nft(["ip", "netns", "exec", lab.hypervisor, "nft", "delete", "table", "bridge", lab.filters.table])
    return out


def raw_round(lab: Lab) -> dict[str, dict[str, float]]:
    clock = Clock()
    assert lab.links is not None
    agent = NetworkAgent(NetworkDrivers(links=lab.links, filters=lab.filters, dhcp=lab.dhcp), prefix=lab.prefix)  # for its pure spec builders only
    network = lab.view.networks[lab.network_id]
    net_spec = agent.network_spec(network, [])
    port_specs = [agent.port_spec(p, network) for _, p in sorted(lab.view.ports.items())]
    dhcp_spec = agent.dhcp_spec(network, list(lab.view.ports.values()), lab.view.vm_names)
    nft = ["ip", "netns", "exec", lab.hypervisor, "nft"]
    ipr = lab.ipr
    out: dict[str, dict[str, float]] = {}

    lab.plug_taps()
    started = time.perf_counter()
    with clock.part("links"):
        ipr.link("add", **bridge_request(net_spec))
        ipr.link("add", **vxlan_request(net_spec))
        index = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
        bridge = index[net_spec.bridge]
        ipr.link("set", index=bridge, state="up")
        ipr.link("set", index=index[net_spec.segment_device], master=bridge, state="up")
    with clock.part("dhcp"):
        lab.dhcp.ensure(dhcp_spec)
    with clock.part("nft"):
        script = lab.filters._base_script() + "".join(lab.filters.port_script(spec) for spec in port_specs)
        run_nft([*nft, "-f", "-"], script)
    with clock.part("links"):
        for spec in port_specs:
            ipr.link("set", index=index[spec.tap], master=bridge, state="up")
    out["setup"] = {"total": time.perf_counter() - started, **clock.parts}
    check(lab, set_up=True)

    lab.unplug_taps()
    clock.parts.clear()
    started = time.perf_counter()
    with clock.part("nft"):
        run_nft([*nft, "delete", "table", "bridge", lab.filters.table])
    with clock.part("dhcp"):
        lab.dhcp.remove(lab.network_id)
    with clock.part("links"):
        ipr.link("del", ifname=net_spec.segment_device)
        ipr.link("del", ifname=net_spec.bridge)
    out["teardown"] = {"total": time.perf_counter() - started, **clock.parts}
    check(lab, set_up=False)
    return out


def check(lab: Lab, set_up: bool) -> None:
    """The end state (untimed): every tap up in the bridge, every port filtered, dnsmasq
    serving every lease; or none of the network's devices, rules and server."""
    assert lab.links is not None
    if set_up:
        links = {link.get_attr("IFLA_IFNAME"): link for link in lab.ipr.get_links()}
        bridge = links[device_name(lab.prefix, "b", lab.network_id)]["index"]
        members = [name for name in lab.taps() + [device_name(lab.prefix, "x", lab.network_id)]
                   if links[name].get_attr("IFLA_MASTER") == bridge and links[name]["flags"] & 1]
        assert len(members) == len(lab.view.ports) + 1, f"{len(members)} of {len(lab.view.ports)} taps + VXLAN in the bridge"
        assert lab.filters.ports() == set(lab.view.ports), "not every port has its filter"
        pid = lab.dhcp.pid(lab.network_id)
        hosts = Files.of(lab.run_dir, lab.network_id).hosts.read_text().splitlines()
        assert pid is not None and len(hosts) == len(lab.view.ports), f"dnsmasq {pid}, {len(hosts)} leases"
    else:
        assert not lab.links.networks() and not lab.links.ports(), "links left"
        assert not lab.filters.ports(), "filters left"
        assert not lab.dhcp.networks() and lab.dhcp_spec_namespace not in namespaces(), "DHCP left"


# --- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.ports <= 4000:
        parser.error("--ports must be 1..4000")
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, nftables, dnsmasq)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanup below runs

    results: dict[str, list[dict[str, dict[str, float]]]] = {"agent": [], "raw": []}
    modes: dict[str, Callable[[Lab], dict[str, dict[str, float]]]] = {"agent": agent_round, "raw": raw_round}
    lab = Lab.open(args.ports)
    try:
        print(f"{args.ports} ports, prefix {lab.prefix}, hypervisor namespace {lab.hypervisor}, {args.rounds} rounds")
        for n in range(args.rounds):
            order = ("agent", "raw") if n % 2 == 0 else ("raw", "agent")
            for mode in order:
                results[mode].append(modes[mode](lab))
                r = results[mode][-1]
                print(f"  round {n + 1} {mode:5}: set-up {r['setup']['total'] * 1000:7.0f} ms, tear-down {r['teardown']['total'] * 1000:7.0f} ms")
    finally:
        lab.close()

    def median(mode: str, phase: str, part: str) -> float:
        return statistics.median(r[phase].get(part, 0.0) for r in results[mode]) * 1000

    totals = {mode: statistics.median(r["setup"]["total"] + r["teardown"]["total"] for r in results[mode]) * 1000 for mode in results}
    print(f"\nmedians of {args.rounds} rounds, ms ({args.ports} ports)")
    print(f"{'mode':6} {'phase':9} {'total':>8} {'links':>8} {'nft':>8} {'dhcp':>8} {'other':>7} {'per port':>9}")
    for mode in ("agent", "raw"):
        for phase in PHASES:
            parts = [median(mode, phase, p) for p in ("total", "links", "nft", "dhcp")]
            other = statistics.median(r[phase]["total"] - sum(r[phase].get(p, 0.0) for p in ("links", "nft", "dhcp")) for r in results[mode]) * 1000
            print(f"{mode:6} {phase:9} {parts[0]:8.0f} {parts[1]:8.0f} {parts[2]:8.0f} {parts[3]:8.0f} {other:7.0f} {parts[0] / args.ports:9.2f}")
    print(f"set-up + tear-down: agent {totals['agent']:.0f} ms, raw {totals['raw']:.0f} ms")
    print(f"port_setup_ms={median('agent', 'setup', 'total') / args.ports:.2f} overhead_ratio={totals['agent'] / totals['raw']:.2f}")


if __name__ == "__main__":
    main()
