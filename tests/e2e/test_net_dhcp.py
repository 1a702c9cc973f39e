"""DnsmasqDhcp for real: a "hypervisor" namespace with the network's bridge, two VM
namespaces on it, and our own DHCP client (``dhcp_client.py``) inside the VMs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from cloudd.ops.dhcp import DnsmasqDhcp, Files, process_cmdline
from cloudd.ops.network import DhcpSpec, Lease
from tests.e2e.netns import Namespaces, netns  # noqa: F401

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
MAC1, MAC2, MAC3, STRANGER = "52:54:00:d1:00:01", "52:54:00:d1:00:02", "52:54:00:d1:00:03", "52:54:00:d1:00:99"


@dataclass
class Lab:
    spaces: Namespaces
    hypervisor: str
    vms: list[str]
    driver: DnsmasqDhcp
    spec: DhcpSpec

    def lease(self, vm: int, mac: str, timeout: float = 5.0) -> dict[str, Any]:
        """What our DHCP client, run in VM ``vm`` (0 or 1) with ``mac``, was given."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.vms[vm], sys.executable, "-m", "tests.e2e.dhcp_client", "--iface", "veth0", "--mac", mac, "--timeout", str(timeout)],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout + 10, check=False,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        assert (done.returncode == 0) == ("error" not in result), done.stderr
        return result

    def pid(self) -> int | None:
        return self.driver.pid(self.spec.network_id)

    def log(self) -> str:
        path = Files.of(self.driver.run_dir, self.spec.network_id).log
        return path.read_text() if path.exists() else ""


