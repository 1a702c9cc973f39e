"""cloudctl network …, cloudctl port …, cloudctl ip …, and cloudctl vm nic-list|nic-attach|nic-detach."""

from __future__ import annotations

from typing import Any

import click

from cli.client import Client, q
from cli.output import emit
from cli.tasks import finish as finish_with

NETWORK_COLUMNS = ["id", "name", "public", "owner", "segment", "segment_id", "subnet", "gateway", "dhcp", "used", "ports"]
PORT_COLUMNS = ["id", "vm_name", "network_name", "mac", "ips", "profile", "tx_bytes", "rx_bytes", "dropped", "error"]
IP_COLUMNS = ["ip", "network_name", "public", "vm_name", "mac", "primary", "tx_bytes", "rx_bytes"]
PROFILE = click.Choice(["open", "web", "ssh", "closed"])


def network_row(network: dict[str, Any]) -> dict[str, Any]:
    return {**network, "used": f"{network['addresses']['used']}/{network['addresses']['pool']}"}


def port_row(port: dict[str, Any]) -> dict[str, Any]:
    usage = port.get("usage") or {}
    return {**port, "ips": ",".join(port["ips"]), "tx_bytes": usage.get("tx_bytes"), "rx_bytes": usage.get("rx_bytes"), "dropped": usage.get("dropped_packets")}


def ip_row(ip: dict[str, Any]) -> dict[str, Any]:
    usage = ip.get("usage") or {}
    return {**ip, "tx_bytes": usage.get("tx_bytes"), "rx_bytes": usage.get("rx_bytes")}


