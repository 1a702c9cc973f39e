"""DHCP for VM networks: one dnsmasq per network and node, static leases only.

Layout on a node, for network ``N`` with prefix ``P`` (see ``network.py``)::

    [netns of the bridge]  P b N  (bridge) ── P d N  (veth, no addresses)
                                                 │
    [P dhcp-N]                                  eth0  server_ip/prefixlen ── dnsmasq

The server lives in its own namespace so the node itself has no address in (or route
to) a VM network; both veth ends have IPv6 address generation turned off and take the
bridge's MTU. dnsmasq runs as a daemon (``ip netns exec``, argument lists only) with
DNS off (``--port=0``), a ``static`` range (unknown MACs get nothing), its hosts in
``<run_dir>/<id>.hosts``, its leases in ``<id>.leases`` and its PID in ``<id>.pid``.
The driver keeps no state in memory: after a restart of cloudd it finds each dnsmasq by
its PID file, trusted only when ``/proc/<pid>/cmdline`` is a dnsmasq naming our hosts file.

Changes: when only the leases changed, the hosts file is replaced atomically and dnsmasq
gets SIGHUP (it rereads it; same process). dnsmasq refuses to give an address that is
still leased to another MAC ("not using configured address … because it is leased to …")
until that lease expires, so every lease it holds that the spec no longer has is ended
with a DHCPRELEASE sent from inside the namespace (what dnsmasq's ``dhcp_release`` does).
Anything else (subnet, server address, gateway, DNS, MTU, lease time, a repaired veth)
restarts dnsmasq, after dropping the stale leases from its lease file.

dnsmasq drops its privileges (to ``nobody``) before it reads the hosts file, at start and
on every SIGHUP; a hosts file it cannot read means no leases at all, silently. So the run
directory and every directory above it must be searchable by others (checked).
dnsmasq also reads a host name made of digits with an optional unit (``45m``) as a lease
time and ``ignore``/``infinite``/``deprecated`` as keywords (``ignore`` would deny the
VM): such names are left out of the hosts file, the lease itself stays.

Every node hosting a network runs its own server with the same ``server_ip`` and the same
leases; the filter driver keeps DHCP frames from crossing between nodes, so a VM is always
answered by the server of its own node (not this module's concern).
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.ops.network import DEFAULT_PREFIX, PREFIX_RE, DhcpSpec, Lease, NetworkError, check_id, check_mac, device_name, dhcp_namespace

DHCP_IFACE = "eth0"
NETNS_DIR = Path("/run/netns")
HOSTNAME_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# dnsmasq reads these in a dhcp-host line as a lease time or a keyword, not as a name
NOT_A_NAME_RE = re.compile(r"^([0-9]+[smhdw]?|ignore|infinite|deprecated)$")
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 120, 2**31 - 1
MIN_MTU, MAX_MTU = 576, 65535
MAX_DNS = 8
STOP_TIMEOUT = 5.0
CLONE_NEWNET = 0x40000000

Runner = Callable[[list[str]], str]


def run_tool(argv: list[str], timeout: float = 30.0) -> str:
    """Run ``ip`` or ``dnsmasq`` (never through a shell); stdout, or NetworkError with stderr."""
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise NetworkError(f"{argv[0]} is not installed on this node") from None
    except subprocess.CalledProcessError as exc:
        raise NetworkError(f"{' '.join(argv[:6])}…: {(exc.stderr or exc.stdout).strip()[:300]}") from None
    except subprocess.TimeoutExpired:
        raise NetworkError(f"{' '.join(argv[:6])}… timed out", transient=True) from None
    return done.stdout


@dataclass(frozen=True)
class CheckedSpec:
    """A ``DhcpSpec`` whose every field was validated, in canonical form."""

    spec: DhcpSpec
    network: ipaddress.IPv4Network
    server: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    leases: tuple[Lease, ...]  # canonical MAC and address; hostname None when dnsmasq would misread it

    @property
    def interface_address(self) -> str:
        return f"{self.server}/{self.network.prefixlen}"


def _address(value: object, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)  # type: ignore[arg-type]
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise NetworkError(f"invalid {what} {value!r}") from None


def _host_in(network: ipaddress.IPv4Network, value: object, what: str) -> ipaddress.IPv4Address:
    address = _address(value, what)
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise NetworkError(f"{what} {address} is not a host address of {network}")
    return address


def check_spec(spec: DhcpSpec, prefix: str = DEFAULT_PREFIX) -> CheckedSpec:
    """Validate every field of ``spec``; NetworkError naming the first bad one."""
    if spec.prefix != prefix:
        raise NetworkError(f"spec prefix {spec.prefix!r} is not this driver's {prefix!r}")
    _ = (spec.bridge, spec.namespace, spec.host_veth)  # each property validates the id and the prefix
    try:
        network = ipaddress.IPv4Network(spec.subnet, strict=True)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError):
        raise NetworkError(f"invalid subnet {spec.subnet!r}") from None
    if not 8 <= network.prefixlen <= 30:
        raise NetworkError(f"subnet {network} must be a /8 to /30")
    server = _host_in(network, spec.server_ip, "DHCP server address")
    gateway = None if spec.gateway is None else _host_in(network, spec.gateway, "gateway")
    if gateway == server:
        raise NetworkError(f"the gateway {gateway} is the DHCP server's own address")
    if not isinstance(spec.dns, tuple) or len(spec.dns) > MAX_DNS:
        raise NetworkError(f"dns must be a tuple of at most {MAX_DNS} addresses")
    dns = tuple(_address(value, "DNS server") for value in spec.dns)
    for address in dns:
        if address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
            raise NetworkError(f"invalid DNS server {address}")  # 0.0.0.0 would mean dnsmasq itself
    if type(spec.lease_seconds) is not int or not MIN_LEASE_SECONDS <= spec.lease_seconds <= MAX_LEASE_SECONDS:
        raise NetworkError(f"lease_seconds must be an integer from {MIN_LEASE_SECONDS} to {MAX_LEASE_SECONDS}")
    if spec.mtu is not None and (type(spec.mtu) is not int or not MIN_MTU <= spec.mtu <= MAX_MTU):
        raise NetworkError(f"mtu must be an integer from {MIN_MTU} to {MAX_MTU}")
    return CheckedSpec(spec, network, server, gateway, dns, _check_leases(spec.leases, network, server, gateway))


def _check_leases(leases: Iterable[Lease], network: ipaddress.IPv4Network, server: ipaddress.IPv4Address, gateway: ipaddress.IPv4Address | None) -> tuple[Lease, ...]:
    out: list[Lease] = []
    macs: set[str] = set()
    addresses: set[ipaddress.IPv4Address] = set()
    for lease in leases:
        if not isinstance(lease, Lease) or not isinstance(lease.mac, str):
            raise NetworkError(f"invalid lease {lease!r}")
        mac = check_mac(lease.mac)
        address = _host_in(network, lease.ip, f"address of {mac}")
        if address in (server, gateway):
            raise NetworkError(f"{mac}: {address} is the DHCP server's or the gateway's address")
        if mac in macs or address in addresses:
            raise NetworkError(f"{mac} {address}: a MAC or an address is leased twice")
        hostname = lease.hostname
        if hostname is not None and (not isinstance(hostname, str) or not HOSTNAME_RE.fullmatch(hostname)):
            raise NetworkError(f"invalid hostname {hostname!r} for {mac}")
        if hostname is not None and NOT_A_NAME_RE.fullmatch(hostname):
            hostname = None
        macs.add(mac)
        addresses.add(address)
        out.append(Lease(mac, str(address), hostname))
    return tuple(sorted(out, key=lambda lease: ipaddress.IPv4Address(lease.ip)))


def hosts_text(checked: CheckedSpec) -> str:
    """The ``--dhcp-hostsfile``: ``MAC,IP[,hostname]`` per lease, by address."""
    return "".join(f"{lease.mac},{lease.ip}" + (f",{lease.hostname}" if lease.hostname else "") + "\n" for lease in checked.leases)


@dataclass(frozen=True)
class Files:
    hosts: Path
    pid: Path
    leases: Path
    log: Path

    @property
    def temporary(self) -> tuple[Path, Path]:
        return self.hosts.with_suffix(".hosts-tmp"), self.leases.with_suffix(".leases-tmp")

    @classmethod
    def of(cls, run_dir: Path, network_id: str) -> Files:
        base = run_dir / check_id(network_id, "network id")
        return cls(base.with_suffix(".hosts"), base.with_suffix(".pid"), base.with_suffix(".leases"), base.with_suffix(".log"))


def dnsmasq_argv(checked: CheckedSpec, files: Files, log_file: bool = False) -> list[str]:
    """dnsmasq's command line (run inside the namespace); also what identifies a running one."""
    net = checked.network
    argv = [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--interface={DHCP_IFACE}",
        f"--dhcp-range={net.network_address},static,{net.netmask},{checked.spec.lease_seconds}",
        f"--dhcp-hostsfile={files.hosts}",
        f"--dhcp-leasefile={files.leases}",
        f"--pid-file={files.pid}",
        "--dhcp-authoritative",
        f"--dhcp-option=option:router,{checked.gateway}" if checked.gateway else "--dhcp-option=option:router",
    ]
    if checked.dns:
        argv.append("--dhcp-option=option:dns-server," + ",".join(str(a) for a in checked.dns))
    if checked.spec.mtu is not None:
        argv.append(f"--dhcp-option=option:mtu,{checked.spec.mtu}")
    if log_file:
        argv.append(f"--log-facility={files.log}")
    return argv


