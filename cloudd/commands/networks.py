"""Network, port and address commands (see ``cloudd.model.networks`` for the model).

Everything is checked before anything changes: a refused command leaves the state as it
was. Ids and MACs are derived from the request id, so every replica derives the same.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from cloudd.commands.common import NODE_NAME, OBJECT_ID, USER_NAME, require_initialized
from cloudd.commands.pools import Usage, check_network_allowed, check_quota
from cloudd.commands.registry import Context, command
from cloudd.errors import CloudError
from cloudd.model.networks import (
    VNI_FIRST,
    VNI_LAST,
    addresses_in_use,
    derived_id,
    derived_mac,
    eui64_address,
    free_address,
    ports_of_vm,
    ports_on,
    reserved,
    visible_to,
)
from cloudd.model.state import State
from cloudd.ops.network import NET_ID_RE, PROFILES
from cloudd.model.tasks import open_task
from cloudd.validate import Field

NET_ID = Field("str", pattern=NET_ID_RE)
NETWORK_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
IFACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$")
MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
MAX_PORTS_PER_VM = 8
VXLAN_MTU = 1450
MAX_IPS_PER_PORT = 16
SMALLEST_PREFIX = 16  # a /16 at most: address allocation walks the pool inside apply
NETWORK_FIELDS = {
    "name": Field("str", pattern=NETWORK_NAME_RE),
    "owner": Field("str", pattern=USER_NAME.pattern, nullable=True, required=False),
    "segment": Field("str", choices=("vxlan", "vlan"), required=False),
    "segment_id": Field("int", min=1, max=VNI_LAST, required=False),
    "uplink": Field("str", pattern=IFACE_RE, required=False),
    "subnet": Field("str", max_len=18),
    "gateway": Field("str", max_len=15, nullable=True, required=False),
    "pool_start": Field("str", max_len=15, required=False),
    "pool_end": Field("str", max_len=15, required=False),
    "ipv6_prefix": Field("str", max_len=43, nullable=True, required=False),
    "dhcp": Field("bool", required=False),
    "dns": Field("list", max_len=4, item=Field("str", max_len=15), required=False),
    "profile": Field("str", choices=PROFILES, required=False),
    "mtu": Field("int", min=576, max=9000, nullable=True, required=False),
    "description": Field("str", max_len=500, required=False),
}
NIC_FIELDS = {"network": NET_ID, "ip": Field("str", max_len=15, required=False), "mac": Field("str", pattern=MAC_RE, required=False), "profile": Field("str", choices=PROFILES, required=False)}
NIC = Field("obj", spec=NIC_FIELDS)


def invalid(message: str, field: str) -> CloudError:
    return CloudError("invalid", message, {"field": field})


def parse_ipv4(value: str, field: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise invalid(f"{field} {value!r} is not an IPv4 address", field) from None


def get_network(state: State, network_id: str, user: str | None = None) -> dict[str, Any]:
    """The network, if ``user`` (None: an admin) may use it; 404 otherwise."""
    network = state.networks.get(network_id)
    if network is None or not visible_to(network, user):
        raise CloudError("not_found", f"network {network_id} not found")
    return network


def get_port(state: State, port_id: str) -> dict[str, Any]:
    port = state.ports.get(port_id)
    if port is None:
        raise CloudError("not_found", f"port {port_id} not found")
    return port


def _subnet(args: dict[str, Any]) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(args["subnet"], strict=True)
    except ValueError as exc:
        raise invalid(f"subnet {args['subnet']!r} is not an IPv4 network ({exc})", "subnet") from None
    if not SMALLEST_PREFIX <= net.prefixlen <= 29:
        raise invalid(f"subnet must be between a /{SMALLEST_PREFIX} and a /29", "subnet")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise invalid(f"subnet {net} is not usable for VMs", "subnet")
    return net


def _layout(args: dict[str, Any]) -> dict[str, Any]:
    """Subnet, gateway, DHCP server address and pool, checked against each other."""
    net = _subnet(args)
    hosts_first, hosts_last = net.network_address + 1, net.broadcast_address - 1
    gateway = args.get("gateway", str(hosts_first))
    if gateway is not None:
        gw = parse_ipv4(gateway, "gateway")
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise invalid(f"gateway {gw} is not a host address of {net}", "gateway")
        gateway = str(gw)
    dhcp_ip = hosts_last if str(hosts_last) != gateway else hosts_last - 1
    start = parse_ipv4(args["pool_start"], "pool_start") if "pool_start" in args else hosts_first
    end = parse_ipv4(args["pool_end"], "pool_end") if "pool_end" in args else dhcp_ip - 1
    if "pool_start" not in args and gateway == str(start):
        start += 1
    for name, addr in (("pool_start", start), ("pool_end", end)):
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise invalid(f"{name} {addr} is not a host address of {net}", name)
    if start > end:
        raise invalid("pool_start comes after pool_end", "pool_start")
    if start <= dhcp_ip <= end:
        raise invalid(f"the pool must leave out {dhcp_ip}, the DHCP server's address", "pool_end")
    return {"subnet": str(net), "gateway": gateway, "dhcp_ip": str(dhcp_ip), "pool": {"start": str(start), "end": str(end)}}


def _ipv6_prefix(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        net = ipaddress.IPv6Network(value, strict=True)
    except ValueError as exc:
        raise invalid(f"ipv6_prefix {value!r} is not an IPv6 prefix ({exc})", "ipv6_prefix") from None
    if net.prefixlen != 64:
        raise invalid("ipv6_prefix must be a /64 (guests form their addresses from it)", "ipv6_prefix")
    if net.is_link_local or net.is_multicast or net.is_loopback:
        raise invalid(f"ipv6_prefix {net} is not usable for VMs", "ipv6_prefix")
    return str(net)


def _dns(values: list[str]) -> list[str]:
    return [str(parse_ipv4(v, f"dns[{i}]")) for i, v in enumerate(values)]


def _check_no_overlap(state: State, subnet: str, owner: str | None, skip: str | None = None) -> None:
    """A subnet may not overlap a public network's or one of the same owner's networks
    (a VM attached to both could not tell them apart). A new public network is checked
    against the public ones only: users' private networks cannot block it."""
    net = ipaddress.IPv4Network(subnet)
    for other in state.networks.values():
        if other["id"] == skip or not (other["owner"] is None or other["owner"] == owner):
            continue
        if net.overlaps(ipaddress.IPv4Network(other["subnet"])):
            raise CloudError("conflict", f"subnet {net} overlaps network {other['name']} ({other['subnet']})", {"field": "subnet", "network": other["id"]})


