"""``cloudd doctor``: what this host supports for cloudd, what is missing, and how to fix it.

Every check reads the host and never changes it: no module is loaded, no link is created,
nothing is written. Commands run without a shell, with a short timeout. Each check is a
function of a ``Host`` (where the filesystem root is, where to look for binaries, how to run a
command, how to open libvirt, how to connect a socket) and of the node's ``node.json`` when
the data dir has one, so tests simulate hosts with a temp dir and fake runners.

A check returns findings; an exception inside a check becomes a ``warn`` finding naming it.
The exit code is the worst status: 0 for ok/info, 1 for warn, 2 for fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

STATUSES = ("ok", "info", "warn", "fail")
_RANK = {status: rank for rank, status in enumerate(STATUSES)}
_EXIT = {"ok": 0, "info": 0, "warn": 1, "fail": 2}
GIB = 1 << 30
WARN_FREE_BYTES = 10 * GIB
FAIL_FREE_BYTES = 1 * GIB
LIBVIRT_TIMEOUT_S = 5.0
PEER_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 5.0
QEMU_ISCSI_MODULE = "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so"
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | info | warn | fail
    message: str
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"invalid status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Output:
    """What a command printed (stdout and stderr together) and its exit status."""

    returncode: int
    text: str


Runner = Callable[[list[str]], Output]


def run_command(argv: list[str], timeout: float = COMMAND_TIMEOUT_S) -> Output:
    """Run ``argv`` (never through a shell). FileNotFoundError when the binary is missing;
    a command that does not finish in time counts as failed (returncode -1)."""
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Output(-1, f"{argv[0]} did not answer within {timeout:g} s")
    return Output(done.returncode, (done.stdout or "") + (done.stderr or ""))


def _libvirt_open(uri: str) -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come back as exceptions; do not print them too
    return libvirt.open(uri)


def _tcp_connect(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass  # connect only: nothing is sent


@dataclass
class Host:
    """The host the checks look at. ``root`` prefixes every absolute path read; ``search_path``
    is where binaries are looked for (None: $PATH plus the sbin directories); ``runner``
    replaces running the found binary (it gets the bare command name and arguments)."""

    root: Path = Path("/")
    search_path: str | None = None
    runner: Runner | None = None
    libvirt_open: Callable[[str], Any] = _libvirt_open
    libvirt_timeout: float = LIBVIRT_TIMEOUT_S
    connect: Callable[[str, int, float], None] = _tcp_connect
    disk_usage: Callable[[str], Any] = shutil.disk_usage
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    rtslib_module: str = "rtslib_fb"

    @classmethod
    def under(cls, root: str | Path, **kwargs: Any) -> Host:
        """A simulated host: files under ``root``, binaries only from its bin directories."""
        root = Path(root)
        return cls(root=root, search_path=os.pathsep.join(str(root / d.lstrip("/")) for d in _BIN_DIRS), **kwargs)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def paths(self) -> str:
        if self.search_path is not None:
            return self.search_path
        parts = os.environ.get("PATH", os.defpath).split(os.pathsep)
        return os.pathsep.join(parts + [d for d in _SBIN if d not in parts])

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.paths())

    def run(self, argv: Sequence[str]) -> Output:
        """FileNotFoundError when the command is not installed."""
        if self.runner is not None:
            return self.runner(list(argv))
        exe = self.which(argv[0])
        if exe is None:
            raise FileNotFoundError(argv[0])
        return run_command([exe, *argv[1:]])


@dataclass
class NodeInfo:
    """What the checks need from ``<data dir>/node.json`` (all empty when there is none)."""

    data_dir: Path
    exists: bool = False
    name: str | None = None
    roles: list[str] | None = None
    compute_uri: str = "qemu:///system"
    raft_addr: str | None = None
    peers: list[str] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def load(cls, data_dir: str | Path) -> NodeInfo:
        data_dir = Path(data_dir)
        path = data_dir / "node.json"
        if not path.exists():
            return cls(data_dir)
        try:
            data = orjson.loads(path.read_bytes())
            compute = data.get("compute") or {}
            return cls(
                data_dir,
                exists=True,
                name=data.get("name"),
                roles=[str(r) for r in data.get("roles", ["hypervisor", "storage"]) or []],  # NodeConfig's default
                compute_uri=compute.get("uri") or "qemu:///system",
                raft_addr=data.get("raft_addr"),
                peers=[str(p) for p in data.get("peers") or []],
            )
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            return cls(data_dir, exists=True, error=f"{path} cannot be read: {exc}")


# -- checks


def check_kvm(host: Host) -> list[Finding]:
    kvm = host.path("/dev/kvm")
    if not kvm.exists():
        return [Finding("kvm", "warn", "no /dev/kvm: guests run in software emulation (TCG), much slower",
                        "enable virtualization (VT-x/AMD-V) in the firmware and load the kvm_intel or kvm_amd module")]
    if not os.access(kvm, os.R_OK | os.W_OK):
        return [Finding("kvm", "warn", f"/dev/kvm exists but is not read/writable by uid {os.getuid()}: guests would run in software emulation (TCG)",
                        "run cloudd as root, or give its user the kvm group (and /dev/kvm mode 0660 root:kvm)")]
    return [Finding("kvm", "ok", "/dev/kvm is present and read/writable (hardware virtualization)")]


def _open_with_timeout(host: Host, uri: str) -> tuple[str, Any]:
    """("ok", connection) | ("error", exception) | ("timeout", None); the open runs in a thread."""
    box: dict[str, Any] = {}

    def attempt() -> None:
        try:
            box["conn"] = host.libvirt_open(uri)
        except BaseException as exc:  # noqa: BLE001 — reported, never raised in the thread
            box["error"] = exc

    thread = threading.Thread(target=attempt, name="doctor-libvirt-open", daemon=True)
    thread.start()
    thread.join(host.libvirt_timeout)
    if thread.is_alive():
        return "timeout", None
    if "error" in box:
        return "error", box["error"]
    return "ok", box.get("conn")


def _describe(conn: Any) -> str:
    try:
        version = int(conn.getLibVersion())
        return f"libvirt {version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"
    except Exception:  # noqa: BLE001 — only a detail of the message
        return "libvirt"
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def check_libvirt(host: Host, node: NodeInfo) -> list[Finding]:
    uri = node.compute_uri
    where = "node.json" if node.exists else "default"
    if node.roles is not None and "hypervisor" not in node.roles:
        return [Finding("libvirt", "info", f"this node has no hypervisor role (roles: {', '.join(node.roles) or 'none'}): libvirt is not used")]
    if uri.startswith("qemu:///embed"):
        return [Finding("libvirt", "info", f"embedded libvirt ({uri}) runs inside cloudd itself: not opened here, "
                        "so as not to clash with a running daemon (one process per embed root)")]
    outcome, value = _open_with_timeout(host, uri)
    if outcome == "timeout":
        return [Finding("libvirt", "fail", f"{uri} ({where}) did not answer within {host.libvirt_timeout:g} s",
                        "check libvirtd (systemctl status libvirtd; journalctl -u libvirtd) and, with /dev/kvm, "
                        "that qemu.conf's user/group can open it")]
    if outcome == "error":
        if isinstance(value, ImportError):
            return [Finding("libvirt", "fail", f"libvirt-python is not installed ({value})",
                            "pip install libvirt-python (needs libvirt-dev, pkg-config and a C compiler)")]
        message = f"cannot connect to {uri} ({where}): {_one_line(str(value))}"
        if uri.startswith("test:"):
            return [Finding("libvirt", "warn", message, "reinstall libvirt-python")]
        return [Finding("libvirt", "fail", message,
                        "apt-get install libvirt-daemon-system and start libvirtd (systemctl enable --now libvirtd), "
                        "or init the node with --compute-uri embedded")]
    what = _describe(value)
    if uri.startswith("test:"):
        return [Finding("libvirt", "info", f"{uri} ({where}) is libvirt's simulated hypervisor ({what}): no guest really runs")]
    return [Finding("libvirt", "ok", f"connected to {uri} ({where}), {what}")]


def _supported_formats(text: str) -> set[str]:
    match = re.search(r"^Supported formats:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def check_qemu(host: Host) -> list[Finding]:
    findings = []
    system = host.which("qemu-system-x86_64")
    if system:
        findings.append(Finding("qemu", "ok", f"qemu-system-x86_64 at {system}"))
    else:
        findings.append(Finding("qemu", "fail", "qemu-system-x86_64 is not installed: no guest can run here",
                                "apt-get install qemu-system-x86"))
    img = host.which("qemu-img")
    formats: set[str] = set()
    if img:
        findings.append(Finding("qemu-img", "ok", f"qemu-img at {img}"))
        try:
            formats = _supported_formats(host.run(["qemu-img", "--help"]).text)
        except FileNotFoundError:
            pass
    else:
        findings.append(Finding("qemu-img", "fail", "qemu-img is not installed: disks cannot be created or resized",
                                "apt-get install qemu-utils"))
    module = host.path(QEMU_ISCSI_MODULE)
    if "iscsi" in formats:
        findings.append(Finding("qemu-iscsi", "ok", "qemu's iSCSI block driver is available (qemu-img lists iscsi)"))
    elif module.exists():
        findings.append(Finding("qemu-iscsi", "ok", f"qemu's iSCSI block driver is available ({QEMU_ISCSI_MODULE})"))
    else:
        findings.append(Finding("qemu-iscsi", "fail", "qemu has no iSCSI block driver: guests cannot use volumes exported by storage nodes",
                                "apt-get install qemu-block-extra"))
    return findings


def check_tgt(host: Host) -> list[Finding]:
    missing = [name for name in ("tgtd", "tgtadm") if host.which(name) is None]
    if missing:
        return [Finding("tgt", "warn", f"{' and '.join(missing)} not installed: this node cannot export volumes over iSCSI with tgt",
                        "apt-get install tgt")]
    return [Finding("tgt", "ok", "tgtd and tgtadm are installed (userspace iSCSI target)")]


def _optional_backend(check: str, what: str, reason: str | None, kernel_gap: str | None, note: str) -> list[Finding]:
    """``reason`` is the driver's own answer (the first thing missing); ``kernel_gap`` adds
    what the kernel lacks when the reason is only about tools, since installing them would not
    be enough."""
    if reason is None:
        return [Finding(check, "ok", f"{what} can be used on this host")]
    if kernel_gap and "kernel" not in reason:
        reason = f"{reason}; and {kernel_gap}"
    return [Finding(check, "info", f"{what} unavailable: {reason}; {note}")]


def check_lio(host: Host) -> list[Finding]:
    from cloudd.ops.lio import lio_unavailable_reason

    configfs = str(host.path("/sys/kernel/config/target"))
    reason = lio_unavailable_reason(configfs, host.rtslib_module)
    gap = None if os.path.isdir(configfs) else "this kernel has no LIO/configfs (no /sys/kernel/config/target)"
    return _optional_backend("lio", "LIO (kernel iSCSI target)", reason, gap, "exports use tgt instead")


def check_lvm(host: Host) -> list[Finding]:
    from cloudd.ops.lvm import lvm_unavailable_reason

    control, misc = host.path("/dev/mapper/control"), host.path("/proc/misc")
    reason = lvm_unavailable_reason(host.paths(), str(control), str(misc))
    try:
        has_dm = any(line.split()[-1:] == ["device-mapper"] for line in misc.read_text().splitlines())
    except OSError:
        has_dm = False
    gap = None if has_dm and control.exists() else "this kernel has no device-mapper (no device-mapper in /proc/misc or no /dev/mapper/control)"
    return _optional_backend("lvm", "LVM volumes", reason, gap, "file (qcow2/raw) pools work without it")


def check_drbd(host: Host) -> list[Finding]:
    from cloudd.ops.drbd import drbd_unavailable_reason

    proc = host.path("/proc/drbd")
    reason = drbd_unavailable_reason(host.paths(), str(proc))
    gap = None if proc.exists() else "this kernel has no DRBD module loaded (no /proc/drbd)"
    return _optional_backend("drbd", "DRBD replication", reason, gap, "volumes are not replicated between storage nodes")


def check_nftables(host: Host) -> list[Finding]:
    if host.which("nft") is None:
        return [Finding("nftables", "warn", "nft is not installed: guest anti-spoofing and security-group filters cannot be applied",
                        "apt-get install nftables")]
    try:
        out = host.run(["nft", "list", "tables"])
    except FileNotFoundError:
        return [Finding("nftables", "warn", "nft is not installed", "apt-get install nftables")]
    if out.returncode != 0:
        return [Finding("nftables", "warn", f"'nft list tables' failed: {_one_line(out.text) or f'exit {out.returncode}'}",
                        "run cloudd doctor (and cloudd) as root; the kernel needs nf_tables")]
    return [Finding("nftables", "ok", "nft works ('nft list tables' answered)")]


def kernel_feature(host: Host, module: str) -> str | None:
    """How the kernel offers ``module``: "loaded", "built in", "module" (loaded on first use),
    or None when nothing says it has it. Reads /sys/module, /proc/modules and
    /lib/modules/<release>/modules.{builtin,dep}; never loads anything."""
    if host.path(f"/sys/module/{module}").is_dir():
        return "loaded"
    try:
        if any(line.split(" ", 1)[0] == module for line in host.path("/proc/modules").read_text().splitlines()):
            return "loaded"
    except OSError:
        pass
    pattern = re.compile(rf"(^|/){re.escape(module)}\.ko(\.[a-z]+)?:?(\s|$)", re.MULTILINE)
    base = host.path(f"/lib/modules/{host.kernel_release}")
    for name, how in (("modules.builtin", "built in"), ("modules.dep", "module")):
        try:
            if pattern.search((base / name).read_text()):
                return how
        except OSError:
            pass
    return None


def check_bridge(host: Host) -> list[Finding]:
    how = kernel_feature(host, "bridge")
    if how is None:
        return [Finding("bridge", "warn", "no sign of Linux bridge support (not in /sys/module, /proc/modules or modules.builtin/dep)",
                        "use a kernel with CONFIG_BRIDGE (Debian's stock kernel has it)")]
    return [Finding("bridge", "ok", f"Linux bridges: {_how(how)}")]


def check_vxlan(host: Host) -> list[Finding]:
    how = kernel_feature(host, "vxlan")
    if how is None:
        return [Finding("vxlan", "warn", "no sign of VXLAN support (not in /sys/module, /proc/modules or modules.builtin/dep): "
                        "overlay network segments cannot span nodes", "use a kernel with CONFIG_VXLAN (Debian's stock kernel has it)")]
    return [Finding("vxlan", "ok", f"VXLAN: {_how(how)}")]


def check_vlan(host: Host) -> list[Finding]:
    if host.path("/proc/net/vlan").exists():
        return [Finding("vlan", "ok", "802.1Q VLANs: loaded (/proc/net/vlan)")]
    how = kernel_feature(host, "8021q")
    if how == "module":
        return [Finding("vlan", "ok", f"802.1Q VLANs: {_how(how)}")]
    return [Finding("vlan", "info", "this kernel has no 802.1Q VLANs (no /proc/net/vlan); VXLAN segments work")]


def _how(how: str) -> str:
    return "available as a module (loaded on first use)" if how == "module" else how


def check_dnsmasq(host: Host) -> list[Finding]:
    found = host.which("dnsmasq")
    if found is None:
        return [Finding("dnsmasq", "warn", "dnsmasq is not installed: guests on cloudd networks get no DHCP addresses",
                        "apt-get install dnsmasq-base")]
    return [Finding("dnsmasq", "ok", f"dnsmasq at {found}")]


def _try_run(host: Host, argv: list[str]) -> Output:
    try:
        return host.run(argv)
    except FileNotFoundError:
        return Output(127, f"{argv[0]}: not found")


_CLOCK_FIX = "install and enable systemd-timesyncd or chrony (apt-get install chrony)"


def check_clock(host: Host) -> list[Finding]:
    """cloudd takes expiries (tokens, leases) from the proposer's clock, so skew matters."""
    tried = []
    if host.which("timedatectl"):
        out = _try_run(host, ["timedatectl", "show", "-p", "NTPSynchronized"])
        value = out.text.strip().partition("=")[2].strip() if out.returncode == 0 else ""
        if value == "yes":
            return [Finding("clock", "ok", "the clock is synchronized (timedatectl: NTPSynchronized=yes)")]
        if value == "no":
            return [Finding("clock", "warn", "the clock is not synchronized (timedatectl: NTPSynchronized=no); "
                            "cloudd uses the proposer's clock for expiries, so skew matters", _CLOCK_FIX)]
        tried.append(f"timedatectl: {_one_line(out.text) or f'exit {out.returncode}'}")
    if host.path("/run/systemd/timesync/synchronized").exists():
        return [Finding("clock", "ok", "the clock is synchronized (systemd-timesyncd: /run/systemd/timesync/synchronized)")]
    if host.which("chronyc"):
        out = _try_run(host, ["chronyc", "-n", "tracking"])
        match = re.search(r"^Leap status\s*:\s*(.+)$", out.text, re.MULTILINE)
        if out.returncode == 0 and match and match.group(1).strip() != "Not synchronised":
            return [Finding("clock", "ok", f"the clock is synchronized (chrony, leap status {match.group(1).strip()})")]
        if out.returncode == 0 and match:
            return [Finding("clock", "warn", "chrony is not synchronised", "check 'chronyc sources' and the firewall (UDP 123)")]
        tried.append(f"chronyc tracking: {_one_line(out.text) or f'exit {out.returncode}'}")
    if host.which("ntpq"):
        out = _try_run(host, ["ntpq", "-c", "rv 0 leap"])
        match = re.search(r"leap=(\d+)", out.text)
        if out.returncode == 0 and match and match.group(1) != "11":
            return [Finding("clock", "ok", f"the clock is synchronized (ntpd, leap={match.group(1)})")]
        if out.returncode == 0 and match:
            return [Finding("clock", "warn", "ntpd is not synchronized (leap=11)", "check 'ntpq -p' and the firewall (UDP 123)")]
        tried.append(f"ntpq: {_one_line(out.text) or f'exit {out.returncode}'}")
    detail = " / ".join(tried) if tried else "no timedatectl, systemd-timesyncd, chrony or ntp found"
    return [Finding("clock", "warn", f"cannot tell whether the clock is synchronized [{detail}]; "
                    "cloudd uses the proposer's clock for expiries, so skew matters", _CLOCK_FIX)]


