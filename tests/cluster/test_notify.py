"""A real ``cloudd serve`` under a fake systemd: NOTIFY_SOCKET is a datagram socket of the
test's own, WATCHDOG_USEC set as systemd sets it for WatchdogSec."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.cluster.harness import CLOUDD, LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def receive(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    out = []
    while (left := until - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return out


def test_ready_once_the_api_serves_then_keep_alives_from_the_agent_loop(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, first_host=86)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    try:
        node = cluster.new_node("node1")
        out = cluster.run_cloudd(
            "init", "--data-dir", str(node.data_dir), "--name", "node1", "--api-addr", node.api_addr, "--raft-addr", node.raft_addr,
            "--max-voters", "1", "--password-file", str(tmp_path / "pw"), *cluster.compute,
        )
        assert out.returncode == 0, out.stderr
        cluster._set_timings(node)  # heartbeat (agent pass) every 0.5 s
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}  # WatchdogSec=2s
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                [CLOUDD, "serve", "--data-dir", str(node.data_dir)], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

        ready_at = None
        messages: list[tuple[float, str]] = []
        deadline = time.monotonic() + 30
        while ready_at is None and time.monotonic() < deadline:
            got = receive(sock, min(deadline, time.monotonic() + 0.5))
            messages += got
            for _, text in got:
                if text.startswith("READY=1"):
                    ready_at = time.monotonic()
                    # the API serves at the moment READY arrives
                    assert httpx.get(f"{node.url}/healthz", timeout=2).status_code in (200, 503)
        assert ready_at is not None, node.log_text()
        ready = next(text for _, text in messages if text.startswith("READY=1"))
        assert f"STATUS=serving the API on {node.api_addr}" in ready

        messages += receive(sock, time.monotonic() + 5)
        alive = [t for t, text in messages if text == "WATCHDOG=1"]
        # at most one per half period (1 s), and steadily: 5 s bring 4-6
        assert 4 <= len([t for t in alive if t > ready_at]) <= 7, messages
        assert any(text.startswith("STATUS=leader, term") for _, text in messages)

        # a hung process sends nothing: systemd would restart it after WatchdogSec
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            receive(sock, time.monotonic() + 0.2)  # what was sent before it stopped
            assert receive(sock, time.monotonic() + 3) == []
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        assert any(text == "WATCHDOG=1" for _, text in receive(sock, time.monotonic() + 3))

        node.proc.terminate()
        assert node.proc.wait(20) == 0
        assert any(text.startswith("STOPPING=1") for _, text in receive(sock, time.monotonic() + 1))
    finally:
        sock.close()
        cluster.close()
