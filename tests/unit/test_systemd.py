"""systemd integration: sd_notify against a real datagram socket, the watchdog feeding
rules, the installed units (checked by systemd-analyze verify) and the tmpfiles.d entry."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudd.daemon import _every, feeding_watchdog
from cloudd.main import cli
from cloudd.process_config import load, read_token
from cloudd.systemd import (
    CONFIG_PATH,
    Notifier,
    install,
    notify,
    render_unit,
    units_dir,
    watchdog_period,
)

REPO = Path(__file__).resolve().parents[2]
VENV_CLOUDD = Path(sys.executable).absolute().parent / "cloudd"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(2)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2)


def test_notify_sends_to_a_path_socket(notify_socket: socket.socket) -> None:
    address = notify_socket.getsockname()
    assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": address})
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"cloudd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(64) == b"WATCHDOG=1"


def test_notify_without_a_socket_is_a_quiet_no_op(tmp_path: Path) -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False


def test_notify_gives_up_on_a_receiver_that_stopped_reading(notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname()}
    sent = [notify("WATCHDOG=1", env) for _ in range(16)]  # more than the queue of 10 (max_dgram_qlen)
    assert sent[0] and not sent[-1]


@pytest.mark.parametrize(
    ("environ", "period"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}, 4.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ],
)
def test_watchdog_period(environ: dict[str, str], period: float | None) -> None:
    assert watchdog_period(environ, pid=4242) == period


def test_keep_alives_at_most_every_half_period(notify_socket: socket.socket) -> None:
    now = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "10000000"}, clock=lambda: now[0])
    assert notifier.alive()
    now[0] += 4.9
    assert not notifier.alive()
    now[0] += 0.2
    assert notifier.alive()
    assert received(notify_socket) == ["WATCHDOG=1", "WATCHDOG=1"]


def test_ready_status_and_stopping(notify_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert notifier.alive() is False  # no WatchdogSec: nothing to feed
    assert notifier.ready("serving")
    assert not notifier.status("serving")  # unchanged: not sent again
    assert notifier.status("leader, term 2")
    assert notifier.stopping()
    assert received(notify_socket) == ["READY=1\nSTATUS=serving", "STATUS=leader, term 2", "STOPPING=1\nSTATUS=stopping"]


def test_the_notifier_takes_its_variables_out_of_the_environment() -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "PATH": "/bin"}
    notifier = Notifier.take_from_environ(environ)
    assert environ == {"PATH": "/bin"}  # dnsmasq, tgtd and qemu do not inherit them
    assert notifier.enabled and notifier.period == 30.0


def test_the_watchdog_is_fed_only_after_agent_passes_that_completed(notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "100000"}  # a keep-alive every 50 ms at most
    passes: list[str] = []

    async def run(step_kind: str) -> None:
        async def step() -> None:
            passes.append(step_kind)
            if step_kind == "raises":
                raise RuntimeError("agent bug")
            if step_kind == "hangs":
                await asyncio.sleep(3600)

        stop = asyncio.Event()
        loop_task = asyncio.ensure_future(_every(0.01, feeding_watchdog(step, Notifier(env), lambda: "ok"), stop))
        await asyncio.sleep(0.2)
        stop.set()
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)

    asyncio.run(run("completes"))
    assert 2 <= received(notify_socket).count("WATCHDOG=1") <= 5
    asyncio.run(run("raises"))
    assert passes.count("raises") >= 3 and received(notify_socket) == []
    asyncio.run(run("hangs"))
    assert passes.count("hangs") == 1 and received(notify_socket) == []


# --- the units --------------------------------------------------------------------------


def unit_keys(text: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def test_the_cloudd_unit_is_a_watched_notify_service() -> None:
    keys = unit_keys((units_dir() / "cloudd.service").read_text())
    assert keys["Type"] == ["notify"] and keys["NotifyAccess"] == ["main"] and keys["Restart"] == ["always"]
    assert keys["WatchdogSec"] == ["30s"] and keys["ExecStart"] == ["/opt/cloudd/.venv/bin/cloudd serve"]
    assert keys["ProtectSystem"] == ["full"] and keys["PrivateTmp"] == ["yes"] and keys["ProtectHome"] == ["read-only"]
    assert "AF_NETLINK" in keys["RestrictAddressFamilies"][0]  # bridges, taps, nftables
    # each of these cuts cloudd off from something it drives (ProtectClock implies a device
    # policy that shuts out /dev/kvm and /dev/net/tun)
    breaking = ("NoNewPrivileges", "PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "ProtectKernelTunables",
                "ProtectControlGroups", "MemoryDenyWriteExecute", "CapabilityBoundingSet")
    for breaks_a_node in breaking:
        assert breaks_a_node not in keys
    assert "cloudd-fence-guard.service" in keys["Wants"][0]


def test_install_places_units_config_and_data_dir(tmp_path: Path) -> None:
    done = install(tmp_path, prefix="/srv/cloudd", data_dir="/data/cloudd")
    unit = (tmp_path / "etc/systemd/system/cloudd.service").read_text()
    assert "ExecStart=/srv/cloudd/.venv/bin/cloudd serve" in unit and "/var/lib/cloudd" not in unit  # the data dir: cloudd.toml
    assert "ExecStart=/srv/cloudd/.venv/bin/cloudd fence-guard" in (tmp_path / "etc/systemd/system/cloudd-fence-guard.service").read_text()
    assert "d /data/cloudd 0700 root root -" in (tmp_path / "etc/tmpfiles.d/cloudd.conf").read_text()
    config = tmp_path / CONFIG_PATH.lstrip("/")
    assert load(str(config), required=True).data_dir == "/data/cloudd"
    assert stat.S_IMODE((tmp_path / "data/cloudd").stat().st_mode) == 0o700
    assert len(done.written) == 4 and done.kept == []
    config.write_text('data_dir = "/elsewhere"\nlog_format = "json"\n')
    again = install(tmp_path, prefix="/srv/cloudd", data_dir="/data/cloudd")
    assert again.kept == [config] and load(str(config)).log_format == "json"  # an admin's edits stay


def test_install_units_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["install-units", "--root", str(tmp_path), "--prefix", "/opt/x"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path}/etc/systemd/system/cloudd.service" in result.output
    assert "/opt/x/.venv/bin/cloudd serve" in (tmp_path / "etc/systemd/system/cloudd.service").read_text()


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    # verify needs no running systemd (PID 1 here is not systemd); it loads the units from
    # their directory and checks every key, and that ExecStart's binary exists
    return subprocess.run([systemd_analyze(), "verify", "--man=no", *map(str, paths)], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_accepts_the_installed_units(tmp_path: Path) -> None:
    assert VENV_CLOUDD.exists()
    install(tmp_path, prefix=str(VENV_CLOUDD.parent.parent.parent), data_dir=str(tmp_path / "data"))
    units = tmp_path / "etc/systemd/system"
    out = verify([units / "cloudd.service", units / "cloudd-fence-guard.service"])
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: verify reports what it ignores even with exit code 0."""
    text = render_unit((units_dir() / "cloudd.service").read_text(), str(VENV_CLOUDD.parent.parent.parent), "/var/lib/cloudd")
    broken = tmp_path / "cloudd.service"
    broken.write_text(text.replace("WatchdogSec=30s", "WatchdogSek=30s").replace("Type=notify", "Type=notifyy"))
    shutil.copy(units_dir() / "cloudd-fence-guard.service", tmp_path)
    out = verify([broken])
    assert "Unknown key 'WatchdogSek'" in out.stderr and "notifyy" in out.stderr
    assert "is not executable" in verify([units_dir() / "cloudd.service"]).stderr or Path("/opt/cloudd/.venv/bin/cloudd").exists()


