"""DRBD 9: one resource per volume, replicated between exactly two storage nodes.

Each side's backing disk is an LV made by ``lvm.LvmVolumes``; the resource ``cloudd-<volume_id>``
is described in ``/etc/drbd.d/cloudd-<volume_id>.res`` (``render_config``) and driven with
``drbdadm`` through the injected runner. The agent of each storage node calls ``DrbdVolumes``
for its own side; bringing the pair together (which side is Primary and exports the volume)
is the manager's decision.

Roles are changed only on request: the config sets ``auto-promote no`` so that opening the
device (an iSCSI export does) never promotes a side behind the manager's back. No quorum is
configured: two nodes without a tiebreaker cannot keep quorum after losing one, so the
manager fences a lost peer before it calls ``promote_after_peer_loss``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.ops.storage import Runner, StorageError, check_volume_id, run_command

RESOURCE_PREFIX = "cloudd-"
HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
DISK_RE = re.compile(r"^/dev(?:/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}){1,4}$")
MAX_MINOR = 1048575  # DRBD minors are 20 bits
MAX_NODE_ID = 31
MINOR_RANGE = (100, MAX_MINOR)
PORT_RANGE = (7789, 7999)
NOT_UP = ("No such resource", "unknown resource")  # drbdsetup/the kernel on a resource that is not up here
NO_CONFIG = "not defined in your config"  # drbdadm without the .res file


@dataclass(frozen=True)
class DrbdPeer:
    node: str  # the host's name as ``uname -n`` prints it (DRBD matches ``on <node>`` with it)
    host: str  # the IP address DRBD replicates over
    node_id: int
    disk: str  # the backing block device on that node, e.g. /dev/vg0/cloudd-<volume_id>


@dataclass(frozen=True)
class DrbdResource:
    volume_id: str
    minor: int
    port: int  # the same TCP port on both nodes
    peers: tuple[DrbdPeer, DrbdPeer]

    @property
    def name(self) -> str:
        return resource_name(self.volume_id)

    @property
    def device(self) -> str:
        return f"/dev/drbd{self.minor}"


@dataclass(frozen=True)
class DrbdStatus:
    """One side's view of a resource, from ``drbdsetup status --json``."""

    name: str
    role: str  # Primary, Secondary
    disk_state: str  # UpToDate, Inconsistent, Outdated, Consistent, Diskless, …
    peer_role: str  # Primary, Secondary, Unknown
    peer_disk_state: str  # UpToDate, …, DUnknown when the peer is not connected
    connection_state: str  # Connected, Connecting, StandAlone, …
    replication_state: str  # Established, SyncSource, SyncTarget, Off, …

    @property
    def peer_connected(self) -> bool:
        return self.connection_state == "Connected"


def resource_name(volume_id: str) -> str:
    return RESOURCE_PREFIX + check_volume_id(volume_id)


def drbd_unavailable_reason(search_path: str | None = None, proc_drbd: str = "/proc/drbd") -> str | None:
    """Why DRBD volumes cannot work on this host, or None. ``search_path`` is where to look for
    ``drbdadm`` (PATH when None); ``proc_drbd`` lets tests simulate a host with the module."""
    if shutil.which("drbdadm", path=search_path) is None:
        return "drbdadm is not installed (apt install drbd-utils)"
    try:
        first_line = Path(proc_drbd).read_text(encoding="utf-8").partition("\n")[0]
    except OSError:
        return "this kernel has no DRBD module loaded (no /proc/drbd)"
    match = re.match(r"version: (\d+)\.", first_line)
    if match is None or int(match.group(1)) < 9:
        return f"the kernel's DRBD module is not DRBD 9 ({first_line.strip() or 'no version'}): install drbd-dkms"
    return None


def allocate_minor_port(
    used_minors: Iterable[int], used_ports: Iterable[int], minors: tuple[int, int] = MINOR_RANGE, ports: tuple[int, int] = PORT_RANGE
) -> tuple[int, int]:
    """The lowest free minor and port. Pass what is in use on *both* nodes: the resource takes
    the same minor and port on each side."""
    return _lowest_free(used_minors, minors, "minor"), _lowest_free(used_ports, ports, "port")