def _segment(state: State, args: dict[str, Any], owner: str | None) -> tuple[str, int, str | None]:
    kind = args.get("segment", "vxlan")
    if kind == "vlan":
        if owner is not None:
            raise CloudError("forbidden", "only public networks can be VLANs (an admin's uplink)")
        if "uplink" not in args:
            raise invalid("a VLAN network needs the uplink interface that carries it", "uplink")
        vid = args.get("segment_id")
        if vid is None or vid > 4094:
            raise invalid("a VLAN network needs segment_id between 1 and 4094", "segment_id")
        taken = {n["segment_id"] for n in state.networks.values() if n["segment"] == "vlan" and n.get("uplink") == args["uplink"]}
        if vid in taken:
            raise CloudError("conflict", f"VLAN {vid} on {args['uplink']} is used by another network", {"field": "segment_id"})
        return "vlan", vid, args["uplink"]
    if "uplink" in args:
        raise invalid("uplink is for VLAN networks", "uplink")
    used = {n["segment_id"] for n in state.networks.values() if n["segment"] == "vxlan"}
    vni = args.get("segment_id")
    if vni is not None and owner is not None:
        raise CloudError("forbidden", "only an admin chooses a VNI")
    if vni is None:
        vni = next(v for v in range(VNI_FIRST, VNI_LAST) if v not in used)
    elif vni in used:
        raise CloudError("conflict", f"VNI {vni} is used by another network", {"field": "segment_id"})
    return "vxlan", vni, None


