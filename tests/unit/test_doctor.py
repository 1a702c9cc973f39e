"""``cloudd doctor``: every check against simulated hosts (a temp dir standing for ``/``, fake
binaries, a fake command runner answering with recorded output), the exit-code mapping, the
text and JSON output through the click command, and one smoke run of the real checks here."""

from __future__ import annotations

import json
import socket
import stat
import threading
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloudd import doctor
from cloudd.doctor import (
    STATUSES,
    Finding,
    Host,
    NodeInfo,
    Output,
    check_bridge,
    check_clock,
    check_data_dir,
    check_dnsmasq,
    check_drbd,
    check_kvm,
    check_libvirt,
    check_lio,
    check_lvm,
    check_nftables,
    check_qemu,
    check_raft_peers,
    check_tgt,
    check_vlan,
    check_vxlan,
    exit_code,
    guarded,
    kernel_feature,
    render_text,
    report,
    run_checks,
    worst,
)
from cloudd.main import cli

GIB = 1 << 30
Usage = namedtuple("Usage", "total used free")
QEMU_IMG_HELP = """qemu-img version 7.2.19
usage: qemu-img [standard options] command [command options]
  '-h' with or without a command shows this help and lists the supported formats

Supported formats: blkdebug bochs cloop file host_device http iscsi iser luks nbd qcow2 raw vmdk
"""
QEMU_IMG_HELP_NO_ISCSI = QEMU_IMG_HELP.replace(" iscsi iser", "")