def parse_nic(value: str) -> dict[str, Any]:
    """``NETWORK`` or ``NETWORK=IP`` (the address to take on that network)."""
    network, _, ip = value.partition("=")
    if not network:
        raise click.BadParameter(f"{value!r}: give NETWORK or NETWORK=IP")
    return {"network": network, **({"ip": ip} if ip else {})}


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    wait_option = click.option("--wait", is_flag=True, help="Follow the operation's task to its end with a progress bar; exit 1 if it fails.")
    timeout_option = click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds --wait waits.")

    @cli.group()
    def network() -> None:
        """Networks: layer-2 segments (VXLAN, or VLAN for admins) with an IPv4 subnet and DHCP.

        \b
        Examples:
          cloudctl network create lan --subnet 10.10.0.0/24                 (your private network)
          cloudctl network create public --subnet 192.0.2.0/24 --gateway 192.0.2.1 --pool 192.0.2.10-192.0.2.200   (admin: public)
          cloudctl network create dmz --subnet 198.51.100.0/24 --vlan 120 --uplink bond0   (admin: a VLAN)
          cloudctl network list
          cloudctl vm create web1 --flavor small --network lan --wait
        """

    @network.command("list")
    @pass_ctx
    def network_list(ctx: Ctx) -> None:
        """The public networks and your own, with their address pools' use."""
        run(lambda: emit([network_row(n) for n in ctx.client().request("GET", "/api/v1/networks", params={"limit": 1000})["items"]], ctx.output, NETWORK_COLUMNS))

    @network.command("show")
    @click.argument("ref", metavar="NETWORK")
    @pass_ctx
    def network_show(ctx: Ctx, ref: str) -> None:
        """One network (by name or id)."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/networks/{q(ref)}"), ctx.output))

    @network.command("create")
    @click.argument("name")
    @click.option("--subnet", required=True, help="IPv4 network, e.g. 10.10.0.0/24 (/16 to /29).")
    @click.option("--gateway", default=None, help="The router's address (default: the first host address).")
    @click.option("--no-gateway", is_flag=True, help="An isolated network without a router.")
    @click.option("--pool", "pool_range", default=None, help="START-END: the addresses VMs get (default: all but the gateway and the DHCP server's).")
    @click.option("--ipv6-prefix", default=None, help="A /64 the guests form their IPv6 addresses from (SLAAC).")
    @click.option("--no-dhcp", is_flag=True, help="No DHCP server (addresses are still assigned and filtered).")
    @click.option("--dns", multiple=True, help="A DNS server handed out by DHCP (repeatable).")
    @click.option("--profile", type=PROFILE, default=None, help="Default inbound firewall profile of new ports.")
    @click.option("--mtu", type=int, default=None)
    @click.option("--vlan", type=int, default=None, help="Admin: an 802.1Q VLAN id (with --uplink) instead of VXLAN.")
    @click.option("--uplink", default=None, help="Admin: the physical interface carrying the VLAN.")
    @click.option("--vni", type=int, default=None, help="Admin: the VXLAN id (default: a free one).")
    @click.option("--owner", default=None, help="Admin: a private network of this user (default for admins: public).")
    @click.option("--description", default=None)
    @pass_ctx
    def network_create(
        ctx: Ctx, name: str, subnet: str, gateway: str | None, no_gateway: bool, pool_range: str | None, ipv6_prefix: str | None, no_dhcp: bool,
        dns: tuple[str, ...], profile: str | None, mtu: int | None, vlan: int | None, uplink: str | None, vni: int | None, owner: str | None, description: str | None,
    ) -> None:
        """Create a network (users: a private one of their own; admins: public unless --owner)."""
        body: dict[str, Any] = {"name": name, "subnet": subnet, "dhcp": not no_dhcp}
        if no_gateway:
            body["gateway"] = None
        elif gateway:
            body["gateway"] = gateway
        if pool_range:
            start, sep, end = pool_range.partition("-")
            if not sep:
                raise click.BadParameter("--pool must be START-END")
            body["pool_start"], body["pool_end"] = start, end
        if vlan is not None:
            body.update(segment="vlan", segment_id=vlan)
        elif vni is not None:
            body["segment_id"] = vni
        for key, value in (("ipv6_prefix", ipv6_prefix), ("profile", profile), ("mtu", mtu), ("uplink", uplink), ("owner", owner), ("description", description)):
            if value is not None:
                body[key] = value
        if dns:
            body["dns"] = list(dns)
        run(lambda: emit(ctx.client().request("POST", "/api/v1/networks", body), ctx.output))

    @network.command("update")
    @click.argument("ref", metavar="NETWORK")
    @click.option("--name", default=None)
    @click.option("--dhcp/--no-dhcp", default=None)
    @click.option("--dns", multiple=True)
    @click.option("--profile", type=PROFILE, default=None)
    @click.option("--mtu", type=int, default=None)
    @click.option("--description", default=None)
    @pass_ctx
    def network_update(ctx: Ctx, ref: str, name: str | None, dhcp: bool | None, dns: tuple[str, ...], profile: str | None, mtu: int | None, description: str | None) -> None:
        """Rename, switch DHCP, change DNS servers, MTU or the default profile."""
        body = {k: v for k, v in (("name", name), ("dhcp", dhcp), ("profile", profile), ("mtu", mtu), ("description", description)) if v is not None}
        if dns:
            body["dns"] = list(dns)
        run(lambda: emit(ctx.client().request("PATCH", f"/api/v1/networks/{q(ref)}", body), ctx.output))

    @network.command("delete")
    @click.argument("ref", metavar="NETWORK")
    @pass_ctx
    def network_delete(ctx: Ctx, ref: str) -> None:
        """Delete a network that no VM uses."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/networks/{q(ref)}"), ctx.output))

    @cli.group()
    def port() -> None:
        """Ports: the NICs of your VMs, with their MAC, addresses, firewall profile and traffic.

        \b
        Examples:
          cloudctl port list --vm web1
          cloudctl port profile 1a2b3c4d web      (inbound: 22, 80, 443 only)
        """

    @port.command("list")
    @click.option("--vm", default=None, help="Only this VM's.")
    @click.option("--network", default=None, help="Only on this network.")
    @click.option("--all", "everyone", is_flag=True, help="Every user's (admin).")
    @pass_ctx
    def port_list(ctx: Ctx, vm: str | None, network: str | None, everyone: bool) -> None:
        """List ports with their traffic counters."""
        params: dict[str, Any] = {"limit": 1000, "all": "true" if everyone else "false"}
        for key, value in (("vm", vm), ("network", network)):
            if value:
                params[key] = value
        run(lambda: emit([port_row(p) for p in ctx.client().request("GET", "/api/v1/ports", params=params)["items"]], ctx.output, PORT_COLUMNS))

    @port.command("show")
    @click.argument("port_id", metavar="PORT")
    @pass_ctx
    def port_show(ctx: Ctx, port_id: str) -> None:
        """One port."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/ports/{q(port_id)}"), ctx.output))

    @port.command("profile")
    @click.argument("port_id", metavar="PORT")
    @click.argument("profile", type=PROFILE)
    @pass_ctx
    def port_profile(ctx: Ctx, port_id: str, profile: str) -> None:
        """Set the inbound firewall profile: open, web (22/80/443), ssh (22) or closed."""
        run(lambda: emit(ctx.client().request("PATCH", f"/api/v1/ports/{q(port_id)}", {"profile": profile}), ctx.output))

    @cli.group()
    def ip() -> None:
        """IP addresses of your VMs' ports, with traffic counters.

        \b
        Examples:
          cloudctl ip list
          cloudctl ip assign 1a2b3c4d               (a free address on the port's network)
          cloudctl ip assign 1a2b3c4d --ip 10.10.0.50
          cloudctl ip unassign 1a2b3c4d 10.10.0.50
        """

    @ip.command("list")
    @click.option("--network", default=None)
    @click.option("--all", "everyone", is_flag=True, help="Every user's (admin).")
    @pass_ctx
    def ip_list(ctx: Ctx, network: str | None, everyone: bool) -> None:
        """List your addresses."""
        params: dict[str, Any] = {"limit": 1000, "all": "true" if everyone else "false"}
        if network:
            params["network"] = network
        run(lambda: emit([ip_row(i) for i in ctx.client().request("GET", "/api/v1/ips", params=params)["items"]], ctx.output, IP_COLUMNS))

    @ip.command("assign")
    @click.argument("port_id", metavar="PORT")
    @click.option("--ip", "address", default=None, help="This address (default: a free one).")
    @pass_ctx
    def ip_assign(ctx: Ctx, port_id: str, address: str | None) -> None:
        """Give a port one more address."""
        run(lambda: emit(ctx.client().request("POST", f"/api/v1/ports/{q(port_id)}/ips", {"ip": address} if address else {}), ctx.output))

    @ip.command("unassign")
    @click.argument("port_id", metavar="PORT")
    @click.argument("address", metavar="IP")
    @pass_ctx
    def ip_unassign(ctx: Ctx, port_id: str, address: str) -> None:
        """Take an address off a port (it keeps at least one)."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/ports/{q(port_id)}/ips/{q(address)}"), ctx.output))

    vm = cli.commands["vm"]
    assert isinstance(vm, click.Group)

    def finish(client: Client, result: dict[str, Any], wait: bool, timeout: float) -> dict[str, Any]:
        return finish_with(client, result, wait, timeout, "vms")

    @vm.command("nic-list")
    @click.argument("vm_ref", metavar="VM")
    @pass_ctx
    def nic_list(ctx: Ctx, vm_ref: str) -> None:
        """The VM's NICs in the order the guest sees them."""
        run(lambda: emit([port_row(p) for p in ctx.client().request("GET", f"/api/v1/vms/{q(vm_ref)}/nics")["items"]], ctx.output, PORT_COLUMNS))

    @vm.command("nic-attach")
    @click.argument("vm_ref", metavar="VM")
    @click.argument("network_ref", metavar="NETWORK")
    @click.option("--ip", "address", default=None, help="The address to take (default: a free one).")
    @click.option("--mac", default=None, help="The MAC (default: a unique one).")
    @click.option("--profile", type=PROFILE, default=None, help="Inbound firewall profile (default: the network's).")
    @wait_option
    @timeout_option
    @pass_ctx
    def nic_attach(ctx: Ctx, vm_ref: str, network_ref: str, address: str | None, mac: str | None, profile: str | None, wait: bool, timeout: float) -> None:
        """Attach a VM to a network (hot-plugged when it runs).  Example: cloudctl vm nic-attach web1 lan --wait"""
        body = {"network": network_ref, **{k: v for k, v in (("ip", address), ("mac", mac), ("profile", profile)) if v}}

        def go() -> None:
            client = ctx.client()
            emit(finish(client, client.request("POST", f"/api/v1/vms/{q(vm_ref)}/nics", body), wait, timeout), ctx.output)

        run(go)

    @vm.command("nic-detach")
    @click.argument("vm_ref", metavar="VM")
    @click.argument("port_id", metavar="PORT")
    @wait_option
    @timeout_option
    @pass_ctx
    def nic_detach(ctx: Ctx, vm_ref: str, port_id: str, wait: bool, timeout: float) -> None:
        """Detach a NIC (its addresses are freed).  Example: cloudctl vm nic-detach web1 1a2b3c4d"""

        def go() -> None:
            client = ctx.client()
            emit(finish(client, client.request("DELETE", f"/api/v1/vms/{q(vm_ref)}/nics/{q(port_id)}"), wait, timeout), ctx.output)

        run(go)