@command("network.create", {"id": NET_ID, **NETWORK_FIELDS}, target="id")
def network_create(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Create a network: ``owner`` null/absent for a public one (the API sets the owner
    for users); VXLAN with a free VNI unless one is given."""
    require_initialized(state)
    owner = args.get("owner")
    if args["id"] in state.networks:
        raise CloudError("conflict", f"network {args['id']} already exists")
    if owner is not None and owner not in state.users:
        raise CloudError("not_found", f"user {owner} not found")
    if any(n["name"] == args["name"] and n["owner"] == owner for n in state.networks.values()):
        raise CloudError("conflict", f"a network named {args['name']} exists already", {"field": "name"})
    layout = _layout(args)
    _check_no_overlap(state, layout["subnet"], owner)
    segment, segment_id, uplink = _segment(state, args, owner)
    network = {
        "id": args["id"],
        "name": args["name"],
        "owner": owner,
        "segment": segment,
        "segment_id": segment_id,
        "uplink": uplink,
        **layout,
        "ipv6_prefix": _ipv6_prefix(args.get("ipv6_prefix")),
        "dhcp": args.get("dhcp", True),
        "dns": _dns(args.get("dns", [])),
        "profile": args.get("profile", "open"),
        # VXLAN takes 50 bytes of a 1500-byte underlay: guests are told (DHCP) and the
        # bridge is set to 1450 unless the admin knows better (jumbo frames underneath)
        "mtu": args.get("mtu", VXLAN_MTU if segment == "vxlan" else None),
        "description": args.get("description", ""),
        "created_at": ctx.ts,
    }
    state.networks[network["id"]] = network
    return dict(network)


@command(
    "network.update",
    {
        "id": NET_ID,
        "name": Field("str", pattern=NETWORK_NAME_RE, required=False),
        "dhcp": Field("bool", required=False),
        "dns": NETWORK_FIELDS["dns"],
        "profile": NETWORK_FIELDS["profile"],
        "mtu": NETWORK_FIELDS["mtu"],
        "description": NETWORK_FIELDS["description"],
    },
    target="id",
)
def network_update(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Rename, switch DHCP, change DNS servers, the default profile (for new ports), MTU."""
    network = get_network(state, args["id"])
    if "name" in args and any(n["name"] == args["name"] and n["owner"] == network["owner"] and n["id"] != network["id"] for n in state.networks.values()):
        raise CloudError("conflict", f"a network named {args['name']} exists already", {"field": "name"})
    dns = _dns(args["dns"]) if "dns" in args else network["dns"]
    for key in ("name", "dhcp", "profile", "mtu", "description"):
        if key in args:
            network[key] = args[key]
    network["dns"] = dns
    network["updated_at"] = ctx.ts
    return dict(network)


@command("network.delete", {"id": NET_ID}, target="id")
def network_delete(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Delete a network that no port uses."""
    network = get_network(state, args["id"])
    used = ports_on(state, network["id"])
    if used:
        vms = sorted({state.vms[p["vm"]]["name"] for p in used if p["vm"] in state.vms})
        raise CloudError("conflict", f"network {network['name']} still has {len(used)} ports (VMs {', '.join(vms[:5])})", {"ports": [p["id"] for p in used]})
    del state.networks[network["id"]]
    return {"id": network["id"], "name": network["name"]}


def _by_admin(state: State, ctx: Context) -> bool:
    """Whether the command was asked by an admin (or a node), from its actor."""
    if "node" in ctx.actor:
        return True
    user = state.users.get(str(ctx.actor.get("user", "")))
    return bool(user) and user["role"] == "admin"  # type: ignore[index]


def _choose_ip(
    state: State, network: dict[str, Any], wanted: str | None, also_taken: frozenset[str] | set[str] = frozenset(), outside_pool_ok: bool = False
) -> str:
    """A free address of the network's pool, or ``wanted`` once checked (``also_taken``:
    addresses given out earlier in the same command). Only admins take an address outside
    the pool (``outside_pool_ok``): the rest of the subnet may be the admin's hosts."""
    if wanted is None:
        free = free_address(state, network, also_taken)
        if free is None:
            raise CloudError("conflict", f"network {network['name']} has no free address left in its pool", {"network": network["id"]})
        return free
    addr = parse_ipv4(wanted, "ip")
    net = ipaddress.IPv4Network(network["subnet"])
    if addr not in net:
        raise invalid(f"{addr} is outside {network['name']}'s subnet {net}", "ip")
    if str(addr) in reserved(network):
        raise invalid(f"{addr} is reserved on {network['name']} (network, broadcast, gateway or DHCP server)", "ip")
    if str(addr) in addresses_in_use(state, network["id"]) or str(addr) in also_taken:
        raise CloudError("conflict", f"{addr} is already assigned on {network['name']}", {"field": "ip"})
    start, end = (ipaddress.IPv4Address(network["pool"][k]) for k in ("start", "end"))
    if not outside_pool_ok and not start <= addr <= end:
        raise CloudError("forbidden", f"{addr} is outside {network['name']}'s address pool {start}-{end} (only admins take those)", {"field": "ip"})
    return str(addr)


def _mac(state: State, seed: str, wanted: str | None, taken: set[str]) -> str:
    used = {p["mac"] for p in state.ports.values()} | taken
    if wanted is None:
        return derived_mac(seed, used)
    mac = wanted.lower()
    first = int(mac[:2], 16)
    if first & 1 or mac == "00:00:00:00:00:00":
        raise invalid(f"{mac} is not a unicast MAC address", "mac")
    if mac in used:
        raise CloudError("conflict", f"MAC {mac} is in use by another port", {"field": "mac"})
    return mac


def new_ports(state: State, ctx: Context, vm: dict[str, Any], nics: list[dict[str, Any]], first_slot: int) -> list[dict[str, Any]]:
    """Check and build ports for ``vm`` (nothing is stored: the caller adds them once
    every other check passed). Enforces visibility, the pool's network lock and its
    public IP limit."""
    if len(ports_of_vm(state, vm["id"])) + len(nics) > MAX_PORTS_PER_VM:
        raise invalid(f"a VM has at most {MAX_PORTS_PER_VM} NICs", "networks")
    built: list[dict[str, Any]] = []
    macs: set[str] = set()
    ids: set[str] = set()
    taken: dict[str, set[str]] = {}
    public = 0
    for n, nic in enumerate(nics):
        user = vm["owner"] if state.users.get(vm["owner"], {}).get("role") != "admin" else None
        network = get_network(state, nic["network"], user)
        if network["owner"] not in (None, vm["owner"]):
            raise CloudError("not_found", f"network {nic['network']} not found")
        check_network_allowed(state, vm["owner"], network)
        here = taken.setdefault(network["id"], set())
        ip = _choose_ip(state, network, nic.get("ip"), here, _by_admin(state, ctx))
        here.add(ip)
        mac = _mac(state, f"{ctx.request_id}:{n}", nic.get("mac"), macs)
        macs.add(mac)
        port_id = derived_id(f"{vm['id']}:{first_slot + n}", set(state.ports) | ids)
        ids.add(port_id)
        public += network["owner"] is None
        built.append(
            {
                "id": port_id,
                "vm": vm["id"],
                "owner": vm["owner"],
                "network": network["id"],
                "slot": first_slot + n,
                "mac": mac,
                "ips": [ip],
                "ipv6": eui64_address(network["ipv6_prefix"], mac) if network.get("ipv6_prefix") else None,
                "profile": nic.get("profile", network["profile"]),
                "created_at": ctx.ts,
                "usage": None,
            }
        )
    if public:
        check_quota(state, vm["owner"], Usage(public_ips=public))
    return built


def _vm_for_nic(state: State, vm_id: str) -> dict[str, Any]:
    vm = state.vms.get(vm_id)
    if vm is None:
        raise CloudError("not_found", f"VM {vm_id} not found")
    if vm["state"] in ("deleting", "migrating"):
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: its NICs cannot change now", {"state": vm["state"]})
    return vm


@command("vm.nic.attach", {"id": OBJECT_ID, **NIC_FIELDS}, target="id")
def vm_nic_attach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Give a VM a NIC on a network (hot-plugged when it runs): a new port with a free (or
    the chosen) address and a unique MAC."""
    vm = _vm_for_nic(state, args["id"])
    existing = ports_of_vm(state, vm["id"])
    # slots (and so port ids and tap names) are never reused: a NIC being unplugged keeps its own
    slot = max(vm.get("nic_seq", 0), max((p["slot"] for p in existing), default=-1) + 1)
    (port,) = new_ports(state, ctx, vm, [{k: v for k, v in args.items() if k != "id"}], slot)
    state.ports[port["id"]] = port
    vm["ports"] = [*vm.get("ports", []), port["id"]]
    vm["nic_seq"] = slot + 1
    task = open_task(state, ctx, "vm.nic.attach", vm, target=port["mac"], port=port["id"])
    return {"id": vm["id"], "port": dict(port), "task": dict(task)}


@command("vm.nic.detach", {"id": OBJECT_ID, "port": NET_ID}, target="id")
def vm_nic_detach(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Remove a VM's NIC (hot-unplugged when it runs); its addresses are free again."""
    vm = _vm_for_nic(state, args["id"])
    port = state.ports.get(args["port"])
    if port is None or port["vm"] != vm["id"]:
        raise CloudError("not_found", f"port {args['port']} of VM {vm['name']} not found")
    del state.ports[port["id"]]
    vm["ports"] = [p for p in vm.get("ports", []) if p != port["id"]]
    task = open_task(state, ctx, "vm.nic.detach", vm, target=port["mac"], port=port["id"])
    return {"id": vm["id"], "port": port["id"], "task": dict(task)}


@command("port.update", {"id": NET_ID, "profile": Field("str", choices=PROFILES)}, target="id")
def port_update(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Change a port's inbound firewall profile (applied by its node at once)."""
    port = get_port(state, args["id"])
    port["profile"] = args["profile"]
    port["updated_at"] = ctx.ts
    return dict(port)


@command("port.ip.assign", {"id": NET_ID, "ip": Field("str", max_len=15, required=False)}, target="id")
def port_ip_assign(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Give a port one more address (a free one, or the one asked for)."""
    port = get_port(state, args["id"])
    network = state.networks[port["network"]]
    if len(port["ips"]) >= MAX_IPS_PER_PORT:
        raise invalid(f"a port has at most {MAX_IPS_PER_PORT} addresses", "ip")
    ip = _choose_ip(state, network, args.get("ip"), outside_pool_ok=_by_admin(state, ctx))
    if network["owner"] is None:
        check_quota(state, port["owner"], Usage(public_ips=1))
    port["ips"].append(ip)
    port["updated_at"] = ctx.ts
    return {"id": port["id"], "ip": ip, "ips": list(port["ips"])}


@command("port.ip.unassign", {"id": NET_ID, "ip": Field("str", max_len=15)}, target="id")
def port_ip_unassign(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Take an address off a port; a port keeps at least one (detach the NIC instead).
    Taking off the first address makes the next one the port's DHCP address."""
    port = get_port(state, args["id"])
    ip = str(parse_ipv4(args["ip"], "ip"))
    if ip not in port["ips"]:
        raise CloudError("not_found", f"{ip} is not assigned to port {port['id']}")
    if len(port["ips"]) == 1:
        raise CloudError("conflict", "a port keeps at least one address: detach the NIC instead")
    port["ips"].remove(ip)
    port["updated_at"] = ctx.ts
    return {"id": port["id"], "ip": ip, "ips": list(port["ips"])}


PORT_COUNTERS = {k: Field("int", min=0, max=1 << 62) for k in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets", "dropped_packets")}


@command(
    "port.report",
    {
        "node": NODE_NAME,
        "ports": Field("dict", max_len=4096, item=Field("obj", spec={**PORT_COUNTERS, "error": Field("str", max_len=500, nullable=True, required=False)})),
    },
    target="node",
    audit=False,
    remember=False,
)
def port_report(state: State, ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A node's traffic counters (and filter errors) of the ports it hosts; ports that are
    gone or hosted elsewhere are ignored."""
    taken = 0
    for port_id, sample in args["ports"].items():
        port = state.ports.get(port_id)
        vm = state.vms.get(port["vm"]) if port else None
        if port is None or vm is None or vm["node"] != args["node"]:
            continue
        error = sample.pop("error", None)
        port["usage"] = {**sample, "ts": ctx.ts, "node": args["node"]}
        port["error"] = error
        taken += 1
    return {"node": args["node"], "ports": taken}


def release_vm_ports(state: State, vm: dict[str, Any]) -> list[str]:
    """A deleted VM's ports (and so their addresses) are gone with it."""
    gone = sorted({p for p in vm.get("ports", ()) if p in state.ports} | {p["id"] for p in state.ports.values() if p["vm"] == vm["id"]})
    for port_id in gone:
        del state.ports[port_id]
    return gone