def check_data_dir(host: Host, node: NodeInfo) -> list[Finding]:
    target = node.data_dir.absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    free = host.disk_usage(str(target)).free
    where = str(target) if target == node.data_dir.absolute() else f"{target} (the data dir {node.data_dir} does not exist yet)"
    text = f"{free / GIB:.1f} GiB free on {where}"
    if free < FAIL_FREE_BYTES:
        return [Finding("data-dir", "fail", text + ": below 1 GiB, the Raft journal and snapshots may not fit", "free space or use another --data-dir")]
    if free < WARN_FREE_BYTES:
        return [Finding("data-dir", "warn", text + ": below 10 GiB", "free space or use another --data-dir")]
    return [Finding("data-dir", "ok", text)]


def split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {addr!r}")
    return host.strip("[]"), int(port)


def check_raft_peers(host: Host, node: NodeInfo) -> list[Finding]:
    if node.error:
        return [Finding("raft-peers", "warn", node.error, "restore node.json from a copy, or join the node again")]
    if not node.exists:
        return [Finding("raft-peers", "info", f"no node.json in {node.data_dir}: not a cluster node yet, no peers to check")]
    others = [p for p in node.peers if p != node.raft_addr]
    if not others:
        return [Finding("raft-peers", "info", "no other Raft voters in node.json (a single-voter cluster)")]
    findings = []
    for peer in others:
        try:
            addr, port = split_addr(peer)
            host.connect(addr, port, PEER_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            findings.append(Finding("raft-peers", "warn", f"Raft peer {peer} unreachable: {_one_line(str(exc)) or type(exc).__name__}",
                                    "check that cloudd runs there and that the cluster network/firewall lets this node reach its Raft port"))
        else:
            findings.append(Finding("raft-peers", "ok", f"Raft peer {peer} accepts connections"))
    return findings


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- running them

Check = tuple[str, Callable[[Host, NodeInfo], list[Finding]]]

CHECKS: list[Check] = [
    ("kvm", lambda h, n: check_kvm(h)),
    ("libvirt", check_libvirt),
    ("qemu", lambda h, n: check_qemu(h)),
    ("tgt", lambda h, n: check_tgt(h)),
    ("lio", lambda h, n: check_lio(h)),
    ("lvm", lambda h, n: check_lvm(h)),
    ("drbd", lambda h, n: check_drbd(h)),
    ("nftables", lambda h, n: check_nftables(h)),
    ("bridge", lambda h, n: check_bridge(h)),
    ("vxlan", lambda h, n: check_vxlan(h)),
    ("vlan", lambda h, n: check_vlan(h)),
    ("dnsmasq", lambda h, n: check_dnsmasq(h)),
    ("clock", lambda h, n: check_clock(h)),
    ("data-dir", check_data_dir),
    ("raft-peers", check_raft_peers),
]


def guarded(name: str, check: Callable[[Host, NodeInfo], list[Finding]], host: Host, node: NodeInfo) -> list[Finding]:
    """The check's findings; an exception in it becomes a warn finding, never a crash."""
    try:
        return list(check(host, node))
    except Exception as exc:  # noqa: BLE001
        return [Finding(name, "warn", f"the check itself failed: {type(exc).__name__}: {_one_line(str(exc))}",
                        "report this as a cloudd bug, with the host's details")]


def run_checks(data_dir: str | Path, host: Host | None = None, checks: Iterable[Check] | None = None) -> tuple[NodeInfo, list[Finding]]:
    host = host or Host()
    node = NodeInfo.load(data_dir)
    findings: list[Finding] = []
    for name, check in CHECKS if checks is None else checks:
        findings.extend(guarded(name, check, host, node))
    return node, findings


def worst(findings: Iterable[Finding]) -> str:
    return max((f.status for f in findings), key=_RANK.__getitem__, default="ok")


def exit_code(status: str) -> int:
    return _EXIT[status]


def report(node: NodeInfo, findings: list[Finding]) -> dict[str, Any]:
    return {"node": node.name or socket.gethostname(), "findings": [f.to_dict() for f in findings], "worst": worst(findings)}


def render_text(node: NodeInfo, findings: list[Finding]) -> str:
    width = max((len(f.check) for f in findings), default=0)
    lines = [f"cloudd doctor: node {node.name or socket.gethostname()}" + ("" if node.exists else f" (no node.json in {node.data_dir})")]
    for f in findings:
        lines.append(f"[{f.status:^4}] {f.check:<{width}}  {f.message}")
        if f.fix and f.status in ("warn", "fail"):
            lines.append(f"{'':>6} {'':<{width}}  fix: {f.fix}")
    status = worst(findings)
    lines.append(f"worst: {status} (exit {exit_code(status)})")
    return "\n".join(lines)