class FakeRunner:
    """Answers commands from recorded output keyed by the command line; an unknown command
    raises FileNotFoundError like a missing binary; an Exception value is raised."""

    def __init__(self, answers: dict[str, Output | Exception] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> Output:
        self.calls.append(argv)
        answer = self.answers.get(" ".join(argv))
        if answer is None:
            raise FileNotFoundError(argv[0])
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeHost:
    """A temp dir laid out like a host's ``/``."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.runner = FakeRunner()

    def file(self, path: str, text: str = "") -> Path:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def dir(self, path: str) -> Path:
        target = self.root / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        return target

    def binary(self, name: str, script: str = "exit 0\n", where: str = "/usr/bin") -> Path:
        target = self.file(f"{where}/{name}", "#!/bin/sh\n" + script)
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return target

    def answer(self, command: str, text: str = "", returncode: int = 0) -> None:
        self.runner.answers[command] = Output(returncode, text)

    def host(self, **kwargs: Any) -> Host:
        kwargs.setdefault("runner", self.runner)
        kwargs.setdefault("kernel_release", "6.1.0-test-amd64")
        return Host.under(self.root, **kwargs)


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def node_info(tmp_path: Path, **fields: Any) -> NodeInfo:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    if fields:
        (data_dir / "node.json").write_text(json.dumps(fields))
    return NodeInfo.load(data_dir)


def only(findings: list[Finding], check: str | None = None) -> Finding:
    chosen = [f for f in findings if check is None or f.check == check]
    assert len(chosen) == 1, findings
    return chosen[0]


# -- findings, worst status, exit codes


def test_finding_refuses_unknown_status() -> None:
    with pytest.raises(ValueError):
        Finding("x", "bad", "m")


@pytest.mark.parametrize(
    ("statuses", "expected", "code"),
    [([], "ok", 0), (["ok"], "ok", 0), (["ok", "info"], "info", 0), (["info", "warn", "ok"], "warn", 1),
     (["warn", "fail", "info"], "fail", 2), (["fail"], "fail", 2)],
)
def test_worst_status_and_exit_code(statuses: list[str], expected: str, code: int) -> None:
    status = worst(Finding(f"c{i}", s, "m") for i, s in enumerate(statuses))
    assert status == expected
    assert exit_code(status) == code


def test_an_exception_in_a_check_becomes_a_warning(tmp_path: Path) -> None:
    def broken(host: Host, node: NodeInfo) -> list[Finding]:
        raise PermissionError("boom")

    def fine(host: Host, node: NodeInfo) -> list[Finding]:
        return [Finding("fine", "ok", "fine")]

    finding = only(guarded("broken", broken, Host(), node_info(tmp_path)))
    assert (finding.check, finding.status) == ("broken", "warn")
    assert "PermissionError" in finding.message and "boom" in finding.message
    _, findings = run_checks(tmp_path / "data", Host(), [("broken", broken), ("fine", fine)])
    assert [f.status for f in findings] == ["warn", "ok"]


def test_text_output_shows_fix_lines_only_for_warn_and_fail(tmp_path: Path) -> None:
    findings = [Finding("a", "ok", "fine", "never shown"), Finding("b", "info", "note", "not shown"),
                Finding("c", "warn", "hmm", "do this"), Finding("d", "fail", "bad", "do that")]
    text = render_text(node_info(tmp_path, name="n1"), findings)
    lines = text.splitlines()
    assert lines[0] == "cloudd doctor: node n1"
    assert lines[1].startswith("[ ok ] a") and lines[2].startswith("[info] b")
    assert lines[3].startswith("[warn] c") and lines[4].strip() == "fix: do this"
    assert lines[5].startswith("[fail] d") and lines[6].strip() == "fix: do that"
    assert lines[-1] == "worst: fail (exit 2)"
    assert "never shown" not in text and "not shown" not in text


def test_report_names_the_node_from_node_json_or_the_hostname(tmp_path: Path) -> None:
    assert report(node_info(tmp_path, name="node7"), [])["node"] == "node7"
    assert report(NodeInfo(tmp_path / "none"), [])["node"] == socket.gethostname()


# -- kvm


def test_kvm_missing_warns_about_tcg(fake: FakeHost) -> None:
    finding = only(check_kvm(fake.host()))
    assert finding.status == "warn" and "TCG" in finding.message
    assert "firmware" in (finding.fix or "") and "kvm" in (finding.fix or "")


def test_kvm_present_and_usable(fake: FakeHost) -> None:
    fake.file("/dev/kvm")
    assert only(check_kvm(fake.host())).status == "ok"


def test_kvm_present_but_not_accessible(fake: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.file("/dev/kvm")
    monkeypatch.setattr(doctor.os, "access", lambda path, mode: False)  # we may be root here
    finding = only(check_kvm(fake.host()))
    assert finding.status == "warn" and "not read/writable" in finding.message


# -- libvirt


class FakeConn:
    closed = False

    def getLibVersion(self) -> int:
        return 9_000_000

    def close(self) -> int:
        FakeConn.closed = True
        return 0


def test_libvirt_connects_to_the_uri_of_node_json(fake: FakeHost, tmp_path: Path) -> None:
    opened: list[str] = []

    def record(uri: str) -> FakeConn:
        opened.append(uri)
        return FakeConn()

    host = fake.host(libvirt_open=record)
    node = node_info(tmp_path, name="n1", roles=["hypervisor"], compute={"uri": "qemu+ssh://x/system"})
    finding = only(check_libvirt(host, node))
    assert opened == ["qemu+ssh://x/system"]
    assert finding.status == "ok" and "libvirt 9.0.0" in finding.message and FakeConn.closed


def test_libvirt_defaults_to_qemu_system(fake: FakeHost, tmp_path: Path) -> None:
    opened: list[str] = []

    def record(uri: str) -> FakeConn:
        opened.append(uri)
        return FakeConn()

    only(check_libvirt(fake.host(libvirt_open=record), node_info(tmp_path)))
    assert opened == ["qemu:///system"]


def test_libvirt_connection_refused_fails_with_a_fix(fake: FakeHost, tmp_path: Path) -> None:
    def refuse(uri: str) -> Any:
        raise RuntimeError("Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory")

    finding = only(check_libvirt(fake.host(libvirt_open=refuse), node_info(tmp_path)))
    assert finding.status == "fail" and "libvirt-sock" in finding.message and "libvirtd" in (finding.fix or "")


def test_libvirt_python_missing(fake: FakeHost, tmp_path: Path) -> None:
    def no_module(uri: str) -> Any:
        raise ImportError("No module named 'libvirt'")

    finding = only(check_libvirt(fake.host(libvirt_open=no_module), node_info(tmp_path)))
    assert finding.status == "fail" and "pip install libvirt-python" in (finding.fix or "")


def test_libvirt_gives_up_after_the_timeout(fake: FakeHost, tmp_path: Path) -> None:
    release = threading.Event()

    def hang(uri: str) -> Any:
        release.wait(10)
        return FakeConn()

    try:
        finding = only(check_libvirt(fake.host(libvirt_open=hang, libvirt_timeout=0.1), node_info(tmp_path)))
    finally:
        release.set()
    assert finding.status == "fail" and "did not answer within 0.1 s" in finding.message


def test_libvirt_test_uri_is_info(fake: FakeHost, tmp_path: Path) -> None:
    node = node_info(tmp_path, name="n1", compute={"uri": "test:///default"})
    finding = only(check_libvirt(fake.host(libvirt_open=lambda uri: FakeConn()), node))
    assert finding.status == "info" and "simulated hypervisor" in finding.message


def test_libvirt_test_uri_with_the_real_test_driver(fake: FakeHost, tmp_path: Path) -> None:
    node = node_info(tmp_path, name="n1", compute={"uri": "test:///default"})
    finding = only(check_libvirt(fake.host(libvirt_open=doctor._libvirt_open), node))
    assert finding.status == "info" and "simulated hypervisor" in finding.message


def test_libvirt_embedded_is_not_opened(fake: FakeHost, tmp_path: Path) -> None:
    def must_not_open(uri: str) -> Any:
        raise AssertionError("opened")

    node = node_info(tmp_path, name="n1", compute={"uri": "qemu:///embed?root=/var/lib/cloudd/libvirt"})
    finding = only(check_libvirt(fake.host(libvirt_open=must_not_open), node))
    assert finding.status == "info" and "embedded" in finding.message


def test_libvirt_not_needed_without_the_hypervisor_role(fake: FakeHost, tmp_path: Path) -> None:
    def must_not_open(uri: str) -> Any:
        raise AssertionError("opened")

    finding = only(check_libvirt(fake.host(libvirt_open=must_not_open), node_info(tmp_path, name="s1", roles=["storage"])))
    assert finding.status == "info" and "no hypervisor role" in finding.message


# -- qemu


def test_qemu_complete(fake: FakeHost) -> None:
    fake.binary("qemu-system-x86_64")
    fake.binary("qemu-img")
    fake.answer("qemu-img --help", QEMU_IMG_HELP)
    findings = check_qemu(fake.host())
    assert {f.check: f.status for f in findings} == {"qemu": "ok", "qemu-img": "ok", "qemu-iscsi": "ok"}
    assert "qemu-img lists iscsi" in only(findings, "qemu-iscsi").message


def test_qemu_iscsi_found_as_a_module_file(fake: FakeHost) -> None:
    fake.binary("qemu-system-x86_64")
    fake.binary("qemu-img")
    fake.answer("qemu-img --help", QEMU_IMG_HELP_NO_ISCSI)
    fake.file(doctor.QEMU_ISCSI_MODULE)
    assert only(check_qemu(fake.host()), "qemu-iscsi").status == "ok"


def test_qemu_without_iscsi_fails_with_block_extra(fake: FakeHost) -> None:
    fake.binary("qemu-system-x86_64")
    fake.binary("qemu-img")
    fake.answer("qemu-img --help", QEMU_IMG_HELP_NO_ISCSI)
    finding = only(check_qemu(fake.host()), "qemu-iscsi")
    assert finding.status == "fail" and finding.fix == "apt-get install qemu-block-extra"


def test_qemu_not_installed(fake: FakeHost) -> None:
    findings = check_qemu(fake.host())
    assert {f.check: f.status for f in findings} == {"qemu": "fail", "qemu-img": "fail", "qemu-iscsi": "fail"}
    assert "qemu-system-x86" in (only(findings, "qemu").fix or "") and "qemu-utils" in (only(findings, "qemu-img").fix or "")
    assert fake.runner.calls == []  # nothing to run


# -- storage: tgt, LIO, LVM, DRBD


def test_tgt(fake: FakeHost) -> None:
    fake.binary("tgtadm", where="/usr/sbin")
    finding = only(check_tgt(fake.host()))
    assert finding.status == "warn" and "tgtd" in finding.message and finding.fix == "apt-get install tgt"
    fake.binary("tgtd", where="/usr/sbin")
    assert only(check_tgt(fake.host())).status == "ok"


def test_lvm_unavailable_says_why(fake: FakeHost) -> None:
    finding = only(check_lvm(fake.host()))
    assert finding.status == "info"
    assert "apt install lvm2" in finding.message and "this kernel has no device-mapper" in finding.message


def test_lvm_tools_without_device_mapper(fake: FakeHost) -> None:
    fake.binary("lvm", where="/sbin")
    fake.file("/proc/misc", "237 loop-control\n232 kvm\n")
    finding = only(check_lvm(fake.host()))
    assert finding.status == "info" and "this kernel has no device-mapper" in finding.message
    assert finding.message.count("device-mapper (") == 1  # the driver's reason, not repeated


def test_lvm_available(fake: FakeHost) -> None:
    fake.binary("lvm", where="/sbin")
    fake.file("/proc/misc", "237 loop-control\n236 device-mapper\n")
    fake.file("/dev/mapper/control")
    assert only(check_lvm(fake.host())).status == "ok"


def test_lvm_tools_missing_on_a_kernel_with_device_mapper(fake: FakeHost) -> None:
    fake.file("/proc/misc", "236 device-mapper\n")
    fake.file("/dev/mapper/control")
    finding = only(check_lvm(fake.host()))
    assert finding.status == "info" and "apt install lvm2" in finding.message and "kernel" not in finding.message


def test_drbd(fake: FakeHost) -> None:
    finding = only(check_drbd(fake.host()))
    assert finding.status == "info" and "drbd-utils" in finding.message and "no /proc/drbd" in finding.message
    fake.binary("drbdadm", where="/usr/sbin")
    fake.file("/proc/drbd", "version: 8.4.11 (api:1/proto:86-101)\n")
    finding = only(check_drbd(fake.host()))
    assert finding.status == "info" and "not DRBD 9" in finding.message
    fake.file("/proc/drbd", "version: 9.2.8 (api:2/proto:86-122)\n")
    assert only(check_drbd(fake.host())).status == "ok"


def test_lio(fake: FakeHost) -> None:
    finding = only(check_lio(fake.host(rtslib_module="no_such_module_for_doctor_tests")))
    assert finding.status == "info" and "rtslib-fb" in finding.message and "no LIO/configfs" in finding.message
    finding = only(check_lio(fake.host(rtslib_module="json")))  # "installed" rtslib, no configfs
    assert finding.status == "info" and finding.message.count("no LIO/configfs") == 1
    fake.dir("/sys/kernel/config/target")
    assert only(check_lio(fake.host(rtslib_module="json"))).status == "ok"


# -- network


def test_nftables(fake: FakeHost) -> None:
    finding = only(check_nftables(fake.host()))
    assert finding.status == "warn" and finding.fix == "apt-get install nftables"
    fake.binary("nft", where="/usr/sbin")
    fake.answer("nft list tables", "Error: Operation not permitted\n", returncode=1)
    finding = only(check_nftables(fake.host()))
    assert finding.status == "warn" and "Operation not permitted" in finding.message and "root" in (finding.fix or "")
    fake.answer("nft list tables", "table inet filter\n")
    assert only(check_nftables(fake.host())).status == "ok"


def test_kernel_feature_sources(fake: FakeHost) -> None:
    host = fake.host()
    assert kernel_feature(host, "bridge") is None
    fake.file("/lib/modules/6.1.0-test-amd64/modules.dep",
              "kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz\n"
              "kernel/drivers/net/vxlan/vxlan.ko.xz: kernel/net/ipv4/udp_tunnel.ko.xz\n")
    assert kernel_feature(host, "vxlan") == "module"
    assert kernel_feature(host, "bridge") == "module"  # named as a dependency of br_netfilter
    assert kernel_feature(host, "8021q") is None
    fake.file("/lib/modules/6.1.0-test-amd64/modules.builtin", "kernel/net/bridge/bridge.ko\n")
    assert kernel_feature(host, "bridge") == "built in"
    fake.file("/proc/modules", "bridge 311296 1 br_netfilter, Live 0x0000000000000000\nstp 16384 1 bridge, Live 0x0\n")
    assert kernel_feature(host, "bridge") == "loaded"
    assert kernel_feature(host, "br") is None
    fake.dir("/sys/module/vxlan")
    assert kernel_feature(host, "vxlan") == "loaded"


def test_bridge_and_vxlan(fake: FakeHost) -> None:
    assert only(check_bridge(fake.host())).status == "warn"
    assert only(check_vxlan(fake.host())).status == "warn"
    fake.dir("/sys/module/bridge")
    fake.file("/proc/modules", "vxlan 90112 0 - Live 0x0\n")
    assert "loaded" in only(check_bridge(fake.host())).message
    assert only(check_vxlan(fake.host())).status == "ok"


def test_vlan(fake: FakeHost) -> None:
    finding = only(check_vlan(fake.host()))
    assert finding.status == "info" and "this kernel has no 802.1Q VLANs" in finding.message and "VXLAN" in finding.message
    fake.file("/lib/modules/6.1.0-test-amd64/modules.dep", "kernel/net/8021q/8021q.ko.xz: kernel/net/802/garp.ko.xz\n")
    assert only(check_vlan(fake.host())).status == "ok"
    fake.dir("/proc/net/vlan")
    assert "/proc/net/vlan" in only(check_vlan(fake.host())).message


def test_dnsmasq(fake: FakeHost) -> None:
    assert only(check_dnsmasq(fake.host())).status == "warn"
    fake.binary("dnsmasq", where="/usr/sbin")
    assert only(check_dnsmasq(fake.host())).status == "ok"


# -- clock


def test_clock_from_timedatectl(fake: FakeHost) -> None:
    fake.binary("timedatectl")
    fake.answer("timedatectl show -p NTPSynchronized", "NTPSynchronized=yes\n")
    assert only(check_clock(fake.host())).status == "ok"
    fake.answer("timedatectl show -p NTPSynchronized", "NTPSynchronized=no\n")
    finding = only(check_clock(fake.host()))
    assert finding.status == "warn" and "not synchronized" in finding.message and "chrony" in (finding.fix or "")


def test_clock_without_systemd_falls_back_to_timesyncd_file(fake: FakeHost) -> None:
    fake.binary("timedatectl")
    fake.answer("timedatectl show -p NTPSynchronized", "System has not been booted with systemd as init system (PID 1).\n", 1)
    fake.file("/run/systemd/timesync/synchronized")
    assert only(check_clock(fake.host())).status == "ok"


def test_clock_from_chrony(fake: FakeHost) -> None:
    fake.binary("chronyc")
    fake.answer("chronyc -n tracking", "Reference ID    : C0A80101 (192.168.1.1)\nLeap status     : Normal\n")
    assert only(check_clock(fake.host())).status == "ok"
    fake.answer("chronyc -n tracking", "Reference ID    : 00000000 ()\nLeap status     : Not synchronised\n")
    assert only(check_clock(fake.host())).status == "warn"


def test_clock_from_ntpd(fake: FakeHost) -> None:
    fake.binary("ntpq")
    fake.answer("ntpq -c rv 0 leap", "leap=00\n")
    assert only(check_clock(fake.host())).status == "ok"
    fake.answer("ntpq -c rv 0 leap", "leap=11\n")
    assert only(check_clock(fake.host())).status == "warn"


def test_clock_unknown_warns(fake: FakeHost) -> None:
    finding = only(check_clock(fake.host()))
    assert finding.status == "warn" and "cannot tell" in finding.message and "systemd-timesyncd" in (finding.fix or "")
    fake.binary("timedatectl")  # installed, but the runner says it is not there: still no crash
    assert only(check_clock(fake.host())).status == "warn"


# -- data dir


@pytest.mark.parametrize(("free_gib", "status"), [(50, "ok"), (10, "ok"), (9.9, "warn"), (1, "warn"), (0.5, "fail")])
def test_data_dir_free_space(fake: FakeHost, tmp_path: Path, free_gib: float, status: str) -> None:
    host = fake.host(disk_usage=lambda path: Usage(100 * GIB, 0, int(free_gib * GIB)))
    assert only(check_data_dir(host, node_info(tmp_path))).status == status


def test_data_dir_not_created_yet_uses_its_parent(fake: FakeHost, tmp_path: Path) -> None:
    asked: list[str] = []

    def usage(path: str) -> Usage:
        asked.append(path)
        return Usage(100 * GIB, 0, 20 * GIB)

    host = fake.host(disk_usage=usage)
    finding = only(check_data_dir(host, NodeInfo(tmp_path / "not" / "yet")))
    assert asked == [str(tmp_path)]
    assert finding.status == "ok" and "does not exist yet" in finding.message
    assert not (tmp_path / "not").exists()


# -- raft peers


def test_raft_peers_without_node_json(fake: FakeHost, tmp_path: Path) -> None:
    finding = only(check_raft_peers(fake.host(), node_info(tmp_path)))
    assert finding.status == "info" and "no node.json" in finding.message


def test_raft_peers_skip_this_node_and_warn_for_unreachable_ones(fake: FakeHost, tmp_path: Path) -> None:
    tried = []

    def connect(host: str, port: int, timeout: float) -> None:
        tried.append((host, port, timeout))
        if port == 8502:
            raise ConnectionRefusedError(111, "Connection refused")

    node = node_info(tmp_path, name="n1", raft_addr="10.0.0.1:8500", peers=["10.0.0.1:8500", "10.0.0.2:8501", "10.0.0.3:8502", "[fd00::4]:8503"])
    findings = check_raft_peers(fake.host(connect=connect), node)
    assert tried == [("10.0.0.2", 8501, 1.0), ("10.0.0.3", 8502, 1.0), ("fd00::4", 8503, 1.0)]
    assert [f.status for f in findings] == ["ok", "warn", "ok"]
    assert "10.0.0.3:8502" in findings[1].message and "Connection refused" in findings[1].message


def test_raft_peers_single_voter_and_bad_node_json(fake: FakeHost, tmp_path: Path) -> None:
    node = node_info(tmp_path, name="n1", raft_addr="10.0.0.1:8500", peers=["10.0.0.1:8500"])
    assert only(check_raft_peers(fake.host(), node)).status == "info"
    (tmp_path / "data" / "node.json").write_text("{not json")
    finding = only(check_raft_peers(fake.host(), NodeInfo.load(tmp_path / "data")))
    assert finding.status == "warn" and "cannot be read" in finding.message
    node = node_info(tmp_path, name="n1", raft_addr="a:1", peers=["a:1", "nonsense"])
    assert only(check_raft_peers(fake.host(), node)).status == "warn"


def test_raft_peers_real_tcp_connect_on_loopback(fake: FakeHost, tmp_path: Path) -> None:
    with socket.socket() as listener, socket.socket() as closed:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        up, down = (f"127.0.0.1:{s.getsockname()[1]}" for s in (listener, closed))
        node = node_info(tmp_path, name="n1", raft_addr="127.0.0.1:1", peers=["127.0.0.1:1", up, down])
        findings = check_raft_peers(Host.under(fake.root), node)
    assert [f.status for f in findings] == ["ok", "warn"]


# -- the command


def write_node_json(data_dir: Path, **fields: Any) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "node.json").write_text(json.dumps(fields))


def test_cli_json_on_a_simulated_host(fake: FakeHost, tmp_path: Path) -> None:
    fake.binary("qemu-system-x86_64")
    fake.binary("qemu-img", "echo 'Supported formats: file qcow2 raw iscsi'\n")
    for name in ("tgtd", "tgtadm", "nft", "dnsmasq"):
        fake.binary(name, where="/usr/sbin")
    fake.binary("timedatectl", "echo NTPSynchronized=yes\n")
    fake.file("/dev/kvm")
    fake.dir("/sys/module/bridge")
    fake.dir("/sys/module/vxlan")
    data_dir = tmp_path / "data"
    write_node_json(data_dir, name="node1", raft_addr="127.0.0.1:1", peers=["127.0.0.1:1"], roles=["hypervisor", "storage"],
                    compute={"uri": "test:///default"})
    result = CliRunner().invoke(cli, ["doctor", "--data-dir", str(data_dir), "--root", str(fake.root), "--json"])
    document = json.loads(result.output)
    assert set(document) == {"node", "findings", "worst"}
    assert document["node"] == "node1"
    assert document["worst"] in STATUSES and result.exit_code == exit_code(document["worst"])
    for finding in document["findings"]:
        assert set(finding) == {"check", "status", "message", "fix"} and finding["status"] in STATUSES
    statuses = {f["check"]: f["status"] for f in document["findings"]}
    assert statuses["kvm"] == "ok" and statuses["libvirt"] == "info" and statuses["qemu-iscsi"] == "ok"
    assert statuses["tgt"] == "ok" and statuses["bridge"] == "ok" and statuses["clock"] == "ok"
    assert statuses["nftables"] == "ok" and statuses["dnsmasq"] == "ok" and statuses["vlan"] == "info"
    assert {statuses["lvm"], statuses["drbd"], statuses["raft-peers"]} == {"info"}


def test_cli_text_on_a_bare_host(fake: FakeHost, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_node_json(data_dir, name="node2", roles=["storage"], peers=[])
    result = CliRunner().invoke(cli, ["doctor", "--data-dir", str(data_dir), "--root", str(fake.root)])
    assert result.exit_code == 2, result.output  # no qemu at all
    assert result.output.startswith("cloudd doctor: node node2\n")
    assert "[fail] qemu-iscsi" in result.output and "fix: apt-get install qemu-block-extra" in result.output
    assert "[warn] kvm" in result.output and "[info] libvirt" in result.output
    assert result.output.rstrip().endswith("worst: fail (exit 2)")


# -- this machine


def test_smoke_all_real_checks_here(tmp_path: Path) -> None:
    from cloudd.ops.drbd import drbd_unavailable_reason
    from cloudd.ops.lio import lio_unavailable_reason
    from cloudd.ops.lvm import lvm_unavailable_reason

    _, findings = run_checks(tmp_path / "data")
    assert findings and all(isinstance(f, Finding) and f.status in STATUSES and f.message for f in findings)
    assert not [f for f in findings if "the check itself failed" in f.message]
    by_check = {f.check: f for f in findings}
    for check, reason in (("lvm", lvm_unavailable_reason()), ("drbd", drbd_unavailable_reason()), ("lio", lio_unavailable_reason())):
        finding = by_check[check]
        if reason is None:
            assert finding.status == "ok"
        else:  # this machine: no device-mapper, DRBD or LIO, and each says why
            assert finding.status == "info" and reason in finding.message
            assert finding.message.partition("unavailable: ")[2].strip()
