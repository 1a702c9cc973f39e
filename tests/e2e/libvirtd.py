"""A private libvirtd + virtlogd, the production path (``qemu:///system`` over a unix
socket), for e2e tests that need a second client (virsh) on the same libvirt.

Each daemon runs in a mount namespace of its own (``unshare -m --propagation private``)
in which temporary directories are bind-mounted over /etc/libvirt, /var/lib/libvirt,
/var/log/libvirt, /var/cache/libvirt and /run (so /run/libvirt and /var/run/libvirt,
and any pid file a daemon drops in /run, land in the temporary tree too). The same
binds in every namespace give every daemon (and a restarted libvirtd) the same view;
qemu processes keep the namespace of the libvirtd that started them. The client socket
lives outside those mounts, in ``<root>/sock``, so this process and virsh reach it as
``qemu:///system?socket=<root>/sock/libvirt-sock``. Nothing is written to the host's own
libvirt directories; ``host_libvirt_snapshot()`` lets a test check that.

Every daemon has a host UUID of its own, so two of them can live-migrate to each other
(peer to peer over those sockets: /tmp is the same in every namespace); give each its
own ``migration_ports`` (and VNC ports) then.

Processes are ended by the PIDs this helper started (and the qemu PIDs libvirtd wrote
into the private /run), never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from tests.cluster.harness import LocalCluster, Node

VIRSH = shutil.which("virsh") or "/usr/bin/virsh"
LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"

# temporary dir -> the host path it hides inside the daemons' mount namespace
BINDS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "run": "/run",
}
HOST_DIRS = ("/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt", "/run/libvirt")

# bind the private dirs, then become the daemon (same PID: unshare and sh both exec)
LAUNCHER = """set -e
root=$1; shift
for pair in {pairs}; do
  mount --bind "$root/${{pair%%=*}}" "${{pair#*=}}"
done
mkdir -p /run/libvirt
exec "$@"
""".format(pairs=" ".join(f"{src}={dst}" for src, dst in BINDS.items()))

LIBVIRTD_CONF = """# private libvirtd of a cloudd e2e test
unix_sock_dir = "{sock_dir}"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tcp = 0
listen_tls = 0
log_outputs = "3:stderr"
host_uuid = "{host_uuid}"
"""

# root:root because /dev/kvm is root-only here (otherwise libvirt re-probes qemu forever)
QEMU_CONF = """# private libvirtd of a cloudd e2e test
user = "root"
group = "root"
remote_display_port_min = {vnc_min}
remote_display_port_max = {vnc_max}
"""

# incoming live migrations listen on these ports (two daemons on one host: distinct ranges)
QEMU_MIGRATION_CONF = """migration_port_min = {low}
migration_port_max = {high}
"""

VIRTLOGD_CONF = """log_outputs = "3:stderr"
"""


def libvirtd_missing() -> str | None:
    for path in (LIBVIRTD, VIRTLOGD, VIRSH, "/usr/bin/unshare"):
        if not Path(path).exists():
            return f"{path} is not installed"
    if os.geteuid() != 0:
        return "a private libvirtd needs root (mount namespaces)"
    return None


def host_libvirt_snapshot() -> dict[str, tuple[int, int]]:
    """Every path under the host's libvirt directories with its (mtime_ns, size)."""
    out: dict[str, tuple[int, int]] = {}
    for top in HOST_DIRS:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                out[path] = (st.st_mtime_ns, st.st_size if not os.path.isdir(path) else 0)
    return out