def test_the_tmpfiles_entry_creates_a_private_data_dir(tmp_path: Path) -> None:
    tool = shutil.which("systemd-tmpfiles")
    if tool is None:
        pytest.skip("systemd-tmpfiles is not installed (apt-get install systemd)")
    out = subprocess.run([tool, "--create", f"--root={tmp_path}", str(units_dir() / "cloudd.tmpfiles")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((tmp_path / "var/lib/cloudd").stat().st_mode) == 0o700
    assert (tmp_path / "run/cloudd").is_dir()


# --- /etc/cloudd/cloudd.toml ------------------------------------------------------------


def test_config_file_values_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "cloudd.toml"
    assert load(str(tmp_path / "missing")).log_format == "text"
    with pytest.raises(ValueError, match="does not exist"):
        load(str(tmp_path / "missing"), required=True)
    path.write_text('log_format = "xml"\n')
    with pytest.raises(ValueError, match="log_format must be one of text, json"):
        load(str(path))
    path.write_text("log_level = 3\n")
    with pytest.raises(ValueError, match="log_level must be a string"):
        load(str(path))
    token = tmp_path / "token"
    token.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token(str(token))
    token.write_text("a-long-enough-scraper-token\n")
    assert read_token(str(token)) == "a-long-enough-scraper-token" and read_token("") is None


def test_the_config_file_sets_the_data_dir_below_options_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "cloudd.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-file"}"\n')
    runner = CliRunner()
    out = runner.invoke(cli, ["--config", str(config), "doctor", "--json"], env={"CLOUDD_DATA_DIR": None})
    assert str(tmp_path / "from-file") in out.output
    out = runner.invoke(cli, ["--config", str(config), "doctor", "--json", "--data-dir", str(tmp_path / "from-option")], env={"CLOUDD_DATA_DIR": None})
    assert str(tmp_path / "from-option") in out.output and "from-file" not in out.output
    out = runner.invoke(cli, ["--config", str(tmp_path / "nope.toml"), "doctor"])
    assert out.exit_code == 1 and "does not exist" in out.output
