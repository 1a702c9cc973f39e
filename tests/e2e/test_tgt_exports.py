"""Real iSCSI exports: file volumes served by a private tgtd on loopback, read and written
by qemu's own initiator (qemu-io, qemu-img through ``iscsi://``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cloudd.ops.file_volumes import FileVolumes
from cloudd.ops.storage import ExportSpec, StorageError, node_initiator, volume_target
from cloudd.ops.tgt import TgtDaemon, TgtExports, free_control_port
from tests.cluster.harness import free_port

pytestmark = [pytest.mark.e2e]

MIB = 1 << 20
PASSWORD = "chap-secret-0123"


def tools_missing() -> str | None:
    for tool in ("tgtd", "tgtadm", "qemu-io", "qemu-img"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install.sh installs tgt and qemu-utils)"
    return None


def io(exports: TgtExports, target: str, initiator: str, *commands: str, password: str = PASSWORD, user: str = "vol-user") -> subprocess.CompletedProcess[str]:
    opts = (
        f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={exports.portal},file.target={target},file.lun=1,"
        f"file.initiator-name={initiator},file.user={user},file.password-secret=chap"
    )
    args = ["qemu-io", "--object", f"secret,id=chap,data={password}", "--image-opts", opts]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def spec(volumes: FileVolumes, volume_id: str, *initiators: str) -> ExportSpec:
    return ExportSpec(volume_target(volume_id), str(volumes.path(volume_id)), initiators, "vol-user", PASSWORD)


def test_a_volume_is_written_and_read_through_iscsi_then_resized_and_removed(tgt: TgtExports, tmp_path: Path) -> None:
    volumes = FileVolumes(tmp_path / "pool")
    info = volumes.create("v1", 64 * MIB)
    assert info.size_bytes == 64 * MIB and info.allocated_bytes == 0  # sparse
    node_a = node_initiator("hv-a")
    tgt.ensure(spec(volumes, "v1", node_a))
    tgt.ensure(spec(volumes, "v1", node_a))  # idempotent
    done = io(tgt, volume_target("v1"), node_a, "write -P 0x5a 1M 2M", "read -P 0x5a 1M 2M")
    assert done.returncode == 0 and "read 2097152/2097152" in done.stdout, done.stdout + done.stderr
    assert volumes.info("v1").allocated_bytes >= 2 * MIB  # type: ignore[union-attr]
    state = tgt.exports()[volume_target("v1")]
    assert state.path == str(volumes.path("v1")) and state.initiators == (node_a,) and state.chap_users == ("vol-user",)
    # offline resize: the target is removed, the file grown, the export made again
    tgt.remove(volume_target("v1"))
    assert volumes.resize("v1", 128 * MIB).size_bytes == 128 * MIB
    tgt.ensure(spec(volumes, "v1", node_a))
    size = subprocess.run(["qemu-io", "--object", f"secret,id=chap,data={PASSWORD}", "--image-opts",
                           f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={tgt.portal},file.target={volume_target('v1')},file.lun=1,"
                           f"file.initiator-name={node_a},file.user=vol-user,file.password-secret=chap", "-c", "length"], capture_output=True, text=True, timeout=60)
    assert "128 MiB" in size.stdout, size.stdout + size.stderr
    assert "read 1048576/1048576" in io(tgt, volume_target("v1"), node_a, "read -P 0x5a 1M 1M").stdout  # data kept
    tgt.remove(volume_target("v1"))
    tgt.remove(volume_target("v1"))  # idempotent
    assert tgt.exports() == {}
    volumes.delete("v1")
    assert volumes.volumes() == [] and not volumes.path("v1").exists()


def test_switching_the_acl_fences_the_old_initiator(tgt: TgtExports, tmp_path: Path) -> None:
    volumes = FileVolumes(tmp_path / "pool")
    volumes.create("v2", 16 * MIB)
    old, new = node_initiator("hv-old"), node_initiator("hv-new")
    tgt.ensure(spec(volumes, "v2", old))
    assert io(tgt, volume_target("v2"), old, "write -P 1 0 4k").returncode == 0
    refused = io(tgt, volume_target("v2"), new, "read 0 4k")
    assert refused.returncode != 0 and "Target not found(515)" in refused.stderr
    # a session of the old node that is open during the switch is closed by it
    holder = subprocess.Popen(
        ["qemu-io", "--object", f"secret,id=chap,data={PASSWORD}", "--image-opts",
         f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={tgt.portal},file.target={volume_target('v2')},file.lun=1,"
         f"file.initiator-name={old},file.user=vol-user,file.password-secret=chap"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while tgt.exports()[volume_target("v2")].sessions == 0:
            assert time.monotonic() < deadline, "the holder never logged in"
            time.sleep(0.1)
        tgt.set_initiators(volume_target("v2"), (new,))
        assert tgt.exports()[volume_target("v2")].sessions == 0
    finally:
        holder.kill()
        holder.wait(timeout=10)
    fenced = io(tgt, volume_target("v2"), old, "read 0 4k")
    assert fenced.returncode != 0 and "Target not found(515)" in fenced.stderr
    assert io(tgt, volume_target("v2"), new, "read -P 1 0 4k").returncode == 0


def test_a_wrong_chap_password_is_refused(tgt: TgtExports, tmp_path: Path) -> None:
    volumes = FileVolumes(tmp_path / "pool")
    volumes.create("v3", 16 * MIB)
    node = node_initiator("hv-a")
    tgt.ensure(spec(volumes, "v3", node))
    refused = io(tgt, volume_target("v3"), node, "read 0 4k", password="not-the-password")
    assert refused.returncode != 0 and "Authentication failure(513)" in refused.stderr


def test_a_volume_from_an_image_through_qemu_img_and_the_target_statistics(tgt: TgtExports, tmp_path: Path) -> None:
    image = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 1M", str(image)], check=True, capture_output=True)
    volumes = FileVolumes(tmp_path / "pool")
    volumes.create("v4", 48 * MIB, source=str(image))
    node = node_initiator("hv-a")
    tgt.ensure(spec(volumes, "v4", node))
    url = f"iscsi://127.0.0.1:{tgt.portal.rsplit(':', 1)[1]}/{volume_target('v4')}/1"
    info = subprocess.run(["qemu-img", "info", "--image-opts",
                           f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={tgt.portal},file.target={volume_target('v4')},file.lun=1,"
                           f"file.initiator-name={node},file.user=vol-user,file.password-secret=chap", "--object", f"secret,id=chap,data={PASSWORD}"],
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "48 MiB" in info.stdout, (url, info.stderr)
    assert io(tgt, volume_target("v4"), node, "read -P 0x77 0 1M").returncode == 0  # the image's data
    assert tgt.stats(volume_target("v4")).read_bytes == 0  # counters live with sessions: none open now
    holder = subprocess.Popen(
        ["qemu-io", "--object", f"secret,id=chap,data={PASSWORD}", "--image-opts",
         f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={tgt.portal},file.target={volume_target('v4')},file.lun=1,"
         f"file.initiator-name={node},file.user=vol-user,file.password-secret=chap"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert holder.stdin is not None
        deadline = time.monotonic() + 10
        # qemu-io takes one command per wake-up of its input: send them one at a time
        for command, done in (("read 0 1M", lambda st: st.read_bytes >= MIB), ("write -P 3 0 2M", lambda st: st.write_bytes >= 2 * MIB)):
            holder.stdin.write(command + "\n")
            holder.stdin.flush()
            while not done(stats := tgt.stats(volume_target("v4"))):
                assert time.monotonic() < deadline, stats
                time.sleep(0.1)
        assert stats.write_ops >= 1 and stats.read_ops >= 1 and len(stats.per_session) == 1
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_bad_names_are_refused_before_tgtadm_runs(tgt: TgtExports, tmp_path: Path) -> None:
    calls: list[list[str]] = []
    recorder = TgtExports(tgt.portal, runner=lambda args: calls.append(args) or "")
    for bad in (
        ExportSpec("iqn.2026-11.io.cloudd:volume:x; rm -rf /", "/tmp/x", (), "u", PASSWORD),
        ExportSpec(volume_target("ok"), "/tmp/x", ("not an iqn",), "vol-user", PASSWORD),
        ExportSpec(volume_target("ok"), "/tmp/x", (), "vol user", PASSWORD),
        ExportSpec(volume_target("ok"), "relative/path", (), "vol-user", PASSWORD),
    ):
        with pytest.raises(StorageError):
            recorder.ensure(bad)
    with pytest.raises(StorageError):
        volume_target("../etc")
    assert calls == []


def test_a_private_tgtd_left_by_a_killed_node_is_ended_by_the_next_start(tmp_path: Path) -> None:
    reason = tools_missing()
    if reason:
        pytest.skip(reason)
    portal = f"127.0.0.1:{free_port('127.0.0.1')}"
    pid_file = tmp_path / "tgtd.pid"
    first = TgtDaemon(free_control_port(), portal, tmp_path / "tgtd.log", pid_file=pid_file).start()
    assert first.proc is not None
    old_pid = first.proc.pid
    # the node dies without stopping it; a new start on the same portal must still work
    second = TgtDaemon(free_control_port(), portal, tmp_path / "tgtd.log", pid_file=pid_file).start()
    try:
        first.proc.wait(timeout=10)  # ended by the second start (by its recorded PID)
        assert second.proc is not None and second.proc.pid != old_pid
        assert pid_file.read_text().split()[0] == str(second.proc.pid)
        exports = TgtExports(portal, control_port=second.control_port)
        assert exports.exports() == {}
    finally:
        second.stop()
    assert not pid_file.exists()