class PrivateLibvirtd:
    """libvirtd + virtlogd with all their state under one temporary directory."""

    def __init__(self, vnc_ports: tuple[int, int] = (7000, 7049), log_dir: Path | None = None, migration_ports: tuple[int, int] | None = None) -> None:
        self.vnc_ports = vnc_ports
        # libvirt refuses to migrate to a daemon with its own host UUID (and every daemon
        # on this machine would otherwise report the same SMBIOS UUID)
        self.host_uuid = str(uuid.uuid4())
        self.root = Path(tempfile.mkdtemp(prefix="cloudd-libvirtd-"))
        os.chmod(self.root, 0o700)
        self.log_dir = log_dir or self.root
        self.libvirtd: subprocess.Popen[bytes] | None = None
        self.virtlogd: subprocess.Popen[bytes] | None = None
        for name in [*BINDS, "sock"]:
            (self.root / name).mkdir(mode=0o700)
        (self.root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(sock_dir=self.root / "sock", host_uuid=self.host_uuid))
        qemu_conf = QEMU_CONF.format(vnc_min=vnc_ports[0], vnc_max=vnc_ports[1])
        if migration_ports is not None:
            qemu_conf += QEMU_MIGRATION_CONF.format(low=migration_ports[0], high=migration_ports[1])
        (self.root / "etc" / "qemu.conf").write_text(qemu_conf)
        (self.root / "etc" / "virtlogd.conf").write_text(VIRTLOGD_CONF)

    # --- addresses ---

    @property
    def socket(self) -> Path:
        return self.root / "sock" / "libvirt-sock"

    @property
    def uri(self) -> str:
        # +unix names the remote driver: in a process that also holds an embedded libvirt,
        # a plain qemu:/// URI would go to that one
        return f"qemu+unix:///system?socket={self.socket}"

    def qemu_pid(self, domain: str) -> int | None:
        """The PID libvirtd recorded for a running domain (None when it does not run)."""
        try:
            return int((self.root / "run" / "libvirt" / "qemu" / f"{domain}.pid").read_text())
        except (OSError, ValueError):
            return None

    def virsh(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([VIRSH, "-c", self.uri, *args], check=False, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def domains(self) -> list[str]:
        return [line for line in self.virsh("list", "--all", "--name").stdout.split() if line]

    # --- processes ---

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", LAUNCHER, "sh", str(self.root), *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()

    def start(self) -> PrivateLibvirtd:
        try:
            self._start_virtlogd()
            self.start_libvirtd()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_virtlogd(self) -> None:
        self.virtlogd = self._spawn("virtlogd", [VIRTLOGD, "-f", str(self.root / "etc" / "virtlogd.conf"), "-p", "/run/virtlogd.pid"])
        sock = self.root / "run" / "libvirt" / "virtlogd-sock"
        self._wait(lambda: sock.exists(), self.virtlogd, "virtlogd's socket")

    def start_libvirtd(self) -> None:
        assert self.libvirtd is None or self.libvirtd.poll() is not None, "libvirtd already runs"
        self.libvirtd = self._spawn("libvirtd", [LIBVIRTD, "-f", str(self.root / "etc" / "libvirtd.conf"), "-p", "/run/libvirtd.pid"])
        self._wait(self.answers, self.libvirtd, "libvirtd to answer")

    def answers(self) -> bool:
        try:
            return self.virsh("version", timeout=10, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _wait(self, ready, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: the daemon exited with {proc.returncode} (see {self.log_dir})")
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} (see {self.log_dir})")

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # in case a test froze it
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop_libvirtd(self) -> None:
        """SIGTERM libvirtd only (its guests keep running), SIGKILL if it lingers."""
        self._end(self.libvirtd)

    def restart_libvirtd(self) -> None:
        self.stop_libvirtd()
        self.start_libvirtd()

    def _qemu_pids(self) -> list[int]:
        """Live qemu processes this libvirtd started (per its pid files, checked against
        /proc so that a reused PID is never hit)."""
        pids = []
        for pid_file in (self.root / "run" / "libvirt" / "qemu").glob("*.pid"):
            try:
                pid = int(pid_file.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"qemu-system" in cmdline and f"guest={pid_file.stem},".encode() in cmdline:
                pids.append(pid)
        return pids

    def stop(self) -> None:
        """Destroy the guests, end both daemons, remove the temporary tree."""
        try:
            if self.libvirtd is not None and self.libvirtd.poll() is None:
                try:
                    for name in self.virsh("list", "--name", timeout=20, check=False).stdout.split():
                        self.virsh("destroy", name, timeout=30, check=False)
                except subprocess.TimeoutExpired:
                    pass
            for pid in self._qemu_pids():  # libvirtd down or a destroy failed
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._end(self.libvirtd)
            self._end(self.virtlogd)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class SharedDirCluster(LocalCluster):
    """cloudd nodes whose hypervisors are private libvirtds (``daemons``: node name → its
    libvirtd; a node without one is a storage-only leader that holds no VM), all with the
    same VM directory ``vm_dir`` (shared storage, as NFS would be), ready to migrate live:
    each libvirtd reaches the others over its socket (/tmp is shared) and qemu over TCP."""

    def __init__(self, root: Path, vm_dir: Path, daemons: dict[str, PrivateLibvirtd], first_host: int, timings: dict[str, float]) -> None:
        super().__init__(root, timings=timings, first_host=first_host)
        self.vm_dir = vm_dir
        self.daemons = daemons

    def _set_timings(self, node: Node) -> None:
        super()._set_timings(node)
        path = node.data_dir / "node.json"
        data = orjson.loads(path.read_bytes())
        daemon = self.daemons.get(node.name)
        if daemon is None:
            data["roles"] = ["storage"]
        else:
            data["compute"].update(
                uri=daemon.uri, domain_type="qemu", vm_dir=str(self.vm_dir), vnc_port_min=daemon.vnc_ports[0], vnc_port_max=daemon.vnc_ports[1],
                migration_uri=daemon.uri, migrate_uri="tcp://127.0.0.1", migration_unsafe=True,
            )
        path.write_bytes(orjson.dumps(data))
