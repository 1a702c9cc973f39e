"""The node-admin commands' error paths: clear messages, nothing left half-made."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.cluster.harness import LocalCluster, free_port

pytestmark = [pytest.mark.cluster]


def test_init_with_a_taken_port_fails_cleanly_and_can_be_retried(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, first_host=71)
    data = tmp_path / "n1"
    api = f"127.0.0.71:{free_port('127.0.0.71')}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.71", 0))
        busy.listen()
        taken = f"127.0.0.71:{busy.getsockname()[1]}"
        out = cluster.run_cloudd("init", "--data-dir", str(data), "--name", "n1", "--api-addr", api, "--raft-addr", taken)
    assert out.returncode != 0 and "cannot be used here" in out.stderr
    assert not (data / "node.json").exists()
    raft = f"127.0.0.71:{free_port('127.0.0.71')}"
    out = cluster.run_cloudd("init", "--data-dir", str(data), "--name", "n1", "--api-addr", api, "--raft-addr", raft, "--password-file", str(tmp_path / "pw"))
    assert out.returncode == 0, out.stderr
    assert (data / "node.json").exists() and (tmp_path / "pw").read_text().strip()
    again = cluster.run_cloudd("init", "--data-dir", str(data), "--name", "n1", "--api-addr", api, "--raft-addr", raft)
    assert again.returncode != 0 and "already holds a node" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "Bad_Name", "--api-addr", "127.0.0.1:1", "--raft-addr", "127.0.0.1:2"], "--name must be"),
        (["--name", "ok", "--api-addr", "nowhere", "--raft-addr", "127.0.0.1:2"], "--api-addr must be host:port"),
        (["--name", "ok", "--api-addr", "127.0.0.1:1", "--raft-addr", "127.0.0.1:2", "--admin", "Root!"], "--admin must be"),
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    out = LocalCluster(tmp_path).run_cloudd("init", "--data-dir", str(tmp_path / "d"), *args)
    assert out.returncode != 0 and message in out.stderr


def test_join_rejects_a_malformed_token_and_an_unreachable_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    base = ["--data-dir", str(tmp_path / "d"), "--name", "n9", "--api-addr", f"127.0.0.1:{free_port('127.0.0.1')}"]
    out = cluster.run_cloudd("join", "127.0.0.1:1", "--token", "garbage", *base)
    assert out.returncode != 0 and "cdj.<id>.<key>" in out.stderr
    out = cluster.run_cloudd("join", f"127.0.0.1:{free_port('127.0.0.1')}", "--token", "cdj.abc." + "ab" * 16, *base)
    assert out.returncode != 0 and "cannot reach" in out.stderr
    assert not (tmp_path / "d" / "node.json").exists()
