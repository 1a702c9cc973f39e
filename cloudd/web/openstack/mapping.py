"""cloudd's objects as OpenStack resources (pure functions of the replica's records).

| OpenStack        | cloudd                                                    |
|------------------|-----------------------------------------------------------|
| project          | the user's pool, id ``pool-<name>`` (a user in no pool: a project of their own, id ``user-<name>``) |
| user id          | the user's name                                           |
| server           | VM (status from the lifecycle state, below)               |
| flavor id        | flavor name                                               |
| image            | image (``active`` once ready)                             |
| network, subnet  | network and its IPv4 subnet (``<network id>-v4``)         |
| port             | a VM's NIC                                                |
| volume           | volume (``in-use`` when attached)                         |
| keypair          | an SSH public key kept in the user's record               |
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from cloudd.model.state import State

DOMAIN = {"id": "default", "name": "Default"}
AVAILABILITY_ZONE = "nova"
REGION = "RegionOne"

# (lifecycle state) -> (Nova status, vm_state, task_state)
SERVER_STATUS: dict[str, tuple[str, str, str | None]] = {
    "pending": ("BUILD", "building", "scheduling"),
    "creating": ("BUILD", "building", "spawning"),
    "starting": ("SHUTOFF", "stopped", "powering-on"),
    "running": ("ACTIVE", "active", None),
    "stopping": ("ACTIVE", "active", "powering-off"),
    "stopped": ("SHUTOFF", "stopped", None),
    "migrating": ("MIGRATING", "active", "migrating"),
    "error": ("ERROR", "error", None),
    "deleting": ("ACTIVE", "active", "deleting"),
}
SERVER_STATUSES = ("BUILD", "ACTIVE", "SHUTOFF", "REBOOT", "HARD_REBOOT", "MIGRATING", "ERROR", "DELETED")
POWER_STATE = {"running": 1, "paused": 3, "shut_off": 4, "crashed": 6, "absent": 0, None: 0}
VOLUME_STATUS = {
    "creating": "creating", "available": "available", "attached": "in-use", "detaching": "detaching",
    "resizing": "extending", "deleting": "deleting", "error": "error",
}
IMAGE_STATUS = {"ready": "active", "uploading": "queued", "error": "killed"}


def iso(ts: float | None) -> str | None:
    """A timestamp as OpenStack writes them: ``2026-11-24T14:03:42Z``."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def iso_micro(ts: float) -> str:
    """Keystone's form, with microseconds: ``2026-11-24T14:03:42.000000Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1e6):06d}Z"


def project_of(state: State, user: str) -> dict[str, Any]:
    """The user's project: their pool (id ``pool-<pool>``), or a project of their own
    named after them (id ``user-<user>``). The prefixes keep a user's own project and a
    pool of the same name apart; the names are what clients are configured with."""
    pool = (state.users.get(user) or {}).get("pool")
    if pool:
        return {"id": f"pool-{pool}", "name": pool, "domain": dict(DOMAIN)}
    return {"id": f"user-{user}", "name": user, "domain": dict(DOMAIN)}


def link(url: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": url}, {"rel": "bookmark", "href": url}]


# --- compute ---


def server_status(vm: dict[str, Any], create_open: bool) -> tuple[str, str, str | None]:
    """Nova's (status, vm_state, task_state) of a VM; ``create_open``: its create task
    still runs (a VM starting for the first time is still being built)."""
    status, vm_state, task_state = SERVER_STATUS[vm["state"]]
    if vm["state"] == "starting" and create_open:
        return "BUILD", "building", "spawning"
    if vm["state"] == "running":
        action = (vm.get("desired") or {}).get("action")
        if action == "reboot":
            return "REBOOT", "active", "rebooting"
        if action == "reset":
            return "HARD_REBOOT", "active", "rebooting_hard"
    return status, vm_state, task_state


def addresses(state: State, vm: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{network name: [{addr, version, OS-EXT-IPS:type, OS-EXT-IPS-MAC:mac_addr}]}``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for port_id in vm.get("ports", ()):
        port = state.ports.get(port_id)
        if port is None:
            continue
        network = state.networks.get(port["network"])
        name = network["name"] if network else port["network"]
        entries = out.setdefault(name, [])
        for ip in port["ips"]:
            entries.append({"addr": ip, "version": 4, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": port["mac"]})
        if port.get("ipv6"):
            entries.append({"addr": port["ipv6"], "version": 6, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": port["mac"]})
    return out


def key_name_of(state: State, vm: dict[str, Any]) -> str | None:
    """The name of the owner's keypair whose public key the VM was given, if any."""
    keys = set(vm.get("ssh_keys") or ())
    pairs = (state.users.get(vm["owner"]) or {}).get("keypairs") or {}
    return next((name for name, pair in sorted(pairs.items()) if pair["public_key"] in keys), None)


