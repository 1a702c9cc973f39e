"""The node agent's network loop: make this host's bridges, filters and DHCP match the
ports of the VMs assigned to it.

Written as ``step(env)``; the daemon runs it right before the VM reconcile pass, so a
VM's bridge exists before libvirt starts the VM. Each pass:

1. per network with a port here: the bridge and its segment (VXLAN flood entries towards
   the other nodes that host the network), and its DHCP server with the static leases of
   the ports here (or no DHCP server when the network has DHCP off);
2. per port here: its nftables rules (rebuilt in one transaction when the port changed or
   its rules went missing), and its tap in the bridge when the VM runs;
3. whatever cloudd made that no port needs any more is removed;
4. every ``usage_interval_s``: the ports' traffic counters (and errors) go to the state
   in one ``port.report``.

Every driver call is idempotent, so a link or rule deleted by hand is back on the next
pass. A failure is logged and reported on the port; the other ports go on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from cloudd.model.migration import hosts
from cloudd.env import Env, try_propose
from cloudd.model.state import State
from cloudd.model.networks import hosting_nodes
from cloudd.ops.compute import NicSpec
from cloudd.ops.network import DhcpSpec, Lease, NetworkDrivers, NetworkError, NetworkSpec, PortCounters, PortSpec, device_name

log = logging.getLogger(__name__)
MAX_ERROR = 500  # what port.report keeps of an error


@dataclass
class NetworkView:
    """What a node's network agent needs, copied out of the replica."""

    networks: dict[str, dict[str, Any]] = field(default_factory=dict)  # networks with a port here
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)  # ports of the VMs assigned here
    peers: dict[str, list[str]] = field(default_factory=dict)  # network id -> "ip:port" of the other nodes hosting it
    vm_names: dict[str, str] = field(default_factory=dict)

    def ports_of(self, vm_id: str) -> list[dict[str, Any]]:
        return sorted((p for p in self.ports.values() if p["vm"] == vm_id), key=lambda p: (p["slot"], p["id"]))


def network_view_of(state: State, node: str) -> NetworkView:
    """See ``Env.network_view`` (call under the replica's lock)."""
    view = NetworkView()
    for port in state.ports.values():
        vm = state.vms.get(port["vm"])
        network = state.networks.get(port["network"])
        if vm is None or network is None or node not in hosts(vm) or vm["state"] == "deleting":
            continue
        view.ports[port["id"]] = {**port, "ips": list(port["ips"])}
        view.vm_names[vm["id"]] = vm["name"]
        if network["id"] not in view.networks:
            view.networks[network["id"]] = {**network, "dns": list(network["dns"])}
            underlays = []
            for other in sorted(hosting_nodes(state, network["id"]) - {node}):
                address = ((state.nodes.get(other) or {}).get("network") or {}).get("underlay")
                if address:
                    underlays.append(address)
            view.peers[network["id"]] = underlays
    return view