def _lowest_free(used: Iterable[int], bounds: tuple[int, int], what: str) -> int:
    taken = set(used)
    for candidate in range(bounds[0], bounds[1] + 1):
        if candidate not in taken:
            return candidate
    raise StorageError(f"no free DRBD {what} in {bounds[0]}-{bounds[1]}")


# -- configuration


def check_resource(resource: DrbdResource) -> DrbdResource:
    """Every value that goes into the config text, checked so nothing can inject config."""
    check_volume_id(resource.volume_id)
    _check_range(resource.minor, 0, MAX_MINOR, "minor")
    _check_range(resource.port, 1024, 65535, "port")
    if len(resource.peers) != 2:
        raise StorageError("a DRBD resource has exactly two peers")
    for peer in resource.peers:
        _check_peer(peer)
    first, second = resource.peers
    if first.node == second.node or first.node_id == second.node_id or first.host == second.host:
        raise StorageError("the two DRBD peers need different nodes, node ids and addresses")
    return resource


def _check_peer(peer: DrbdPeer) -> None:
    if not isinstance(peer.node, str) or len(peer.node) > 253 or not HOST_RE.fullmatch(peer.node):
        raise StorageError(f"invalid DRBD node name {peer.node!r}")
    _check_range(peer.node_id, 0, MAX_NODE_ID, "node id")
    if not isinstance(peer.disk, str) or not DISK_RE.fullmatch(peer.disk):
        raise StorageError(f"invalid DRBD backing disk {peer.disk!r}")
    _address(peer.host, 1024)


