"""Exports through the kernel's iSCSI target (LIO), configured with rtslib-fb (``kind = "lio"``).

Per export: a storage object ``cloudd-<target suffix>`` (``block`` for a ``/dev/…`` path,
``fileio`` for a regular file), the iSCSI target named by the spec's IQN, TPG 1 with
``authentication=1`` and no generated ACLs, a network portal on ``portal``, LUN 1, and per
allowed initiator a NodeACL with the CHAP account and mapped LUN 1.

rtslib writes configfs directly, so nothing survives a reboot by itself: the agent ensures its
exports again when it starts (nothing is saved to ``/etc/rtslib-fb-target``). The TPG's own
CHAP attributes hold the export's account for ``set_initiators`` (they only take part in
authentication for generated, demo-mode ACLs, which are off here).

iSCSI names are case-insensitive and LIO stores them lowercased (rtslib normalises every IQN):
targets and initiators are looked up without regard to case, and ``exports()`` reports them
as LIO holds them, lowercased. LIO also refuses ``_`` in an IQN (RFC 3720 allows only
letters, digits, ``-``, ``.`` and ``:``): such names are refused here with that reason.

``rtslib_fb`` is imported on first use; tests pass a fake module instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloudd.ops.storage import IQN_PREFIX, IQN_RE, ExportSpec, ExportState, ExportStats, StorageError

LUN_INDEX = 1
TPG_TAG = 1
CHAP_USER_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,255}$")
CHAP_PASSWORD_RE = re.compile(r"^[!-~]{1,255}$")  # printable ASCII, no spaces: written to configfs as is
MIB = 1 << 20
Counters = tuple[int, int, int, int]  # read_bytes, read_ops, write_bytes, write_ops
ZERO: Counters = (0, 0, 0, 0)


def lio_unavailable_reason(configfs_dir: str = "/sys/kernel/config/target", module: str = "rtslib_fb") -> str | None:
    """Why LIO exports cannot work on this host, or None (tests point both at what they simulate)."""
    if importlib.util.find_spec(module) is None:
        return "rtslib-fb is not installed (pip install rtslib-fb, or apt install python3-rtslib-fb)"
    if not os.path.isdir(configfs_dir):
        return f"this kernel has no LIO/configfs (no {configfs_dir}: modprobe target_core_mod iscsi_target_mod)"
    return None


def _read_text(path: str) -> str:
    return Path(path).read_text(encoding="ascii")


def parse_portal(portal: str) -> tuple[str, int]:
    """``10.0.0.5:3260`` → ("10.0.0.5", 3260); ``[fd00::5]:3260`` → ("[fd00::5]", 3260), as rtslib wants it."""
    host, sep, port_text = portal.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
        port = int(port_text)
    except ValueError:
        raise StorageError(f"invalid portal {portal!r}") from None
    if not sep or not 0 < port < 65536 or (isinstance(ip, ipaddress.IPv6Address) and host == bare):
        raise StorageError(f"invalid portal {portal!r}")
    return (f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)), port


class LioExports:
    """``ExportBackend`` over LIO. ``stats`` reads LIO's configfs statistics under the rtslib
    objects' ``path``: the LUN's ``statistics/scsi_tgt_port`` (whole export) and each ACL's
    mapped LUN ``statistics/scsi_auth_intr`` (per logged-in initiator, counted since the ACL was
    made). LIO keeps megabytes (bytes >> 20) and one command count for reads and writes
    together: bytes are whole MiB, ``read_ops`` carries every command and ``write_ops`` stays 0.
    Counters that cannot be read (an object without ``path``, a kernel without the files) are 0.
    """

    kind = "lio"

    def __init__(
        self,
        portal: str,
        rtslib: Any = None,
        iqn_prefix: str = IQN_PREFIX,
        read_text: Callable[[str], str] = _read_text,
        file_size: Callable[[str], int] = os.path.getsize,
    ) -> None:
        self.portal = portal
        self.portal_ip, self.portal_port = parse_portal(portal)
        self._rtslib = rtslib
        self.iqn_prefix = iqn_prefix
        self.read_text = read_text
        self.file_size = file_size

    # -- the contract

    def ensure(self, spec: ExportSpec) -> None:
        self._check_spec(spec)
        with self._errors():
            storage = self._storage_object(spec)
            target = self._target(spec.target) or self.rts.Target(self.rts.FabricModule("iscsi"), spec.target, mode="create")
            tpg = self._tpg(target, create=True)
            _set_attribute(tpg, "authentication", "1")
            _set_attribute(tpg, "generate_node_acls", "0")
            _set_chap(tpg, spec.chap_user, spec.chap_password)
            self._portal(tpg)
            lun = self._lun(tpg, storage)
            self._apply_acls(tpg, lun, spec.initiators, spec.chap_user, spec.chap_password)
            if not tpg.enable:
                tpg.enable = True

    def set_initiators(self, target: str, initiators: tuple[str, ...]) -> None:
        """New ACLs first, then the old ones are deleted: deleting a NodeACL makes LIO end the
        sessions of that initiator, and its later logins find no ACL."""
        self._check_target(target)
        _check_initiators(initiators)
        with self._errors():
            found = self._target(target)
            tpg = self._tpg(found, create=False) if found is not None else None
            lun = self._find_lun(tpg) if tpg is not None else None
            if tpg is None or lun is None:
                raise StorageError(f"{target} is not exported here")
            user, password = tpg.chap_userid, tpg.chap_password
            if not user or not password:
                raise StorageError(f"{target} has no CHAP account recorded: ensure it again")
            self._apply_acls(tpg, lun, initiators, user, password)

    def remove(self, target: str) -> None:
        self._check_target(target)
        with self._errors():
            found = self._target(target)
            if found is not None:
                found.delete()
            storage = self._find_storage_object(self._storage_name(target))
            if storage is not None:
                storage.delete()

    def exports(self) -> dict[str, ExportState]:
        with self._errors():
            prefix = self.iqn_prefix.lower() + ":"
            targets = [t for t in self.rts.FabricModule("iscsi").targets if str(t.wwn).lower().startswith(prefix)]
            return {str(t.wwn): self._state(t) for t in targets}

    def stats(self, target: str) -> ExportStats:
        """Counters of the export now; empty when it is not exported here."""
        self._check_target(target)
        with self._errors():
            found = self._target(target)
            tpg = self._tpg(found, create=False) if found is not None else None
            lun = self._find_lun(tpg) if tpg is not None else None
            if tpg is None or lun is None:
                return ExportStats()
            read_bytes, read_ops, write_bytes, write_ops = self._counters(lun, "scsi_tgt_port", "in_cmds")
            stats = ExportStats(read_bytes=read_bytes, read_ops=read_ops, write_bytes=write_bytes, write_ops=write_ops)
            for acl in tpg.node_acls:
                session = acl.session
                mapped = _mapped_lun(acl)
                if session and mapped is not None:
                    stats.per_session[str(session.get("id", acl.node_wwn))] = self._counters(mapped, "scsi_auth_intr", "num_cmds")
            return stats

    # -- pieces

    @property
    def rts(self) -> Any:
        if self._rtslib is None:
            try:
                self._rtslib = importlib.import_module("rtslib_fb")
            except ImportError:
                raise StorageError("rtslib-fb is not installed on this node") from None
        return self._rtslib

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """rtslib's errors (and configfs' OSErrors) as StorageError."""
        rtslib_error = getattr(self.rts, "RTSLibError", RuntimeError)
        try:
            yield
        except StorageError:
            raise
        except (rtslib_error, OSError) as exc:
            raise StorageError(f"LIO: {exc}") from None

    def _storage_name(self, target: str) -> str:
        return "cloudd-" + re.sub(r"[^a-z0-9-]", "-", target[len(self.iqn_prefix) + 1:].lower())

    def _find_storage_object(self, name: str) -> Any:
        return next((so for so in self.rts.RTSRoot().storage_objects if so.name == name), None)

    def _storage_object(self, spec: ExportSpec) -> Any:
        name = self._storage_name(spec.target)
        storage = self._find_storage_object(name)
        if storage is not None and storage.udev_path != spec.path:
            target = self._target(spec.target)  # the path changed: its LUN goes with the old object
            if target is not None:
                target.delete()
            storage.delete()
            storage = None
        if storage is not None:
            return storage
        if spec.path.startswith("/dev/"):
            return self.rts.BlockStorageObject(name, dev=spec.path)
        return self.rts.FileIOStorageObject(name, dev=spec.path, size=self.file_size(spec.path))

    def _target(self, wwn: str) -> Any:
        return next((t for t in self.rts.FabricModule("iscsi").targets if str(t.wwn).lower() == wwn.lower()), None)

    def _tpg(self, target: Any, create: bool) -> Any:
        found = next((tpg for tpg in target.tpgs if tpg.tag == TPG_TAG), None)
        if found is None and create:
            found = self.rts.TPG(target, TPG_TAG, mode="create")
        return found

    def _portal(self, tpg: Any) -> None:
        if not any(p.ip_address == self.portal_ip and p.port == self.portal_port for p in tpg.network_portals):
            self.rts.NetworkPortal(tpg, self.portal_ip, self.portal_port, mode="create")

    def _find_lun(self, tpg: Any) -> Any:
        return next((lun for lun in tpg.luns if lun.lun == LUN_INDEX), None)

    def _lun(self, tpg: Any, storage: Any) -> Any:
        lun = self._find_lun(tpg)
        if lun is not None and lun.storage_object.name == storage.name and lun.storage_object.plugin == storage.plugin:
            return lun
        if lun is not None:
            lun.delete()  # rtslib deletes the mapped LUNs with it; _apply_acls maps the new one
        return self.rts.LUN(tpg, LUN_INDEX, storage)

    def _apply_acls(self, tpg: Any, lun: Any, initiators: tuple[str, ...], user: str, password: str) -> None:
        existing = {str(acl.node_wwn).lower(): acl for acl in tpg.node_acls}
        wanted = [initiator.lower() for initiator in initiators]
        for initiator in wanted:
            acl = existing.get(initiator) or self.rts.NodeACL(tpg, initiator, mode="create")
            _set_chap(acl, user, password)
            if _mapped_lun(acl) is None:
                self.rts.MappedLUN(acl, LUN_INDEX, lun)
        for wwn, acl in existing.items():
            if wwn not in wanted:
                acl.delete()

    def _state(self, target: Any) -> ExportState:
        tpg = self._tpg(target, create=False)
        if tpg is None:
            return ExportState(target=str(target.wwn), path=None, initiators=(), chap_users=())
        lun = self._find_lun(tpg)
        acls = list(tpg.node_acls)
        return ExportState(
            target=str(target.wwn),
            path=lun.storage_object.udev_path if lun is not None else None,
            initiators=tuple(sorted(str(acl.node_wwn) for acl in acls)),
            chap_users=tuple(sorted({str(acl.chap_userid) for acl in acls if acl.chap_userid})),
            sessions=sum(1 for acl in acls if acl.session),
        )

    def _counters(self, obj: Any, group: str, commands: str) -> Counters:
        base = getattr(obj, "path", None)
        if not base:
            return ZERO
        try:
            values = [int(self.read_text(f"{base}/statistics/{group}/{name}").strip()) for name in ("read_mbytes", commands, "write_mbytes")]
        except (OSError, ValueError):
            return ZERO
        return values[0] * MIB, values[1], values[2] * MIB, 0

    # -- checks

    def _check_target(self, target: str) -> None:
        if not IQN_RE.fullmatch(target) or not target.lower().startswith(self.iqn_prefix.lower() + ":"):
            raise StorageError(f"invalid target {target!r}")
        _check_iscsi_name(target)

    def _check_spec(self, spec: ExportSpec) -> None:
        self._check_target(spec.target)
        _check_initiators(spec.initiators)
        if not spec.path.startswith("/") or any(ord(char) < 32 for char in spec.path) or len(spec.path) > 4096:
            raise StorageError(f"invalid export path {spec.path!r}")
        if not CHAP_USER_RE.fullmatch(spec.chap_user) or not CHAP_PASSWORD_RE.fullmatch(spec.chap_password):
            raise StorageError(f"invalid CHAP account for {spec.target}")


def _check_initiators(initiators: tuple[str, ...]) -> None:
    for initiator in initiators:
        if not IQN_RE.fullmatch(initiator):
            raise StorageError(f"invalid initiator {initiator!r}")
        _check_iscsi_name(initiator)


def _check_iscsi_name(name: str) -> None:
    if "_" in name:
        raise StorageError(f"{name!r} is not a valid iSCSI name for LIO: '_' is not allowed (RFC 3720)")


def _mapped_lun(acl: Any) -> Any:
    return next((m for m in acl.mapped_luns if m.mapped_lun == LUN_INDEX), None)


def _set_attribute(obj: Any, name: str, value: str) -> None:
    if str(obj.get_attribute(name)) != value:
        obj.set_attribute(name, value)


def _set_chap(obj: Any, user: str, password: str) -> None:
    if obj.chap_userid != user:
        obj.chap_userid = user
    if obj.chap_password != password:
        obj.chap_password = password
