"""Networks end to end: three cloudd processes whose network agents each act inside a
"hypervisor" namespace (joined by a veth underlay), driven only through the API.

VMs run under libvirt's test driver (no qemu), so each VM's NIC is played by a namespace
whose veth's hypervisor end carries the tap name libvirt would give it; the agent must
put it in the bridge, filter it and serve it DHCP. Traffic crosses hypervisors over VXLAN.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from cloudd.ops.dhcp import DnsmasqDhcp
from cloudd.ops.network import device_name
from tests.cluster.harness import LocalCluster, wait_for
from tests.e2e.netns import Namespaces, require_netns_tools

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
NODES = ("node1", "node2", "node3")


class Lab:
    def __init__(self, spaces: Namespaces, cluster: LocalCluster, hv: dict[str, str]) -> None:
        self.spaces, self.cluster, self.hv = spaces, cluster, hv
        self.vm_ns: dict[str, str] = {}

    def prefix(self, node: str) -> str:
        return f"n{node[-1]}"

    def plug(self, vm: dict[str, Any], nic: dict[str, Any]) -> str:
        """What libvirt does when the VM starts: its tap appears on the VM's node (here a
        veth whose other end is the VM's namespace, with the port's MAC)."""
        ns = self.spaces.add(f"v{len(self.vm_ns)}")
        self.vm_ns[nic["port"]] = ns
        tap = device_name(self.prefix(vm["node"]), "t", nic["port"])
        self.spaces.veth(self.hv[vm["node"]], tap, ns, "eth0")
        self.spaces.run(ns, ["ip", "link", "set", "eth0", "down"])
        self.spaces.run(ns, ["ip", "link", "set", "eth0", "address", nic["mac"]])
        self.spaces.run(ns, ["ip", "link", "set", "eth0", "up"])
        return ns

    def dhcp(self, ns: str, mac: str) -> dict[str, Any]:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.e2e.dhcp_client", "--iface", "eth0", "--mac", mac, "--timeout", "4"],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        )
        return json.loads(done.stdout)

    def ping(self, ns: str, ip: str) -> bool:
        return self.spaces.run(ns, ["busybox", "ping", "-c", "2", "-W", "2", ip], check=False).returncode == 0

    def master(self, node: str, port: str) -> str | None:
        """The bridge the port's tap is in on ``node`` (None: no such tap or loose)."""
        out = self.spaces.run(self.hv[node], ["ip", "-j", "link", "show", device_name(self.prefix(node), "t", port)], check=False)
        return json.loads(out.stdout)[0].get("master") if out.returncode == 0 else None

    def links(self, node: str) -> set[str]:
        out = self.spaces.run(self.hv[node], ["ip", "-j", "link", "show"])
        return {link["ifname"] for link in json.loads(out.stdout)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_netns_tools()
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (scripts/install.sh installs dnsmasq-base)")
    spaces = Namespaces()
    cluster = None
    hv: dict[str, str] = {}
    try:
        underlay = spaces.add("ul")
        spaces.run(underlay, ["ip", "link", "add", "ul", "type", "bridge"])
        spaces.run(underlay, ["ip", "link", "set", "ul", "up"])
        settings: dict[str, dict[str, Any]] = {}
        for n, node in enumerate(NODES, 1):
            hv[node] = spaces.add(f"hv{n}")
            spaces.veth(hv[node], "ul0", underlay, f"ul{n}")
            spaces.run(underlay, ["ip", "link", "set", f"ul{n}", "master", "ul"])
            spaces.addr(hv[node], "ul0", f"192.0.2.{n}/24")
            settings[node] = {"driver": "linux", "prefix": f"n{n}", "netns": hv[node], "underlay": f"192.0.2.{n}:4789", "usage_interval_s": 1.0}
        cluster = LocalCluster(tmp_path_factory.mktemp("net"), first_host=131, network=settings)
        cluster.init(3)
        yield Lab(spaces, cluster, hv)
    finally:
        if cluster is not None:
            cluster.close()
        for n, node in enumerate(NODES, 1):  # the dnsmasq processes the nodes started, by their PID files
            run_dir = Path("/run/cloudd") / f"n{n}-dhcp"
            DnsmasqDhcp(run_dir, prefix=f"n{n}", netns=hv.get(node)).remove_all()
            shutil.rmtree(run_dir, ignore_errors=True)
        spaces.close()


def create_vm(api: Any, name: str, networks: list[dict[str, Any]], index: str | None = None) -> dict[str, Any]:
    headers = {"X-Cloudd-Min-Index": index} if index else {}
    reply = api.post("/api/v1/vms", json={"name": name, "flavor": "net", "networks": networks}, headers=headers)
    assert reply.status_code == 202, reply.text
    return reply.json()


def test_vms_on_different_hypervisors_share_a_network_get_dhcp_and_are_filtered(lab: Lab) -> None:
    cluster = lab.cluster
    admin = cluster.api("node2")  # a follower serves all of it too
    assert admin.post("/api/v1/flavors", json={"name": "net", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}).status_code == 201
    lan = admin.post("/api/v1/networks", json={"name": "lan", "subnet": "10.50.0.0/24", "dns": ["10.50.0.1"]})
    assert lan.status_code == 201, lan.text
    other = admin.post("/api/v1/networks", json={"name": "other", "subnet": "10.51.0.0/24"}, headers={"X-Cloudd-Min-Index": lan.headers["X-Cloudd-Index"]})
    assert other.status_code == 201, other.text
    net_id = lan.json()["id"]
    index = other.headers["X-Cloudd-Index"]
    vms = [create_vm(admin, f"net{i}", [{"network": "lan"}], index) for i in range(3)]
    vms.append(create_vm(admin, "stranger", [{"network": "other", "ip": "10.51.0.9"}], index))
    def all_running() -> list[dict[str, Any]] | None:
        items = admin.get("/api/v1/vms").json()["items"]
        return items if len(items) == 4 and all(v["state"] == "running" for v in items) else None

    placed = wait_for(all_running, timeout=60, what="4 running VMs")
    by_name = {v["name"]: v for v in placed}
    lan_vms = [by_name[f"net{i}"] for i in range(3)]
    assert len({v["node"] for v in lan_vms}) >= 2, "placement put every VM on one node"
    # each VM's NIC: plugged (as libvirt would), put in its bridge by the agent, given its address by DHCP
    spaces = {}
    for vm in [*lan_vms, by_name["stranger"]]:
        (nic,) = vm["nics"]
        spaces[vm["name"]] = ns = lab.plug(vm, nic)
        network = nic["network"]
        wait_for(lambda: lab.master(vm["node"], nic["port"]) == device_name(lab.prefix(vm["node"]), "b", network), timeout=30, what="the tap in its bridge")
        lease = lab.dhcp(ns, nic["mac"])
        assert lease.get("ip") == nic["ips"][0], lease
        lab.spaces.run(ns, ["ip", "addr", "add", f"{lease['ip']}/24", "dev", "eth0"])
    assert lease["router"] == "10.51.0.1"
    first, second = lan_vms[0], next(v for v in lan_vms if v["node"] != lan_vms[0]["node"])
    assert lab.ping(spaces[first["name"]], second["nics"][0]["ips"][0])  # across hypervisors, over VXLAN
    # a VM on another network with an address in lan's subnet reaches nobody on lan
    stranger = spaces["stranger"]
    lab.spaces.run(stranger, ["ip", "addr", "flush", "dev", "eth0"])
    lab.spaces.run(stranger, ["ip", "addr", "add", "10.50.0.99/24", "dev", "eth0"])
    assert not lab.ping(stranger, first["nics"][0]["ips"][0])
    # spoofing: another address than its own gets nowhere
    spoofer = spaces[second["name"]]
    lab.spaces.run(spoofer, ["ip", "addr", "add", "10.50.0.200/24", "dev", "eth0"])
    assert not lab.spaces.run(spoofer, ["busybox", "ping", "-c", "2", "-W", "2", "-I", "10.50.0.200", first["nics"][0]["ips"][0]], check=False).returncode == 0
    # the counters reach the API per address
    def counted() -> Any:
        ips = {i["ip"]: i for i in admin.get("/api/v1/ips", params={"all": "true"}).json()["items"]}
        usage = ips[second["nics"][0]["ips"][0]]["usage"] or {}
        return usage if usage.get("tx_packets", 0) > 0 and usage.get("dropped_packets", 0) > 0 else None

    usage = wait_for(counted, timeout=30, what="port counters in the API")
    assert usage["rx_packets"] > 0

    # a tap removed from its bridge by hand is put back
    node = first["node"]
    port = first["nics"][0]["port"]
    lab.spaces.run(lab.hv[node], ["ip", "link", "set", device_name(lab.prefix(node), "t", port), "nomaster"])
    wait_for(lambda: lab.master(node, port) == device_name(lab.prefix(node), "b", net_id), timeout=30, what="the tap back in its bridge")

    # deleting the VMs leaves nothing of the networks on their hypervisors
    for vm in placed:
        assert admin.delete(f"/api/v1/vms/{vm['id']}").status_code == 202
    wait_for(lambda: admin.get("/api/v1/vms").json()["total"] == 0, timeout=60, what="the VMs gone")
    for node_name in NODES:
        wait_for(lambda: not {l for l in lab.links(node_name) if l.startswith(lab.prefix(node_name) + "b") or l.startswith(lab.prefix(node_name) + "x")},
                 timeout=30, what=f"no bridge left on {node_name}")
    assert admin.get("/api/v1/ports", params={"all": "true"}).json()["total"] == 0
    assert admin.delete(f"/api/v1/networks/{net_id}").status_code == 200


def test_bad_network_input_gets_a_clear_4xx_and_changes_nothing(lab: Lab) -> None:
    admin = lab.cluster.api("node3")
    if all(f["name"] != "net" for f in admin.get("/api/v1/flavors").json()["items"]):
        assert admin.post("/api/v1/flavors", json={"name": "net", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}).status_code == 201
    created = admin.post("/api/v1/networks", json={"name": "strict", "subnet": "10.60.0.0/24"})  # committed after the flavor
    assert created.status_code == 201, created.text
    vm = create_vm(admin, "holder", [{"network": "strict", "ip": "10.60.0.10"}], created.headers["X-Cloudd-Index"])
    wait_for(lambda: admin.get(f"/api/v1/vms/{vm['id']}").status_code == 200, what="the VM")
    before = (admin.get("/api/v1/networks").json(), admin.get("/api/v1/ports", params={"all": "true"}).json())
    cases = [
        ("POST", "/api/v1/networks", {"name": "overlap", "subnet": "10.60.0.128/25"}, 409, "overlaps"),
        ("POST", "/api/v1/networks", {"name": "bits", "subnet": "10.61.0.5/24"}, 400, "subnet"),
        ("POST", "/api/v1/networks", {"name": "gw", "subnet": "10.61.0.0/24", "gateway": "10.62.0.1"}, 400, "gateway"),
        ("POST", f"/api/v1/vms/{vm['id']}/nics", {"network": "strict", "ip": "10.99.0.7"}, 400, "outside"),
        ("POST", f"/api/v1/vms/{vm['id']}/nics", {"network": "strict", "ip": "10.60.0.10"}, 409, "already assigned"),
        ("POST", f"/api/v1/vms/{vm['id']}/nics", {"network": "strict", "ip": "10.60.0.254"}, 400, "reserved"),
        ("POST", f"/api/v1/vms/{vm['id']}/nics", {"network": "strict", "mac": "01:00:5e:00:00:01"}, 400, "unicast"),
        ("POST", f"/api/v1/vms/{vm['id']}/nics", {"network": "nowhere"}, 404, "not found"),
        ("DELETE", f"/api/v1/networks/{created.json()['id']}", None, 409, "ports"),
    ]
    for method, path, body, status, words in cases:
        reply = admin.request(method, path, json=body)
        assert reply.status_code == status, (path, body, reply.text)
        assert words in reply.json()["error"]["message"], reply.text
    # a user may not take a MAC outside cloudd's range (it could be the router's)
    assert admin.post("/api/v1/users", json={"name": "mallory", "password": "mallory-pass-1"}).status_code == 201
    token = wait_for(lambda: httpx.post(lab.cluster.nodes["node3"].url + "/api/v1/auth/login", json={"username": "mallory", "password": "mallory-pass-1"}).json().get("token"),
                     what="mallory's login")
    mallory = lab.cluster.api("node3", token)
    reply = mallory.post("/api/v1/vms", json={"name": "thief", "flavor": "net", "networks": [{"network": "strict", "mac": "00:11:22:33:44:55"}]})
    assert reply.status_code == 403 and "52:54:00" in reply.json()["error"]["message"], reply.text
    assert mallory.post("/api/v1/networks", json={"name": "mine", "subnet": "10.70.0.0/24", "segment": "vlan", "segment_id": 7, "uplink": "eth0"}).status_code == 403
    after = (admin.get("/api/v1/networks").json(), admin.get("/api/v1/ports", params={"all": "true"}).json())
    assert after == before
    assert admin.delete(f"/api/v1/vms/{vm['id']}").status_code == 202
    wait_for(lambda: admin.get("/api/v1/ports", params={"all": "true"}).json()["total"] == 0, timeout=60, what="the port released")
    assert admin.delete(f"/api/v1/networks/{created.json()['id']}").status_code == 200
