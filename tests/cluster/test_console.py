"""The VNC console across nodes: the browser talks to node1, the guest runs on node2.

Two real ``cloudd serve`` nodes, each with its own embedded libvirt and VNC port range,
run one real TCG guest pinned to node2. A client that speaks RFB over the websocket (as
noVNC does, security type None) gets a one-time token from node1 and reads the guest's
screen through node1's proxy and node2's cloudd, which logged in to the guest's VNC with
its password (node2's log says it relayed). Then the refusals: a token used
twice, a token of the other node, someone else's VM, a stopped VM, the node-to-node leg
opened by anyone but a node, a fifth session to one VM (node2 counts the sessions node1
relays from it with its own).

Hosts 127.0.0.210-211, VNC ports 7700-7719: no other test uses them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.cluster.harness import LocalCluster, Node, wait_for
from tests.e2e.conftest import guest  # noqa: F401  (the fixture: the tiny guest, built once)
from tests.e2e.test_cluster_guests import kill_guests

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

FIRST_HOST, FIRST_VNC = 210, 7700
BOOTED = "CLOUDD-GUEST-BOOTED"


class ConsoleCluster(LocalCluster):
    """Nodes with embedded libvirts and VNC ranges of their own (10 ports each from ``first_vnc``)."""

    def __init__(self, root: Path, first_host: int = FIRST_HOST, first_vnc: int = FIRST_VNC) -> None:
        super().__init__(root, first_host=first_host, compute=["--compute-uri", "embedded"])
        self.first_vnc = first_vnc

    def _set_timings(self, node: Node) -> None:
        super()._set_timings(node)
        path = node.data_dir / "node.json"
        data = orjson.loads(path.read_bytes())
        low = self.first_vnc + 10 * (int(node.name.removeprefix("node")) - 1)
        data["compute"].update(vnc_port_min=low, vnc_port_max=low + 9)
        path.write_bytes(orjson.dumps(data))

    def close(self) -> None:
        super().close()
        for node in self.nodes.values():
            kill_guests(node.data_dir)


def console_world(cluster: ConsoleCluster, guest_dir: Path) -> dict[str, Any]:
    """Two nodes; users vera (a running guest pinned to node2, a stopped VM) and bob."""
    cluster.init(2, max_voters=1)
    with cluster.api("node1") as admin:
        admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
        admin.post("/api/v1/images", json={"name": "test-guest", "path": str(guest_dir), "format": "kernel", "size_gb": 1}).raise_for_status()
        for name in ("vera", "bob"):
            admin.post("/api/v1/users", json={"name": name, "password": f"{name}-pass-1"}).raise_for_status()
    tokens = {
        name: httpx.post(cluster.nodes["node1"].url + "/api/v1/auth/login", json={"username": name, "password": f"{name}-pass-1"}).json()["token"]
        for name in ("vera", "bob")
    }
    vera = cluster.api("node1", tokens["vera"])
    created = vera.post("/api/v1/vms", json={"name": "screen", "flavor": "tiny", "image": "test-guest", "nodes": ["node2"]})
    assert created.status_code == 202, created.text
    stopped = vera.post("/api/v1/vms", json={"name": "asleep", "flavor": "tiny", "image": "test-guest", "power": "stopped"})
    assert stopped.status_code == 202, stopped.text
    vm_id = created.json()["id"]

    def up() -> bool:
        vm = vera.get(f"/api/v1/vms/{vm_id}").json()
        return vm["state"] == "running" and bool(vm["observed"]["vnc_port"])

    wait_for(up, 120, interval=0.5, what="the guest running with a VNC port")
    serial = cluster.nodes["node2"].data_dir / "vms" / vm_id / "serial.log"
    wait_for(lambda: serial.exists() and BOOTED in serial.read_text(errors="replace"), 120, interval=0.5, what="the guest booted")
    return {"tokens": tokens, "vm": vm_id, "stopped": stopped.json()["id"], "vera": vera}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, guest: Path) -> Iterator[tuple[ConsoleCluster, dict[str, Any]]]:  # noqa: F811
    cluster = ConsoleCluster(tmp_path_factory.mktemp("console"))
    try:
        yield cluster, console_world(cluster, guest)
    finally:
        cluster.close()


def recv_exactly(ws: ClientConnection, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        message = ws.recv(timeout=30)
        buf.extend(message if isinstance(message, bytes) else message.encode())
    data = bytes(buf[:n])
    del buf[:n]
    return data


def read_screen(url: str) -> dict[str, Any]:
    """Log in through the proxy like noVNC (security None), ask for the whole screen in raw
    encoding, and return its size, name and the number of distinct pixel values."""
    with connect(url, proxy=None, max_size=None, open_timeout=10) as ws:
        buf = bytearray()
        assert recv_exactly(ws, 12, buf) == b"RFB 003.008\n"
        ws.send(b"RFB 003.008\n")
        count = recv_exactly(ws, 1, buf)[0]
        assert list(recv_exactly(ws, count, buf)) == [1]  # None: the browser never needs the VNC password
        ws.send(b"\x01")
        assert recv_exactly(ws, 4, buf) == b"\0\0\0\0"
        ws.send(b"\x01")  # ClientInit, shared
        width, height = struct.unpack("!HH", recv_exactly(ws, 4, buf))
        bpp = recv_exactly(ws, 16, buf)[0]
        name = recv_exactly(ws, struct.unpack("!I", recv_exactly(ws, 4, buf))[0], buf).decode()
        ws.send(struct.pack("!BxHi", 2, 1, 0))  # SetEncodings: raw only
        ws.send(struct.pack("!BBHHHH", 3, 0, 0, 0, width, height))  # the whole screen, now
        while True:
            kind = recv_exactly(ws, 1, buf)[0]
            if kind == 0:
                break
            assert kind in (2,), f"unexpected server message {kind}"  # a bell
        pixels: set[bytes] = set()
        recv_exactly(ws, 1, buf)
        (rects,) = struct.unpack("!H", recv_exactly(ws, 2, buf))
        for _ in range(rects):
            _x, _y, w, h, encoding = struct.unpack("!HHHHi", recv_exactly(ws, 12, buf))
            assert encoding == 0
            raw = recv_exactly(ws, w * h * bpp // 8, buf)
            pixels.update(raw[i : i + bpp // 8] for i in range(0, len(raw), bpp // 8))
        return {"width": width, "height": height, "name": name, "colours": len(pixels)}


def opened(url: str, stack: ExitStack) -> ClientConnection:
    """A session through the proxy's handshake up to ServerInit, kept open in ``stack``."""
    ws = stack.enter_context(connect(url, proxy=None, max_size=None, open_timeout=10))
    buf = bytearray()
    assert recv_exactly(ws, 12, buf) == b"RFB 003.008\n"
    ws.send(b"RFB 003.008\n")
    recv_exactly(ws, 2, buf)
    ws.send(b"\x01")
    assert recv_exactly(ws, 4, buf) == b"\0\0\0\0"
    ws.send(b"\x01")
    recv_exactly(ws, 4, buf)  # the screen's size: ServerInit came, the session is open
    return ws


