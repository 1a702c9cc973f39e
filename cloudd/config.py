"""A node's local configuration: ``<data dir>/node.json`` and ``<data dir>/cluster.secret``.

Written by ``cloudd init`` / ``cloudd join``, read by ``cloudd serve``. The secret file
is 0600 and never logged.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

NODE_FILE = "node.json"
SECRET_FILE = "cluster.secret"


@dataclass
class Timings:
    """Agent and manager periods (seconds)."""

    heartbeat_interval: float = 2.0
    suspect_after: float = 6.0
    down_after: float = 15.0
    manager_interval: float = 1.0
    # failover safety (DESIGN.md): a node that could not renew its lease for fence_after
    # seconds destroys its VMs (itself, and its fence guard if cloudd is gone); the leader
    # restarts them elsewhere only after the lease has been stale for fence_after +
    # failover_margin on its own clock
    fence_after: float = 10.0
    failover_margin: float = 5.0
    storm_share: float = 0.5  # more than this share of hypervisors lost at once: no failover, an alert
    # "at once": losses whose down verdicts are at most this far apart (replicated
    # timestamps); a node lost and handled long before the next loss does not count
    storm_window: float = 15.0


@dataclass
class RaftSettings:
    """Overrides of cloudd.raft.tuning.RaftTuning (tests shrink compaction thresholds)."""

    compaction_entries: int = 100_000
    compaction_seconds: float = 3600.0


@dataclass
class ComputeSettings:
    """This hypervisor's libvirt: ``qemu:///system`` in production; ``test:///default``
    (libvirt's simulated hypervisor: no guest really runs) where qemu is missing."""

    uri: str = "qemu:///system"
    domain_type: str = "kvm"
    drift: str = "repair"
    shutdown_timeout_s: float = 60.0
    vnc_listen: str = "127.0.0.1"
    vnc_port_min: int = 5900
    vnc_port_max: int = 6899
    reconcile_interval_s: float = 2.0
    swap_dir: str = ""  # the node's local fast storage for swap disks; "" = <data dir>/vms
    vm_dir: str = ""  # the VMs' disks; "" = <data dir>/vms. Shared storage (NFS) at one path on every node allows HA
    image_upload_max_gb: float = 64.0  # GiB; a larger upload is refused with 413
    # live migration: how the OTHER nodes' libvirtd reaches this node's libvirt (peer to
    # peer); "" = qemu+tls://<this node's API host>/system for qemu:///system, none otherwise
    migration_uri: str = ""
    migrate_uri: str = ""  # where qemu sends guest memory here, e.g. tcp://10.1.0.5; "" = tcp://<API host>
    migration_tunnelled: bool = False  # the memory inside libvirtd's own TLS connection
    migration_tls: bool = False  # qemu's native TLS for the memory stream
    # the VM directory is shared storage libvirt does not recognise as such (it knows NFS,
    # GlusterFS, Ceph, GPFS…): live-migrate anyway. Only where vm_dir really is shared.
    migration_unsafe: bool = False

    def migration_addresses(self, api_addr: str) -> tuple[str | None, str | None]:
        """(libvirt URI for the other nodes, migrate URI) of this node; (None, None) when
        its libvirt cannot be reached from another node (an embedded or test libvirt)."""
        host = api_addr.rsplit(":", 1)[0]
        uri = self.migration_uri or (f"qemu+tls://{host}/system" if self.uri == "qemu:///system" else "")
        if not uri:
            return None, None
        return uri, self.migrate_uri or f"tcp://{host}"


@dataclass
class StorageSettings:
    """How this storage node offers volumes: ``tgt`` (Debian's tgt service, or a private
    tgtd of cloudd's own with ``private_tgtd``), ``lio`` (the kernel target) or ``none``."""

    export: str = "tgt"
    portal: str = ""  # host:port hypervisors log in to; "" = this node's API host, port 3260
    tgt_control_port: int | None = None  # tgtadm -C; None = the system tgtd's default
    private_tgtd: bool = False

    def portal_for(self, api_addr: str) -> str:
        return self.portal or f"{api_addr.rsplit(':', 1)[0]}:3260"


@dataclass
class NetworkSettings:
    """This hypervisor's VM networks: ``linux`` (bridges and VXLAN through pyroute2,
    nftables port filters, dnsmasq) or ``none`` (NICs are defined, the host is not touched).
    ``prefix`` starts the names of every device cloudd makes (several cloudd nodes on one
    host need different ones); ``underlay`` is where other nodes send this node's VXLAN
    traffic ("" = the API host, port 4789); ``netns`` acts inside that namespace."""

    driver: str = "linux"
    prefix: str = "cd"
    underlay: str = ""
    netns: str | None = None
    usage_interval_s: float = 30.0

    def underlay_for(self, api_addr: str) -> str:
        return self.underlay or f"{api_addr.rsplit(':', 1)[0]}:4789"


@dataclass
class NodeConfig:
    name: str
    cluster_id: str
    api_addr: str
    raft_addr: str | None
    membership: str
    peers: list[str]
    api_peers: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=lambda: ["hypervisor", "storage"])
    timings: Timings = field(default_factory=Timings)
    raft: RaftSettings = field(default_factory=RaftSettings)
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    data_dir: str = ""

    @property
    def journal_file(self) -> str:
        return str(Path(self.data_dir) / "raft.journal")

    @property
    def snapshot_file(self) -> str:
        return str(Path(self.data_dir) / "raft.snapshot")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("data_dir")
        return data

    def save(self) -> None:
        path = Path(self.data_dir) / NODE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, data_dir: str | Path) -> "NodeConfig":
        path = Path(data_dir) / NODE_FILE
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise SystemExit(f"{path} not found: run 'cloudd init' or 'cloudd join' first") from None
        timings = Timings(**data.pop("timings", {}))
        raft = RaftSettings(**data.pop("raft", {}))
        compute = ComputeSettings(**data.pop("compute", {}))
        storage = StorageSettings(**data.pop("storage", {}))
        # a node set up before networks existed keeps its host untouched until told otherwise
        network = NetworkSettings(**data.pop("network", {"driver": "none"}))
        return cls(**data, timings=timings, raft=raft, compute=compute, storage=storage, network=network, data_dir=str(Path(data_dir).resolve()))


def write_secret(data_dir: str | Path, secret: str) -> None:
    path = Path(data_dir) / SECRET_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    os.chmod(path, 0o600)


def read_secret(data_dir: str | Path) -> str:
    path = Path(data_dir) / SECRET_FILE
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SystemExit(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    return path.read_text().strip()