@pytest.fixture
def lab(netns: Namespaces) -> Iterator[Lab]:  # noqa: F811
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (scripts/install.sh installs dnsmasq-base)")
    prefix, network_id = "t" + secrets.token_hex(1), secrets.token_hex(4)
    spec = DhcpSpec(network_id, "10.77.0.0/24", "10.77.0.2", gateway="10.77.0.1", dns=("10.77.0.1",), mtu=1400, prefix=prefix,
                    leases=(Lease(MAC1, "10.77.0.10", "vm-one"),))
    hypervisor = netns.add("hv")
    netns.run(hypervisor, ["ip", "link", "add", spec.bridge, "type", "bridge"])
    netns.run(hypervisor, ["ip", "link", "set", spec.bridge, "up"])
    vms = []
    for n in (1, 2):
        vm = netns.add(f"vm{n}")
        netns.veth(hypervisor, f"p{n}", vm, "veth0")
        netns.run(hypervisor, ["ip", "link", "set", f"p{n}", "master", spec.bridge])
        vms.append(vm)
    run_dir = Path(tempfile.mkdtemp(prefix="cloudd-test-dhcp-"))  # under /tmp: dnsmasq (nobody) must reach it
    run_dir.chmod(0o755)
    driver = DnsmasqDhcp(run_dir, prefix=prefix, netns=hypervisor, log_file=True)
    try:
        yield Lab(netns, hypervisor, vms, driver, spec)
    finally:
        try:
            driver.remove_all()
        finally:  # the safety net: no dnsmasq and no DHCP namespace of ours outlives the test
            pid = driver.pid(network_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", spec.namespace], capture_output=True, check=False)
            shutil.rmtree(run_dir, ignore_errors=True)


def test_known_mac_gets_its_address_and_a_stranger_none(lab: Lab) -> None:
    lab.driver.ensure(lab.spec)
    assert lab.lease(0, MAC1) == {
        "ip": "10.77.0.10", "mask": "255.255.255.0", "prefixlen": 24, "router": "10.77.0.1", "dns": ["10.77.0.1"],
        "mtu": 1400, "hostname": "vm-one", "lease": 3600, "server": "10.77.0.2",
    }
    assert lab.lease(1, STRANGER, timeout=2.5) == {"error": "no offer"}
    assert "DHCPDISCOVER(eth0) 52:54:00:d1:00:99 no address available" in lab.log()
    assert lab.driver.networks() == {lab.spec.network_id}
    # the host end of the veth is in the bridge without any address; the server's end has one
    host = json.loads(lab.spaces.run(lab.hypervisor, ["ip", "-j", "addr", "show", "dev", lab.spec.host_veth]).stdout)[0]
    assert host["master"] == lab.spec.bridge and host["addr_info"] == []
    inner = json.loads(lab.spaces.run(lab.spec.namespace, ["ip", "-j", "-4", "addr", "show", "dev", "eth0"]).stdout)[0]
    assert [(a["local"], a["prefixlen"]) for a in inner["addr_info"]] == [("10.77.0.2", 24)]


def test_no_gateway_means_no_router(lab: Lab) -> None:
    lab.driver.ensure(replace(lab.spec, gateway=None, dns=(), mtu=None))
    got = lab.lease(0, MAC1)
    assert (got["ip"], got["router"], got["dns"], got["mtu"]) == ("10.77.0.10", None, [], None)


def test_lease_changes_reload_in_place(lab: Lab) -> None:
    lab.driver.ensure(lab.spec)
    pid = lab.pid()
    assert pid is not None and lab.lease(0, MAC1)["ip"] == "10.77.0.10"
    lab.driver.ensure(lab.spec)  # nothing changed: nothing done
    assert lab.pid() == pid and lab.log().count("read ") == 1

    added = replace(lab.spec, leases=(*lab.spec.leases, Lease(MAC2, "10.77.0.11")))
    lab.driver.ensure(added)
    assert lab.pid() == pid
    assert lab.lease(1, MAC2)["ip"] == "10.77.0.11"

    # 10.77.0.10 moves from MAC1 (still leased) to MAC3: the stale lease is released
    moved = replace(lab.spec, leases=(Lease(MAC2, "10.77.0.11"), Lease(MAC3, "10.77.0.10", "vm-three")))
    lab.driver.ensure(moved)
    assert lab.pid() == pid
    got = lab.lease(0, MAC3)
    assert (got["ip"], got["hostname"]) == ("10.77.0.10", "vm-three")
    assert lab.lease(0, MAC1, timeout=2.5) == {"error": "no offer"}


def test_server_change_restarts_and_repairs(lab: Lab) -> None:
    lab.driver.ensure(lab.spec)
    first = lab.pid()
    changed = replace(lab.spec, subnet="10.78.0.0/16", server_ip="10.78.0.2", gateway="10.78.0.1", leases=(Lease(MAC1, "10.78.3.4"),))
    lab.driver.ensure(changed)
    second = lab.pid()
    assert second not in (None, first)
    got = lab.lease(0, MAC1)
    assert (got["ip"], got["mask"], got["router"], got["server"]) == ("10.78.3.4", "255.255.0.0", "10.78.0.1", "10.78.0.2")

    lab.spaces.run(lab.hypervisor, ["ip", "link", "del", lab.spec.host_veth])  # deleted by hand
    lab.driver.ensure(changed)
    assert lab.pid() not in (None, second)
    assert lab.lease(0, MAC1)["ip"] == "10.78.3.4"


def test_a_new_driver_adopts_the_running_server(lab: Lab) -> None:
    lab.driver.ensure(lab.spec)
    pid = lab.pid()
    again = DnsmasqDhcp(lab.driver.run_dir, prefix=lab.spec.prefix, netns=lab.hypervisor, log_file=True)  # cloudd restarted
    assert again.networks() == {lab.spec.network_id} and again.pid(lab.spec.network_id) == pid
    again.ensure(lab.spec)
    assert again.pid(lab.spec.network_id) == pid


def test_remove_leaves_nothing(lab: Lab) -> None:
    lab.driver.ensure(lab.spec)
    pid = lab.pid()
    assert pid is not None
    lab.driver.remove(lab.spec.network_id)
    cmdline = process_cmdline(pid)
    assert not cmdline or Path(cmdline[0]).name != "dnsmasq"  # gone, or a zombie not reaped yet
    assert lab.spec.namespace not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    assert lab.spec.host_veth not in lab.spaces.run(lab.hypervisor, ["ip", "-br", "link"]).stdout
    assert list(lab.driver.run_dir.iterdir()) == []
    assert lab.driver.networks() == set()
    lab.driver.remove(lab.spec.network_id)  # absent: nothing to do
    assert lab.lease(0, MAC1, timeout=2.5) == {"error": "no offer"}