def parse_leases(text: str) -> list[tuple[str, str]]:
    """(MAC, address) of each IPv4 lease in a dnsmasq lease file
    (``expiry mac address hostname client-id`` lines)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0].isdigit():
            try:
                out.append((check_mac(fields[1]), str(ipaddress.IPv4Address(fields[2]))))
            except (NetworkError, ValueError):
                continue
    return out


def release_packet(mac: str, address: str, server: str) -> bytes:
    """A DHCPRELEASE of ``address`` by ``mac``, as the client would send it to ``server``."""
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0, 0, 0, socket.inet_aton(address), bytes(4), bytes(4), bytes(4),
                         bytes.fromhex(check_mac(mac).replace(":", "")).ljust(16, b"\0"), bytes(64), bytes(128))
    return header + b"\x63\x82\x53\x63" + bytes([53, 1, 7, 54, 4]) + socket.inet_aton(server) + b"\xff"


def socket_in_namespace(namespace: str) -> socket.socket:
    """A UDP socket of network namespace ``namespace``: made by a short-lived thread that
    enters it (setns moves only the calling thread) and then ends."""
    made: list[socket.socket | OSError] = []

    def enter_and_make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        except OSError as exc:
            made.append(exc)

    thread = threading.Thread(target=enter_and_make, name=f"netns-{namespace}")
    thread.start()
    thread.join()
    result = made[0] if made else None
    if not isinstance(result, socket.socket):
        raise NetworkError(f"cannot open a socket in namespace {namespace}: {result}")
    return result


def process_cmdline(pid: int) -> list[str]:
    """The argv of process ``pid``; empty when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