def closed_reason(url: str) -> tuple[int, str]:
    """Open the websocket; the server must close it before sending anything."""
    with connect(url, proxy=None, open_timeout=10) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=15)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def console(client: httpx.Client, vm: str) -> httpx.Response:
    return client.post(f"/api/v1/vms/{vm}/console")


def test_the_guest_screen_comes_through_the_node_the_browser_talks_to(world: tuple[ConsoleCluster, dict[str, Any]]) -> None:
    cluster, w = world
    reply = console(w["vera"], w["vm"])
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["url"].startswith(f"ws://{cluster.nodes['node1'].api_addr}/console/ws?") and body["token"] in body["url"]
    assert reply.headers["cache-control"] == "no-store" and "vnc_password" not in reply.text

    def screen() -> dict[str, Any] | None:  # text on the screen once the guest's console is up
        shown = read_screen(console(w["vera"], w["vm"]).json()["url"])
        return shown if shown["colours"] > 1 else None

    first = read_screen(body["url"])
    assert first["width"] >= 640 and first["height"] >= 400 and w["vm"] in first["name"]
    shown = first if first["colours"] > 1 else wait_for(screen, 60, interval=2, what="text on the guest's screen")
    assert shown["colours"] > 1
    node2_log = cluster.nodes["node2"].log_text()
    assert f"console: node node1 relays the console of VM {w['vm']}" in node2_log
    assert f"opened the console of VM {w['vm']} on node2" in cluster.nodes["node1"].log_text()
    for name in ("node1", "node2"):
        assert body["token"] not in cluster.nodes[name].log_text()