def split_address(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def nic_specs(view: NetworkView, vm_id: str, prefix: str) -> tuple[NicSpec, ...]:
    """The VM's NICs as its domain should have them (the compute side of a port)."""
    return tuple(
        NicSpec(mac=p["mac"], bridge=device_name(prefix, "b", p["network"]), tap=device_name(prefix, "t", p["id"]))
        for p in view.ports_of(vm_id)
    )


@dataclass
class NetworkAgent:
    drivers: NetworkDrivers
    prefix: str = "cd"
    local_ip: str | None = None  # this node's VXLAN underlay address
    local_port: int = 4789
    usage_interval_s: float = 30.0
    applied: dict[str, PortSpec] = field(default_factory=dict)  # port id -> the rules in place
    errors: dict[str, str] = field(default_factory=dict)  # port id -> the last failure
    usage_at: float | None = None
    reported_errors: dict[str, str] = field(default_factory=dict)

    def network_spec(self, network: dict[str, Any], peers: list[str]) -> NetworkSpec:
        return NetworkSpec(
            network_id=network["id"],
            prefix=self.prefix,
            segment=network["segment"],
            segment_id=network["segment_id"],
            uplink=network.get("uplink"),
            local_ip=self.local_ip,
            local_port=self.local_port,
            peers=tuple(sorted(split_address(p) for p in peers)),
            mtu=network.get("mtu"),
        )

    def port_spec(self, port: dict[str, Any], network: dict[str, Any]) -> PortSpec:
        return PortSpec(
            port_id=port["id"],
            network_id=network["id"],
            mac=port["mac"],
            ipv4=tuple(port["ips"]),
            ipv6=(port["ipv6"],) if port.get("ipv6") else (),
            profile=port["profile"],
            prefix=self.prefix,
        )

    def dhcp_spec(self, network: dict[str, Any], ports: list[dict[str, Any]], names: dict[str, str]) -> DhcpSpec:
        named: set[str] = set()
        leases = []
        for p in sorted(ports, key=lambda p: (p["vm"], p["slot"])):
            hostname = names.get(p["vm"]) if p["vm"] not in named else None  # one name per VM and network
            named.add(p["vm"])
            leases.append(Lease(p["mac"], p["ips"][0], hostname))
        return DhcpSpec(
            network_id=network["id"],
            subnet=network["subnet"],
            server_ip=network["dhcp_ip"],
            gateway=network.get("gateway"),
            dns=tuple(network.get("dns") or ()),
            leases=tuple(sorted(leases, key=lambda lease: lease.mac)),
            mtu=network.get("mtu"),
            prefix=self.prefix,
        )

    def sync(self, view: NetworkView) -> dict[str, str]:
        """One blocking pass (see the module doc); returns the errors by port id."""
        links, filters, dhcp = self.drivers.links, self.drivers.filters, self.drivers.dhcp
        errors: dict[str, str] = {}
        broken: dict[str, str] = {}  # network id -> why it could not be set up
        for net_id, network in sorted(view.networks.items()):
            ports = [p for p in view.ports.values() if p["network"] == net_id]
            try:
                links.ensure_network(self.network_spec(network, view.peers.get(net_id, [])))
                if network["dhcp"]:
                    dhcp.ensure(self.dhcp_spec(network, ports, view.vm_names))
                else:
                    dhcp.remove(net_id)
            except Exception as exc:  # NetworkError, or an OSError of a tool: this network only
                log.error("network %s: %s", network["name"], exc)
                broken[net_id] = f"network {network['name']}: {exc}"[:MAX_ERROR]
        try:
            filters.ensure_base()
            filtered = filters.ports()
        except NetworkError as exc:
            log.error("nftables: %s", exc)
            return {port_id: f"filter: {exc}" for port_id in view.ports}
        specs: dict[str, PortSpec] = {}
        for port_id, port in sorted(view.ports.items()):
            if port["network"] in broken:
                errors[port_id] = broken[port["network"]]
            else:
                specs[port_id] = self.port_spec(port, view.networks[port["network"]])
        stale = [spec for port_id, spec in specs.items() if self.applied.get(port_id) != spec or port_id not in filtered]
        for spec in stale:
            if spec.port_id in self.applied and spec.port_id not in filtered:
                log.warning("port %s: its filter rules were missing; rebuilt", spec.port_id)
        try:
            filters.apply_ports(stale)  # one transaction for all of them
            self.applied.update((spec.port_id, spec) for spec in stale)
        except NetworkError:
            for spec in stale:  # one by one, so that one bad port does not hold up the others
                try:
                    filters.apply_port(spec)
                    self.applied[spec.port_id] = spec
                except NetworkError as exc:
                    log.error("port %s: %s", spec.port_id, exc)
                    errors[spec.port_id] = str(exc)
        for port_id, spec in specs.items():
            if port_id in errors:
                continue
            try:
                links.ensure_port(spec)
            except NetworkError as exc:
                log.error("port %s: %s", port_id, exc)
                errors[port_id] = str(exc)
        self._remove_unused(view)
        return errors

    def _remove_unused(self, view: NetworkView) -> None:
        links, filters, dhcp = self.drivers.links, self.drivers.filters, self.drivers.dhcp
        try:
            gone = sorted(filters.ports() - set(view.ports))
            if gone:
                log.info("ports %s are no longer here: removing their filters", ", ".join(gone))
                filters.remove_ports(gone)
            for port_id in gone:
                self.applied.pop(port_id, None)
            for port_id in sorted(links.ports() - set(view.ports)):
                links.remove_port(port_id)
            for net_id in sorted(dhcp.networks() - {n for n, net in view.networks.items() if net["dhcp"]}):
                dhcp.remove(net_id)
            for net_id in sorted(links.networks() - set(view.networks)):
                log.info("network %s has no port here any more: removing its bridge", net_id)
                dhcp.remove(net_id)
                links.remove_network(net_id)
        except NetworkError as exc:
            log.warning("cleaning up: %s (will retry)", exc)
        for port_id in [p for p in self.applied if p not in view.ports]:
            del self.applied[port_id]

    def counters(self) -> dict[str, PortCounters]:
        try:
            return self.drivers.filters.counters()
        except NetworkError as exc:
            log.warning("reading the port counters: %s", exc)
            return {}

    async def step(self, env: Env) -> None:
        view = env.network_view(env.node_name)
        if not view.ports and not self.applied and not self.errors:
            if not await asyncio.to_thread(self._anything_left):
                return
        self.errors = await asyncio.to_thread(self.sync, view)
        await self._report(env, view)

    def _anything_left(self) -> bool:
        try:
            return bool(self.drivers.links.networks() or self.drivers.filters.ports() or self.drivers.dhcp.networks())
        except NetworkError:
            return True

    async def _report(self, env: Env, view: NetworkView) -> None:
        now = env.monotonic()
        due = self.usage_at is None or now - self.usage_at >= self.usage_interval_s
        news = {p: e for p, e in self.errors.items() if self.reported_errors.get(p) != e}
        cleared = [p for p in self.reported_errors if p not in self.errors and p in view.ports]
        if not view.ports or not (due or news or cleared):
            return
        counters = await asyncio.to_thread(self.counters)
        sample: dict[str, dict[str, Any]] = {}
        for port_id in view.ports:
            c = counters.get(port_id, PortCounters())
            sample[port_id] = {
                "tx_bytes": c.tx_bytes,
                "tx_packets": c.tx_packets,
                "rx_bytes": c.rx_bytes,
                "rx_packets": c.rx_packets,
                "dropped_packets": c.dropped_packets,
                "error": (self.errors.get(port_id) or "")[:MAX_ERROR] or None,
            }
        if await try_propose(env, "port.report", {"node": env.node_name, "ports": sample}, "port counters") is not None:
            self.usage_at = now
            self.reported_errors = dict(self.errors)