class DnsmasqDhcp:
    """``DhcpDriver`` with one dnsmasq per network, each in its own namespace (module doc).

    ``netns`` is the namespace holding the bridges (None: this process's); ``run`` runs
    ``ip`` and ``dnsmasq`` (tests pass a recorder); ``log_file`` sends dnsmasq's log to
    ``<run_dir>/<id>.log`` instead of syslog (it logs MACs, addresses and host names only).
    Files are named by network id alone: one ``run_dir`` per prefix.
    """

    def __init__(self, run_dir: Path, prefix: str = DEFAULT_PREFIX, netns: str | None = None, *, run: Runner = run_tool, log_file: bool = False) -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise NetworkError(f"invalid device prefix {prefix!r}")
        self.run_dir = Path(run_dir)
        self.prefix = prefix
        self.netns = netns
        self.run = run
        self.log_file = log_file
        self._lock = threading.Lock()
        self._namespace_re = re.compile(re.escape(prefix) + r"dhcp-([0-9a-f]{8})")

    # -- the contract -------------------------------------------------------------------

    def ensure(self, spec: DhcpSpec) -> None:
        checked = check_spec(spec, self.prefix)
        files = Files.of(self.run_dir, spec.network_id)
        argv = dnsmasq_argv(checked, files, self.log_file)
        with self._lock:
            self._prepare_run_dir()
            rebuilt = self._ensure_namespace(checked)
            hosts_changed = self._write_if_changed(files.hosts, hosts_text(checked))
            pid = self.pid(spec.network_id)
            if pid is not None and not rebuilt and process_cmdline(pid) == argv and self._in_namespace(pid, spec.namespace):
                if hosts_changed:
                    os.kill(pid, signal.SIGHUP)
                self._release_stale(checked, files)
                return
            if pid is not None:
                self._stop(pid, files)
            self._drop_stale_leases(checked, files)
            self._start(checked, files, argv)

    def remove(self, network_id: str) -> None:
        files = Files.of(self.run_dir, network_id)
        namespace = dhcp_namespace(self.prefix, network_id)
        host_veth = device_name(self.prefix, "d", network_id)
        with self._lock:
            while (pid := self.pid(network_id)) is not None:
                self._stop(pid, files)
            namespaces = self._namespaces()
            if (self.netns is None or self.netns in namespaces) and host_veth in self._links(self.netns):
                self.run(self._ip(self.netns, "link", "del", "dev", host_veth))
            if namespace in namespaces:
                self.run(["ip", "netns", "del", namespace])
            for path in (files.hosts, files.pid, files.leases, files.log, *files.temporary):
                path.unlink(missing_ok=True)

    def networks(self) -> set[str]:
        """Networks with a dnsmasq of ours running, or a DHCP namespace left behind."""
        ids = {m.group(1) for name in self._namespaces() if (m := self._namespace_re.fullmatch(name))}
        if self.run_dir.is_dir():
            ids |= {path.stem for path in self.run_dir.glob("*.pid") if re.fullmatch(r"[0-9a-f]{8}", path.stem) and self.pid(path.stem) is not None}
        return ids

    def remove_all(self) -> None:
        for network_id in sorted(self.networks()):
            self.remove(network_id)

    def close(self) -> None:
        """Nothing to release: the dnsmasq processes are meant to outlive this object (and
        cloudd); ``remove_all`` ends them."""

    def pid(self, network_id: str) -> int | None:
        """The PID of the network's dnsmasq: the one in its PID file, or failing that one
        found in its namespace; only a dnsmasq whose command line names our hosts file."""
        files = Files.of(self.run_dir, network_id)
        candidates: list[int] = []
        try:
            candidates.append(int(files.pid.read_text().strip()))
        except (OSError, ValueError):
            pass
        for pid in candidates:
            if self._is_ours(pid, files):
                return pid
        namespace = dhcp_namespace(self.prefix, network_id)
        if namespace in self._namespaces():
            for line in self.run(["ip", "netns", "pids", namespace]).split():
                if line.isdigit() and self._is_ours(int(line), files):
                    return int(line)
        return None

    # -- namespace and veth -------------------------------------------------------------

    def _ip(self, netns: str | None, *args: str) -> list[str]:
        return ["ip", *(("-n", netns) if netns else ()), *args]

    def _namespaces(self) -> set[str]:
        out = self.run(["ip", "-j", "netns", "list"]).strip()
        return {entry["name"] for entry in json.loads(out)} if out else set()

    def _links(self, netns: str | None) -> dict[str, dict[str, Any]]:
        out = self.run(self._ip(netns, "-d", "-j", "link", "show")).strip()
        return {link["ifname"]: link for link in json.loads(out)} if out else {}

    def _ensure_namespace(self, checked: CheckedSpec) -> bool:
        """Make the namespace, the veth pair and eth0's address be as the spec says.
        True when something dnsmasq depends on was rebuilt (it must be restarted)."""
        spec = checked.spec
        host_links = self._links(self.netns)
        bridge = host_links.get(spec.bridge)
        if bridge is None or bridge.get("linkinfo", {}).get("info_kind") != "bridge":
            raise NetworkError(f"bridge {spec.bridge} does not exist", transient=True)
        mtu = str(bridge["mtu"])
        rebuilt = False
        if spec.namespace not in self._namespaces():
            self.run(["ip", "netns", "add", spec.namespace])
            rebuilt = True
        ns_links = self._links(spec.namespace)
        host, inner = host_links.get(spec.host_veth), ns_links.get(DHCP_IFACE)
        paired = host is not None and inner is not None and (inner.get("link_index"), host.get("link_index")) == (host.get("ifindex"), inner.get("ifindex"))
        if not paired:
            if host is not None:
                self.run(self._ip(self.netns, "link", "del", "dev", spec.host_veth))
            if DHCP_IFACE in self._links(spec.namespace):
                self.run(self._ip(spec.namespace, "link", "del", "dev", DHCP_IFACE))
            self.run(self._ip(self.netns, "link", "add", spec.host_veth, "mtu", mtu, "type", "veth",
                              "peer", "name", DHCP_IFACE, "mtu", mtu, "netns", spec.namespace))
            self.run(self._ip(self.netns, "link", "set", "dev", spec.host_veth, "addrgenmode", "none"))
            self.run(self._ip(spec.namespace, "link", "set", "dev", DHCP_IFACE, "addrgenmode", "none"))
            host, inner, rebuilt = {}, {}, True
        assert host is not None and inner is not None
        if host.get("master") != spec.bridge or "UP" not in host.get("flags", []) or str(host.get("mtu")) != mtu:
            self.run(self._ip(self.netns, "link", "set", "dev", spec.host_veth, "mtu", mtu, "master", spec.bridge, "up"))
        if str(inner.get("mtu")) != mtu:
            self.run(self._ip(spec.namespace, "link", "set", "dev", DHCP_IFACE, "mtu", mtu))
        addresses = json.loads(self.run(self._ip(spec.namespace, "-j", "addr", "show", "dev", DHCP_IFACE)) or "[]")
        have = {f"{a['local']}/{a['prefixlen']}" for entry in addresses for a in entry.get("addr_info", []) if a.get("family") == "inet"}
        if have != {checked.interface_address}:
            self.run(self._ip(spec.namespace, "addr", "flush", "dev", DHCP_IFACE))
            self.run(self._ip(spec.namespace, "addr", "add", checked.interface_address, "dev", DHCP_IFACE))
            rebuilt = True
        if "UP" not in inner.get("flags", []):
            self.run(self._ip(spec.namespace, "link", "set", "dev", DHCP_IFACE, "up"))
        if "UP" not in ns_links.get("lo", {}).get("flags", []):
            self.run(self._ip(spec.namespace, "link", "set", "dev", "lo", "up"))  # DHCPRELEASE goes to eth0's address through lo
        return rebuilt

    # -- files --------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.run_dir.stat().st_mode & stat.S_IXOTH:
            self.run_dir.chmod(0o755)
        for directory in (self.run_dir.resolve(), *self.run_dir.resolve().parents):
            if not directory.stat().st_mode & stat.S_IXOTH:
                raise NetworkError(f"{directory} is not searchable by others: dnsmasq reads its hosts file "
                                   f"after dropping its privileges, so {self.run_dir} must be reachable by any user")

    @staticmethod
    def _write_if_changed(path: Path, text: str) -> bool:
        try:
            if path.read_text() == text:
                return False
        except OSError:
            pass
        tmp = path.with_suffix(path.suffix + "-tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        return True

    # -- the process --------------------------------------------------------------------

    def _is_ours(self, pid: int, files: Files) -> bool:
        cmdline = process_cmdline(pid)
        return bool(cmdline) and Path(cmdline[0]).name == "dnsmasq" and f"--dhcp-hostsfile={files.hosts}" in cmdline

    @staticmethod
    def _in_namespace(pid: int, namespace: str) -> bool:
        try:
            mine, named = os.stat(f"/proc/{pid}/ns/net"), os.stat(NETNS_DIR / namespace)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)

    def _start(self, checked: CheckedSpec, files: Files, argv: list[str]) -> None:
        files.pid.unlink(missing_ok=True)
        self.run(["ip", "netns", "exec", checked.spec.namespace, *argv])  # returns once dnsmasq serves (or failed)
        if self.pid(checked.spec.network_id) is None:
            raise NetworkError(f"dnsmasq of network {checked.spec.network_id} did not start", transient=True)

    def _stop(self, pid: int, files: Files) -> None:
        """SIGTERM, then SIGKILL; each only while ``pid`` is still our dnsmasq. An ended one is
        a zombie until its parent (init) reaps it: its empty command line counts as ended."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self._is_ours(pid, files):
                break
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_TIMEOUT
            while self._is_ours(pid, files) and time.monotonic() < deadline:
                time.sleep(0.02)
        if self._is_ours(pid, files):
            raise NetworkError(f"dnsmasq {pid} does not end", transient=True)
        files.pid.unlink(missing_ok=True)

    # -- leases -------------------------------------------------------------------------

    @staticmethod
    def _stale(checked: CheckedSpec, files: Files) -> list[tuple[str, str]]:
        try:
            held = parse_leases(files.leases.read_text())
        except OSError:
            return []
        wanted = {(lease.mac, lease.ip) for lease in checked.leases}
        return [pair for pair in held if pair not in wanted]

    def _release_stale(self, checked: CheckedSpec, files: Files) -> None:
        stale = self._stale(checked, files)
        if not stale:
            return
        with socket_in_namespace(checked.spec.namespace) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, DHCP_IFACE.encode())
            for mac, address in stale:
                sock.sendto(release_packet(mac, address, str(checked.server)), (str(checked.server), 67))

    def _drop_stale_leases(self, checked: CheckedSpec, files: Files) -> None:
        """With dnsmasq stopped: keep only the leases the spec still has."""
        if not self._stale(checked, files):
            return
        wanted = {(lease.mac, lease.ip) for lease in checked.leases}
        kept = [line for line in files.leases.read_text().splitlines(keepends=True) if set(parse_leases(line)) & wanted]
        self._write_if_changed(files.leases, "".join(kept))
