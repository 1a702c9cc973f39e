"""An in-memory host network for the simulator and unit tests (a first-class driver).

``FakeNetwork`` plays the three network drivers at once (``links``, ``filters``,
``dhcp`` all return itself) with the contracts' idempotency and validation; tests can
break things behind cloudd's back (``delete_link``, ``flush_rules``), plug taps as
libvirt would (``plug_tap``), make calls fail (``fail_next``) and move counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cloudd.ops.network import (
    DEFAULT_PREFIX,
    DhcpSpec,
    NetworkDrivers,
    NetworkError,
    NetworkSpec,
    PortCounters,
    PortSpec,
    check_id,
    check_mac,
)


@dataclass
class FakeNetwork:
    """The host's network state, and the three drivers acting on it."""

    prefix: str = DEFAULT_PREFIX
    bridges: dict[str, NetworkSpec] = field(default_factory=dict)  # network id -> spec in place
    taps: dict[str, str | None] = field(default_factory=dict)  # port id -> network whose bridge it is in (None: loose)
    rules: dict[str, PortSpec] = field(default_factory=dict)
    leases: dict[str, DhcpSpec] = field(default_factory=dict)
    counts: dict[str, PortCounters] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def drivers(self) -> NetworkDrivers:
        return NetworkDrivers(links=FakeLinks(self), filters=FakeFilters(self), dhcp=FakeDhcp(self))

    def fail_next(self, method: str, message: str) -> None:
        self.failures[method] = message

    def call(self, method: str, subject: str) -> None:
        self.calls.append((method, subject))
        if method in self.failures:
            raise NetworkError(self.failures.pop(method))

    # --- breaking things behind cloudd's back ---
    def delete_link(self, network_id: str) -> None:
        self.bridges.pop(network_id, None)

    def flush_rules(self, port_id: str) -> None:
        self.rules.pop(port_id, None)

    def plug_tap(self, port_id: str) -> None:
        """What libvirt does when the VM starts: a tap appears (loose until enslaved)."""
        self.taps.setdefault(port_id, None)


@dataclass
class FakeLinks:
    host: FakeNetwork

    @property
    def prefix(self) -> str:
        return self.host.prefix

    def ensure_network(self, spec: NetworkSpec) -> None:
        check_id(spec.network_id)
        if spec.segment == "vlan" and not spec.uplink:
            raise NetworkError("a VLAN segment needs an uplink")
        if self.host.bridges.get(spec.network_id) != spec:
            self.host.call("ensure_network", spec.network_id)
            self.host.bridges[spec.network_id] = spec

    def remove_network(self, network_id: str) -> None:
        if network_id in self.host.bridges:
            self.host.call("remove_network", network_id)
            del self.host.bridges[network_id]

    def ensure_port(self, spec: PortSpec) -> bool:
        if spec.port_id not in self.host.taps:
            return False
        if spec.network_id not in self.host.bridges:
            raise NetworkError(f"bridge {spec.bridge} does not exist")
        self.host.taps[spec.port_id] = spec.network_id
        return True

    def remove_port(self, port_id: str) -> None:
        if port_id in self.host.taps:
            self.host.call("remove_tap", port_id)
            del self.host.taps[port_id]

    def networks(self) -> set[str]:
        return set(self.host.bridges)

    def ports(self) -> set[str]:
        return set(self.host.taps)


@dataclass
class FakeFilters:
    host: FakeNetwork

    @property
    def prefix(self) -> str:
        return self.host.prefix

    def ensure_base(self) -> None:
        self.host.call("ensure_base", "")

    def apply_port(self, spec: PortSpec) -> None:
        check_id(spec.port_id)
        check_mac(spec.mac)
        self.host.call("apply_port", spec.port_id)
        self.host.rules[spec.port_id] = spec
        self.host.counts.setdefault(spec.port_id, PortCounters())

    def apply_ports(self, specs: Sequence[PortSpec]) -> None:
        if not specs:
            return
        for spec in specs:  # all checked before any is applied: one transaction
            check_id(spec.port_id)
            check_mac(spec.mac)
        self.host.call("apply_ports", ",".join(s.port_id for s in specs))
        for spec in specs:
            self.host.rules[spec.port_id] = spec
            self.host.counts.setdefault(spec.port_id, PortCounters())

    def remove_port(self, port_id: str) -> None:
        if port_id in self.host.rules:
            self.host.call("remove_rules", port_id)
            del self.host.rules[port_id]

    def remove_ports(self, port_ids: Iterable[str]) -> None:
        for port_id in port_ids:
            self.remove_port(port_id)

    def ports(self) -> set[str]:
        return set(self.host.rules)

    def counters(self) -> dict[str, PortCounters]:
        return {port_id: self.host.counts.get(port_id, PortCounters()) for port_id in self.host.rules}


@dataclass
class FakeDhcp:
    host: FakeNetwork

    @property
    def prefix(self) -> str:
        return self.host.prefix

    def ensure(self, spec: DhcpSpec) -> None:
        if spec.network_id not in self.host.bridges:
            raise NetworkError(f"bridge {spec.bridge} does not exist")
        for lease in spec.leases:
            check_mac(lease.mac)
        if self.host.leases.get(spec.network_id) != spec:
            self.host.call("dhcp_ensure", spec.network_id)
            self.host.leases[spec.network_id] = spec

    def remove(self, network_id: str) -> None:
        if network_id in self.host.leases:
            self.host.call("dhcp_remove", network_id)
            del self.host.leases[network_id]

    def networks(self) -> set[str]:
        return set(self.host.leases)
