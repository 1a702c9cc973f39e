"""A real TCG guest on a network built by the real drivers: NetlinkLinks makes the bridge
(host namespace: libvirt creates the guest's tap there) and NftFilter filters the guest's
tap and a "peer VM" (a namespace joined by a veth whose bridge end is named like a port's
tap). The guest gets its address from ``cloudd.ip=`` on its kernel command line.

Proves: the tap libvirt made is in the bridge and shows in ``live_nics``; the peer pings the
guest through the bridge and both ports' counters move; the guest's inbound profile really
applies to the libvirt tap (``closed`` drops the echo requests, ``open`` lets them in again);
a NIC hot-plugged with ``attach_nic_live`` lands in the bridge and goes with
``detach_nic_live``. Every device, the nft table and the domain are removed afterwards.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from cloudd.ops.compute import DomainSpec, NicSpec
from cloudd.ops.libvirt_compute import LibvirtCompute
from cloudd.ops.netlink_links import NetlinkLinks
from cloudd.ops.network import NetworkSpec, PortCounters, PortSpec
from cloudd.ops.nft_filter import NftFilter
from tests.e2e.guest_helpers import serial, wait_for
from tests.e2e.netns import Namespaces, netns  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GUEST_IP, PEER_IP = "10.77.0.10", "10.77.0.20"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def master_of(device: str) -> str | None:
    """The bridge ``device`` (host namespace) is enslaved to, None when it has none or is gone."""
    done = subprocess.run(["ip", "-j", "link", "show", "dev", device], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    master: str | None = json.loads(done.stdout)[0].get("master")
    return master


def random_mac() -> str:
    return "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))


def test_a_guest_nic_in_a_netlink_bridge_is_filtered_and_reachable(embedded: tuple[LibvirtCompute, Path], guest: Path, netns: Namespaces) -> None:  # noqa: F811
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (its ping applet is used)")
    drv, root = embedded
    tag = secrets.token_hex(1)
    prefix, vm_id, net_id = f"g{tag}", f"net{tag}", secrets.token_hex(4)
    port_ids = iter(secrets.token_hex(4) for _ in range(3))
    vm_port = PortSpec(next(port_ids), net_id, random_mac(), ipv4=(GUEST_IP,), prefix=prefix)
    peer_port = PortSpec(next(port_ids), net_id, random_mac(), ipv4=(PEER_IP,), prefix=prefix)
    hot_port = PortSpec(next(port_ids), net_id, random_mac(), prefix=prefix)
    log = root / f"{vm_id}.serial.log"
    links = NetlinkLinks(prefix)
    nft = NftFilter(prefix)

    def counters(port: PortSpec) -> PortCounters:
        return nft.counters().get(port.port_id, PortCounters())

    def ping(count: int = 1) -> bool:
        argv = ["busybox", "ping", "-c", str(count), "-W", "1", GUEST_IP]
        return netns.run(peer, argv, check=False).returncode == 0

    with ExitStack() as cleanup:  # runs every step (last registered first), even after a failure
        cleanup.callback(links.close)
        cleanup.callback(links.remove_network, net_id)
        cleanup.callback(nft.remove_all)
        for port in (vm_port, hot_port):  # libvirt deletes its taps; a leftover goes here
            cleanup.callback(links.remove_port, port.port_id)
        cleanup.callback(drv.undefine, vm_id)

        links.ensure_network(NetworkSpec(net_id, prefix, segment_id=int(net_id[:6], 16) or 1, local_port=free_udp_port()))
        peer = netns.add("p")
        netns.veth(None, peer_port.tap, peer, "eth0")  # removed with the namespace (and by name)
        for argv in (["down"], ["address", peer_port.mac], ["up"]):  # the link-local follows the MAC
            netns.run(peer, ["ip", "link", "set", "eth0", *argv])
        netns.addr(peer, "eth0", f"{PEER_IP}/24")
        for port in (vm_port, peer_port, hot_port):
            nft.apply_port(port)
        assert links.ensure_port(peer_port)
        assert not links.ensure_port(vm_port)  # no tap until the guest runs

        nic = NicSpec(vm_port.mac, vm_port.bridge, vm_port.tap)
        drv.define(DomainSpec(vm_id, "guest", 1, 128, (), domain_type="qemu", serial_log=str(log), interfaces=(nic,),
                              kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"),
                              cmdline=f"console=ttyS0 cloudd.ip={GUEST_IP}/24"))
        drv.start(vm_id)
        assert links.ensure_port(vm_port)
        assert master_of(vm_port.tap) == vm_port.bridge and master_of(peer_port.tap) == vm_port.bridge
        assert drv.domains()[vm_id].live_nics == {vm_port.mac: vm_port.tap}
        wait_for(lambda: f"CLOUDD-GUEST-IP {GUEST_IP}/24" in serial(log), 60, "the guest's address")
        assert "CLOUDD-GUEST-IP failed" not in serial(log)

        wait_for(ping, 30, f"the peer's ping of the guest ({GUEST_IP})")
        assert ping(3)
        seen = counters(vm_port)
        assert seen.tx_packets > 0 and seen.rx_packets > 0 and seen.tx_bytes > 0 and seen.rx_bytes > 0, seen
        peer_seen = counters(peer_port)
        assert peer_seen.tx_packets > 0 and peer_seen.rx_packets > 0, peer_seen

        nft.apply_port(replace(vm_port, profile="closed"))  # echo requests are not let in any more
        assert not ping()
        assert counters(vm_port).dropped_packets > seen.dropped_packets
        nft.apply_port(vm_port)
        wait_for(ping, 10, "the ping once the profile is open again")
        assert counters(vm_port).tx_packets > seen.tx_packets  # the counters survived the rebuilds

        drv.attach_nic_live(vm_id, NicSpec(hot_port.mac, hot_port.bridge, hot_port.tap))
        assert drv.domains()[vm_id].live_nics == {vm_port.mac: vm_port.tap, hot_port.mac: hot_port.tap}
        assert links.ensure_port(hot_port) and master_of(hot_port.tap) == hot_port.bridge
        drv.detach_nic_live(vm_id, hot_port.mac)  # the guest's acpiphp ejects the device
        wait_for(lambda: hot_port.mac not in drv.domains()[vm_id].live_nics, 30, "the hot-plugged NIC to go")
        wait_for(lambda: master_of(hot_port.tap) is None, 10, "libvirt to delete the hot-plugged tap")
        assert ping()  # the first NIC is untouched