def server_brief(vm: dict[str, Any], compute_url: str) -> dict[str, Any]:
    return {"id": vm["id"], "name": vm["name"], "links": link(f"{compute_url}/servers/{vm['id']}")}


def server_view(state: State, vm: dict[str, Any], compute_url: str, is_admin: bool) -> dict[str, Any]:
    """A VM as Nova's ``server`` (microversion 2.1, with the usual extensions)."""
    create_open = any(state.tasks.get(t, {}).get("op") == "vm.create" for t in vm.get("tasks", ()))
    status, vm_state, task_state = server_status(vm, create_open)
    observed = vm.get("observed") or {}
    launched = vm.get("launched_at") or (vm["state_since"] if vm["state"] == "running" else None)
    view: dict[str, Any] = {
        **server_brief(vm, compute_url),
        "status": status,
        "tenant_id": project_of(state, vm["owner"])["id"],
        "user_id": vm["owner"],
        "metadata": {},
        "hostId": "",
        "image": {"id": vm["image"], "links": link(f"{compute_url}/images/{vm['image']}")} if vm.get("image") else "",
        "flavor": {"id": vm.get("flavor") or "custom", "links": link(f"{compute_url}/flavors/{vm.get('flavor') or 'custom'}")},
        "created": iso(vm["created_at"]),
        "updated": iso(vm.get("state_since") or vm["created_at"]),
        "addresses": addresses(state, vm),
        "accessIPv4": "",
        "accessIPv6": "",
        "progress": 100 if status == "ACTIVE" else 0,
        "key_name": key_name_of(state, vm),
        "config_drive": "",
        "security_groups": [{"name": "default"}],
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": AVAILABILITY_ZONE,
        "OS-EXT-STS:vm_state": vm_state,
        "OS-EXT-STS:task_state": task_state,
        "OS-EXT-STS:power_state": POWER_STATE.get(observed.get("power"), 0),
        "OS-SRV-USG:launched_at": iso(launched),
        "OS-SRV-USG:terminated_at": None,
        "os-extended-volumes:volumes_attached": [{"id": v["id"]} for v in vm.get("volumes", ())],
    }
    if vm.get("node"):  # Nova's opaque host id: equal for the project's servers on one host
        view["hostId"] = hashlib.sha224(f"{view['tenant_id']}{vm['node']}".encode()).hexdigest()
    if is_admin:
        view["OS-EXT-SRV-ATTR:host"] = vm.get("node")
        view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = vm.get("node")
        view["OS-EXT-SRV-ATTR:instance_name"] = vm["id"]
    if status == "ERROR":
        view["fault"] = {"code": 500, "message": (vm.get("error") or vm.get("state_reason") or "error")[:255], "created": iso(vm.get("state_since"))}
    return view


def flavor_view(flavor: dict[str, Any], compute_url: str, detail: bool = True) -> dict[str, Any]:
    brief = {"id": flavor["name"], "name": flavor["name"], "links": link(f"{compute_url}/flavors/{flavor['name']}")}
    if not detail:
        return brief
    return {
        **brief,
        "vcpus": flavor["vcpus"],
        "ram": flavor["ram_mb"],
        "disk": int(flavor["disk_gb"]) if float(flavor["disk_gb"]).is_integer() else flavor["disk_gb"],
        "swap": "",
        "OS-FLV-EXT-DATA:ephemeral": 0,
        "OS-FLV-DISABLED:disabled": False,
        "os-flavor-access:is_public": True,
        "rxtx_factor": 1.0,
    }


def keypair_view(pair: dict[str, Any], user: str) -> dict[str, Any]:
    return {"name": pair["name"], "public_key": pair["public_key"], "fingerprint": pair["fingerprint"], "user_id": user, "type": "ssh"}


# --- image ---


