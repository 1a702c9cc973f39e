"""iSCSI exports through tgt, the userspace target: works on any kernel.

Each volume is its own target (``volume_target(id)``) with the volume as LUN 1, an ACL of
initiator names and a CHAP account bound to it. Everything goes through ``tgtadm`` with
argument lists (never a shell). tgt numbers targets (tid); we find ours by name in
``tgtadm --op show``, so nothing is remembered between calls and the agent can restart
at any time.

CHAP passwords reach tgtadm on its command line (tgt has no other way): on a storage
node, other local users could see them in the process list for the instant tgtadm runs.
LIO (``lio.py``) writes them to configfs instead.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cloudd.ops.storage import IQN_PREFIX, IQN_RE, ExportSpec, ExportState, ExportStats, Runner, StorageError, run_command

LUN = 1
CHAP_USER_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CHAP_PASSWORD_RE = re.compile(r"^[A-Za-z0-9._~-]{12,64}$")
TARGET_LINE = re.compile(r"^Target (\d+): (\S+)$")


@dataclass
class _Target:
    tid: int
    name: str
    luns: dict[int, str]
    acl: list[str]
    accounts: list[str]


def parse_show(text: str) -> dict[str, _Target]:
    """``tgtadm --op show --mode target``: targets by name, with LUN paths, ACL, accounts."""
    targets: dict[str, _Target] = {}
    current: _Target | None = None
    section = ""
    lun: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        match = TARGET_LINE.match(raw)
        if match:
            current = _Target(int(match.group(1)), match.group(2), {}, [], [])
            targets[current.name] = current
            section, lun = "", None
            continue
        if current is None or not line:
            continue
        if line.endswith("information:"):
            section = line
            continue
        if section == "LUN information:":
            if line.startswith("LUN: "):
                lun = int(line.split(":", 1)[1])
            elif line.startswith("Backing store path: ") and lun is not None:
                path = line.split(": ", 1)[1]
                if path != "None":
                    current.luns[lun] = path
        elif section == "Account information:":
            current.accounts.append(line.split()[0])
        elif section == "ACL information:":
            current.acl.append(line)
    return targets


def parse_connections(text: str) -> list[tuple[int, int, str]]:
    """``tgtadm --op show --mode conn --tid N``: (session id, connection id, initiator)."""
    out: list[tuple[int, int, str]] = []
    sid = cid = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Session:"):
            sid = int(line.split(":", 1)[1])
        elif line.startswith("Connection:"):
            cid = int(line.split(":", 1)[1])
        elif line.startswith("Initiator:") and sid is not None and cid is not None:
            out.append((sid, cid, line.split(":", 1)[1].strip()))
    return out


def parse_stat(text: str, lun: int = LUN) -> ExportStats:
    """``tgtadm --op stat --mode target --tid N``: completed reads and writes of ``lun``
    per session (columns tgt lun sid rd_subm(bytes,cmds) rd_done(…) wr_subm(…) wr_done(…) errs)."""
    stats = ExportStats()
    for raw in text.splitlines()[1:]:
        cols = raw.split()
        if len(cols) != 12 or not all(c.isdigit() for c in cols):
            continue
        if int(cols[1]) != lun:
            continue
        rd_bytes, rd_ops, wr_bytes, wr_ops = int(cols[5]), int(cols[6]), int(cols[9]), int(cols[10])
        stats.per_session[cols[2]] = (rd_bytes, rd_ops, wr_bytes, wr_ops)
        stats.read_bytes += rd_bytes
        stats.read_ops += rd_ops
        stats.write_bytes += wr_bytes
        stats.write_ops += wr_ops
    return stats


def _check_spec(spec: ExportSpec) -> None:
    if not IQN_RE.fullmatch(spec.target) or not spec.target.startswith(IQN_PREFIX):
        raise StorageError(f"invalid target name {spec.target!r}")
    for initiator in spec.initiators:
        if not IQN_RE.fullmatch(initiator):
            raise StorageError(f"invalid initiator name {initiator!r}")
    if not CHAP_USER_RE.fullmatch(spec.chap_user) or not CHAP_PASSWORD_RE.fullmatch(spec.chap_password):
        raise StorageError("invalid CHAP user or password (12-64 of A-Z a-z 0-9 . _ ~ -)")
    if not spec.path.startswith("/") or "\n" in spec.path:
        raise StorageError(f"invalid backing path {spec.path!r}")


class TgtExports:
    kind = "tgt"

    def __init__(self, portal: str, control_port: int | None = None, runner: Runner = run_command, tgtadm: str = "tgtadm") -> None:
        self.portal = portal
        self.runner = runner
        self.base = [tgtadm] + (["-C", str(control_port)] if control_port is not None else []) + ["--lld", "iscsi"]

    def _adm(self, *args: str) -> str:
        return self.runner([*self.base, *args])

    def _targets(self) -> dict[str, _Target]:
        return parse_show(self._adm("--op", "show", "--mode", "target"))

    def ensure(self, spec: ExportSpec) -> None:
        _check_spec(spec)
        targets = self._targets()
        target = targets.get(spec.target)
        if target is None:
            tid = max((t.tid for t in targets.values()), default=0) + 1
            self._adm("--op", "new", "--mode", "target", "--tid", str(tid), "--targetname", spec.target)
            target = _Target(tid, spec.target, {}, [], [])
        tid = str(target.tid)
        if target.luns.get(LUN) not in (None, spec.path):
            self._adm("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", str(LUN))
            target.luns.pop(LUN)
        if LUN not in target.luns:
            self._adm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(LUN), "--backing-store", spec.path, "--bstype", "rdwr")
        self._switch_acl(target, spec.initiators)
        if spec.chap_user not in target.accounts:
            known = self._adm("--op", "show", "--mode", "account").split()
            if spec.chap_user not in known:
                self._adm("--op", "new", "--mode", "account", "--user", spec.chap_user, "--password", spec.chap_password)
            self._adm("--op", "bind", "--mode", "account", "--tid", tid, "--user", spec.chap_user)

    def _switch_acl(self, target: _Target, initiators: tuple[str, ...]) -> None:
        tid = str(target.tid)
        for initiator in initiators:
            if initiator not in target.acl:
                self._adm("--op", "bind", "--mode", "target", "--tid", tid, "--initiator-name", initiator)
        removed = [i for i in target.acl if i not in initiators]
        for initiator in removed:
            self._adm("--op", "unbind", "--mode", "target", "--tid", tid, "--initiator-name", initiator)
        if removed:  # an ACL change does not end open sessions: close the fenced ones
            for sid, cid, initiator in parse_connections(self._adm("--op", "show", "--mode", "conn", "--tid", tid)):
                if initiator not in initiators:
                    self._adm("--op", "delete", "--mode", "conn", "--tid", tid, "--sid", str(sid), "--cid", str(cid))

    def set_initiators(self, target: str, initiators: tuple[str, ...]) -> None:
        for initiator in initiators:
            if not IQN_RE.fullmatch(initiator):
                raise StorageError(f"invalid initiator name {initiator!r}")
        found = self._targets().get(target)
        if found is None:
            raise StorageError(f"no export {target}")
        self._switch_acl(found, initiators)

    def remove(self, target: str) -> None:
        found = self._targets().get(target)
        if found is None:
            return
        self._adm("--op", "delete", "--mode", "target", "--tid", str(found.tid), "--force")
        for account in found.accounts:
            try:
                self._adm("--op", "delete", "--mode", "account", "--user", account)
            except StorageError:
                pass  # bound elsewhere: left for that target

    def exports(self) -> dict[str, ExportState]:
        out = {}
        for name, t in self._targets().items():
            if not name.startswith(IQN_PREFIX):
                continue  # not ours
            sessions = len(parse_connections(self._adm("--op", "show", "--mode", "conn", "--tid", str(t.tid))))
            out[name] = ExportState(name, t.luns.get(LUN), tuple(t.acl), tuple(t.accounts), sessions)
        return out

    def stats(self, target: str) -> ExportStats:
        found = self._targets().get(target)
        if found is None:
            raise StorageError(f"no export {target}")
        return parse_stat(self._adm("--op", "stat", "--mode", "target", "--tid", str(found.tid)))


SOCKET_DIR = Path("/run/tgtd")


def free_control_port(low: int = 1000, high: int = 9999) -> int:
    """A tgtd management channel number (a unix socket ``/run/tgtd/socket.N``) not in use."""
    import random

    for n in random.sample(range(low, high), 200):
        if not (SOCKET_DIR / f"socket.{n}").exists() and not (SOCKET_DIR / f"socket.{n}.lock").exists():
            return n
    raise StorageError("no free tgtd control port")


class TgtDaemon:
    """A private tgtd (foreground, own control port and portal): the embedded setup and
    the tests. Production hosts run Debian's tgt service instead."""

    def __init__(self, control_port: int, portal: str, log_path: Path, tgtd: str = "tgtd", tgtadm: str = "tgtadm", pid_file: Path | None = None) -> None:
        self.control_port = control_port
        self.portal = portal
        self.log_path = log_path
        self.pid_file = pid_file
        self.tgtd, self.tgtadm = tgtd, tgtadm
        self.proc: subprocess.Popen[bytes] | None = None

    def end_leftover(self) -> None:
        """A tgtd of ours that outlived its cloudd (killed hard) still holds the portal:
        end it, by the PID we recorded and only if that PID is still a tgtd."""
        if self.pid_file is None:
            return
        try:
            pid_text, _, port_text = self.pid_file.read_text().partition(" ")
            pid = int(pid_text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            self.pid_file.unlink(missing_ok=True)
            return
        if cmdline and Path(cmdline[0].decode(errors="replace")).name == "tgtd":
            os.kill(pid, signal.SIGKILL)
        for leftover in (SOCKET_DIR / f"socket.{port_text.strip()}", SOCKET_DIR / f"socket.{port_text.strip()}.lock"):
            if port_text.strip().isdigit():
                leftover.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    def start(self, timeout: float = 10.0) -> "TgtDaemon":
        self.end_leftover()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [self.tgtd, "-f", "-C", str(self.control_port), "--iscsi", f"portal={self.portal}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        if self.pid_file is not None:
            self.pid_file.write_text(f"{self.proc.pid} {self.control_port}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                run_command([self.tgtadm, "-C", str(self.control_port), "--op", "show", "--mode", "sys"], timeout=5)
                return self
            except StorageError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise StorageError(f"tgtd did not start; see {self.log_path}") from None
                time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """tgtd ignores SIGTERM in the foreground: take it offline, delete its targets and
        the system through tgtadm; SIGKILL (its PID only) if it still runs after that."""
        if self.proc is not None and self.proc.poll() is None:
            self._shut_down(timeout)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        for leftover in (SOCKET_DIR / f"socket.{self.control_port}", SOCKET_DIR / f"socket.{self.control_port}.lock"):
            leftover.unlink(missing_ok=True)

    def _shut_down(self, timeout: float) -> None:
        assert self.proc is not None
        adm = [self.tgtadm, "-C", str(self.control_port)]
        try:
            run_command([*adm, "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline"], timeout=5)
            for target in parse_show(run_command([*adm, "--lld", "iscsi", "--op", "show", "--mode", "target"], timeout=5)).values():
                run_command([*adm, "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", str(target.tid), "--force"], timeout=5)
            run_command([*adm, "--op", "delete", "--mode", "system"], timeout=5)
            self.proc.wait(timeout=timeout)
        except (StorageError, subprocess.TimeoutExpired):
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