def _check_range(value: int, low: int, high: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise StorageError(f"invalid DRBD {what} {value!r}")


def _address(host: str, port: int) -> str:
    """The ``address`` value: ``10.0.0.1:7789`` or ``ipv6 [fd00::1]:7789``."""
    try:
        ip = ipaddress.ip_address(host)
    except (ValueError, TypeError):
        raise StorageError(f"invalid DRBD address {host!r} (an IP address is needed)") from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise StorageError(f"invalid DRBD address {host!r} (no scoped addresses)")
        return f"ipv6 [{ip}]:{port}"
    return f"{ip}:{port}"


def render_config(resource: DrbdResource) -> str:
    """The ``.res`` file of a resource (every value checked first)."""
    check_resource(resource)
    lines = [
        "# managed by cloudd: changes are overwritten",
        f"resource {resource.name} {{",
        "    options {",
        "        auto-promote no;",
        "    }",
        "    net {",
        "        protocol C;",
        "    }",
    ]
    for peer in resource.peers:
        lines += [
            f"    on {peer.node} {{",
            f"        node-id {peer.node_id};",
            f"        address {_address(peer.host, resource.port)};",
            f"        device {resource.device};",
            f"        disk {peer.disk};",
            "        meta-disk internal;",
            "    }",
        ]
    lines += [
        "    connection-mesh {",
        f"        hosts {resource.peers[0].node} {resource.peers[1].node};",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# -- status


def parse_status(text: str, name: str) -> DrbdStatus:
    """``drbdsetup status --json <name>`` output (a list of resources) → the resource's status."""
    try:
        resources = json.loads(text)
        found = [entry for entry in resources if entry.get("name") == name]
        if not found:
            raise StorageError(f"DRBD resource {name} is not in the status output")
        return _status_of(found[0])
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise StorageError(f"unreadable drbdsetup status for {name}: {text[:200]!r}") from None


def _status_of(entry: dict[str, Any]) -> DrbdStatus:
    devices = entry.get("devices") or [{}]
    connections = entry.get("connections") or []
    connection: dict[str, Any] = connections[0] if connections else {}
    peer_device: dict[str, Any] = (connection.get("peer_devices") or [{}])[0]
    return DrbdStatus(
        name=str(entry["name"]),
        role=str(entry.get("role", "Unknown")),
        disk_state=str(devices[0].get("disk-state", "Diskless")),
        peer_role=str(connection.get("peer-role", "Unknown")),
        peer_disk_state=str(peer_device.get("peer-disk-state", "DUnknown")),
        connection_state=str(connection.get("connection-state", "StandAlone")),
        replication_state=str(peer_device.get("replication-state", "Off")),
    )


# -- driver


class DrbdVolumes:
    """This node's side of the DRBD resources: config files in ``config_dir``, ``drbdadm`` calls.

    Every method is idempotent except ``create_metadata``, which must only run on a fresh
    backing disk (it writes new metadata; on a used disk that forces a full resync).
    """

    kind = "drbd"

    def __init__(self, runner: Runner = run_command, config_dir: str | Path = "/etc/drbd.d") -> None:
        self.runner = runner
        self.config_dir = Path(config_dir)

    def config_path(self, volume_id: str) -> Path:
        return self.config_dir / f"{resource_name(volume_id)}.res"

    def write_config(self, resource: DrbdResource) -> bool:
        """Write the resource's file atomically; False when it already said the same."""
        text = render_config(resource)
        path = self.config_path(resource.volume_id)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return False
        self.config_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.config_dir, prefix=".cloudd-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def remove_config(self, volume_id: str) -> None:
        self.config_path(volume_id).unlink(missing_ok=True)

    def create_metadata(self, volume_id: str) -> None:
        """Internal metadata on a fresh backing disk (``--force``: no questions asked)."""
        self.runner(["drbdadm", "create-md", "--force", resource_name(volume_id)])

    def up(self, volume_id: str) -> None:
        """Attach the disk and connect to the peer. Runs ``drbdadm adjust``, which brings a down
        resource up and makes a running one match its config file (so running it twice is harmless,
        where ``drbdadm up`` fails on a resource that is up)."""
        self.runner(["drbdadm", "adjust", resource_name(volume_id)])

    def down(self, volume_id: str) -> None:
        """Disconnect and detach (the resource must be Secondary); nothing when it is down.
        Without its config file (already removed) ``drbdsetup down`` still takes it down."""
        name = resource_name(volume_id)
        try:
            self.runner(["drbdadm", "down", name])
        except StorageError as exc:
            if _not_up(exc):
                return
            if NO_CONFIG not in str(exc):
                raise
            try:
                self.runner(["drbdsetup", "down", name])
            except StorageError as inner:
                if not _not_up(inner):
                    raise

    def primary(self, volume_id: str, force: bool = False) -> None:
        """Promote this side. ``force`` makes DRBD promote a disk that is not UpToDate: only for
        the very first promotion after ``create_metadata`` (both sides Inconsistent; it starts the
        initial sync from this side)."""
        self.runner(["drbdadm", "primary", *(["--force"] if force else []), resource_name(volume_id)])

    def secondary(self, volume_id: str) -> None:
        self.runner(["drbdadm", "secondary", resource_name(volume_id)])

    def status(self, volume_id: str) -> DrbdStatus | None:
        """This side's status, or None when the resource is not up here."""
        name = resource_name(volume_id)
        try:
            text = self.runner(["drbdsetup", "status", "--json", name])
        except StorageError as exc:
            if _not_up(exc):
                return None
            raise
        return parse_status(text, name)

    def promote_after_peer_loss(self, volume_id: str) -> DrbdStatus:
        """Make this side Primary after the Primary's node was lost (and fenced by the caller).

        Only an UpToDate disk is promoted, with a plain ``drbdadm primary``: DRBD 9 promotes an
        UpToDate Secondary without ``--force`` when no peer is Primary and no quorum is
        configured (ours). ``--force`` would also promote Inconsistent, Outdated or merely
        Consistent data, i.e. hand the VM a stale or half-synced disk: that is refused here.
        Returns the status after promotion (nothing is done when this side is already Primary).
        """
        before = self.status(volume_id)
        if before is None:
            raise StorageError(f"DRBD resource {resource_name(volume_id)} is not up on this node")
        if before.role == "Primary":
            return before
        refusal = promotion_refusal(before)
        if refusal is not None:
            raise StorageError(f"not promoting {before.name}: {refusal}")
        self.primary(volume_id)
        after = self.status(volume_id)
        if after is None or after.role != "Primary":
            raise StorageError(f"{before.name} did not become Primary", transient=True)
        return after


def promotion_refusal(status: DrbdStatus) -> str | None:
    """Why this side must not be promoted, or None."""
    if status.disk_state != "UpToDate":
        return f"its disk is {status.disk_state}, not UpToDate (promoting would serve stale or partial data)"
    if status.peer_connected and status.peer_role == "Primary":
        return "the peer is connected and still Primary"
    return None


def _not_up(exc: StorageError) -> bool:
    return any(marker in str(exc) for marker in NOT_UP)