def image_view(state: State, image: dict[str, Any]) -> dict[str, Any]:
    """An image as Glance v2 shows it."""
    size = image.get("size_bytes")
    if size is None:
        size = int(image.get("size_gb", 0) * (1 << 30))
    owner = project_of(state, image["owner"])["id"] if image.get("owner") else None
    return {
        "id": image["id"],
        "name": image["name"],
        "status": IMAGE_STATUS.get(image.get("state", "ready"), "queued"),
        "visibility": "public" if image["public"] else "private",
        "protected": False,
        "os_hidden": False,
        "disk_format": image["format"],
        "container_format": "bare",
        "size": size,
        "virtual_size": int(image.get("virtual_size_gb", image.get("size_gb", 0)) * (1 << 30)) or None,
        "min_disk": int(image.get("min_disk_gb") or 0),
        "min_ram": int(image.get("min_ram_mb") or 0),
        "checksum": None,
        "os_hash_algo": "sha256" if image.get("sha256") else None,
        "os_hash_value": image.get("sha256"),
        "owner": owner,
        "tags": [],
        "created_at": iso(image.get("created_at")),
        "updated_at": iso(image.get("updated_at") or image.get("created_at")),
        "self": f"/image/v2/images/{image['id']}",
        "file": f"/image/v2/images/{image['id']}/file",
        "schema": "/image/v2/schemas/image",
    }


# --- network ---


def subnet_id(network_id: str) -> str:
    return f"{network_id}-v4"


def network_view(state: State, network: dict[str, Any]) -> dict[str, Any]:
    project = project_of(state, network["owner"])["id"] if network["owner"] else "admin"
    return {
        "id": network["id"],
        "name": network["name"],
        "status": "ACTIVE",
        "admin_state_up": True,
        "shared": network["owner"] is None,
        "router:external": False,
        "subnets": [subnet_id(network["id"])],
        "mtu": network.get("mtu") or 1500,
        "port_security_enabled": True,
        "availability_zones": [AVAILABILITY_ZONE],
        "tenant_id": project,
        "project_id": project,
        "description": network.get("description", ""),
        "tags": [],
        "created_at": iso(network.get("created_at")),
        "updated_at": iso(network.get("created_at")),
    }


def subnet_view(state: State, network: dict[str, Any]) -> dict[str, Any]:
    project = project_of(state, network["owner"])["id"] if network["owner"] else "admin"
    pool = network.get("pool") or {}
    return {
        "id": subnet_id(network["id"]),
        "name": network["name"],
        "network_id": network["id"],
        "ip_version": 4,
        "cidr": network["subnet"],
        "gateway_ip": network.get("gateway"),
        "enable_dhcp": bool(network.get("dhcp", True)),
        "dns_nameservers": list(network.get("dns") or []),
        "allocation_pools": [{"start": pool["start"], "end": pool["end"]}] if pool else [],
        "host_routes": [],
        "tenant_id": project,
        "project_id": project,
        "description": "",
        "tags": [],
        "created_at": iso(network.get("created_at")),
        "updated_at": iso(network.get("created_at")),
    }


def port_view(state: State, port: dict[str, Any]) -> dict[str, Any]:
    project = project_of(state, port["owner"])["id"]
    fixed = [{"subnet_id": subnet_id(port["network"]), "ip_address": ip} for ip in port["ips"]]
    return {
        "id": port["id"],
        "name": "",
        "network_id": port["network"],
        "mac_address": port["mac"],
        "fixed_ips": fixed,
        "device_id": port["vm"],
        "device_owner": "compute:nova",
        "status": "ACTIVE",
        "admin_state_up": True,
        "port_security_enabled": True,
        "security_groups": [],
        "tenant_id": project,
        "project_id": project,
        "binding:vnic_type": "normal",
        "description": "",
        "tags": [],
    }


# --- block storage ---


def volume_view(state: State, volume: dict[str, Any], volume_url: str) -> dict[str, Any]:
    """A volume as Cinder v3 shows it."""
    attachments = []
    if volume.get("attached_to"):
        attachments.append({
            "id": volume["id"], "attachment_id": volume["id"], "volume_id": volume["id"], "server_id": volume["attached_to"],
            "device": f"/dev/{volume['target']}" if volume.get("target") else None, "host_name": None, "attached_at": None,
        })
    size = volume["size_gb"]
    return {
        "id": volume["id"],
        "name": volume["name"],
        "description": None,
        "size": int(size) if float(size).is_integer() else size,
        "status": VOLUME_STATUS.get(volume["state"], "error"),
        "attachments": attachments,
        "availability_zone": AVAILABILITY_ZONE,
        "bootable": "true" if volume.get("image") else "false",
        "encrypted": False,
        "multiattach": False,
        "metadata": {},
        "volume_type": "default",
        "snapshot_id": None,
        "source_volid": None,
        "user_id": volume["owner"],
        "os-vol-tenant-attr:tenant_id": project_of(state, volume["owner"])["id"],
        "created_at": iso(volume.get("created_at")),
        "updated_at": iso(volume.get("state_since") or volume.get("created_at")),
        "links": link(f"{volume_url}/volumes/{volume['id']}"),
    }