def test_a_token_opens_once_and_only_on_the_node_that_issued_it(world: tuple[ConsoleCluster, dict[str, Any]]) -> None:
    cluster, w = world
    url = console(w["vera"], w["vm"]).json()["url"]
    assert read_screen(url)["width"] > 0
    assert closed_reason(url) == (1008, "the console token was already used; open the console again")

    with cluster.api("node2", w["tokens"]["vera"]) as via_node2:
        token = console(via_node2, w["vm"]).json()["token"]
    code, reason = closed_reason(f"ws://{cluster.nodes['node1'].api_addr}/console/ws?token={token}")
    assert code == 1008 and "unknown console token" in reason and token not in reason


def test_other_users_stopped_vms_and_anonymous_callers_get_no_token(world: tuple[ConsoleCluster, dict[str, Any]]) -> None:
    cluster, w = world
    with cluster.api("node1", w["tokens"]["bob"]) as bob:
        reply = console(bob, w["vm"])
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"
    reply = console(w["vera"], w["stopped"])
    assert reply.status_code == 409 and reply.json()["error"]["details"]["state"] == "stopped"
    assert httpx.post(cluster.nodes["node1"].url + f"/api/v1/vms/{w['vm']}/console").status_code == 401
    with cluster.api("node1") as admin:  # admins open anyone's console
        assert console(admin, w["vm"]).status_code == 200


def test_only_cluster_nodes_open_the_node_to_node_leg(world: tuple[ConsoleCluster, dict[str, Any]]) -> None:
    cluster, w = world
    url = f"ws://{cluster.nodes['node2'].api_addr}/internal/v1/vms/{w['vm']}/vnc"
    for headers in ({}, {"Authorization": f"Bearer {w['tokens']['vera']}"}, {"Authorization": f"Bearer {cluster.token}"},
                    {"X-Cloudd-Node": "node1:1.0:" + "0" * 64}):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, proxy=None, additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == 403, headers


def test_a_vm_has_four_console_sessions_at_most_whichever_nodes_serve_them(world: tuple[ConsoleCluster, dict[str, Any]]) -> None:
    cluster, w = world
    full = "VM screen has 4 console sessions open; close one to open another"
    with cluster.api("node2", w["tokens"]["vera"]) as via_node2:
        with ExitStack() as sessions:
            for client in (w["vera"], w["vera"], via_node2, via_node2):  # two relayed from node2 by node1, two on node2
                opened(console(client, w["vm"]).json()["url"], sessions)
            assert closed_reason(console(w["vera"], w["vm"]).json()["url"]) == (1008, f"node node2: {full}")
            refused = console(via_node2, w["vm"])
            assert refused.status_code == 429 and refused.json()["error"]["message"] == full
        # the sessions end: their slots are free on both nodes
        wait_for(lambda: console(via_node2, w["vm"]).status_code == 200, 10, what="node2's slots given back")
    assert read_screen(console(w["vera"], w["vm"]).json()["url"])["width"] > 0


def test_cloudctl_vm_console_gives_the_page_and_a_working_one_time_url(world: tuple[ConsoleCluster, dict[str, Any]], tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from cli.cloudctl import cli

    cluster, w = world
    config = tmp_path / "cloudctl.json"
    config.write_text(json.dumps({"endpoints": [cluster.nodes["node1"].url], "token": w["tokens"]["vera"], "user": "vera"}))
    result = CliRunner().invoke(cli, ["--config", str(config), "-o", "json", "vm", "console", w["vm"]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["page"] == f"{cluster.nodes['node1'].url}/ui/vms/{w['vm']}/console"
    assert read_screen(shown["url"])["width"] > 0  # the URL opens the guest's screen, once
    assert closed_reason(shown["url"])[0] == 1008
