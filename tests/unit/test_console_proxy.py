"""The console proxy against a tiny fake VNC server in this process.

The fake server wants VNC authentication (it checks the DES answer with its own, separately
written key schedule); the "browser" is a websocket of Starlette's test client, or an
in-memory stream for the handshake functions alone. The node-to-node endpoint is checked
for who may open it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect
from websockets.sync.server import ServerConnection, serve

from cloudd.security import sign_node_request
from cloudd.web.console import CONSOLE_WS, ConsoleService
from cloudd.web.console_rfb import (
    BufferedStream,
    ByteStream,
    RfbError,
    TcpStream,
    handshake,
    relay,
)
from cloudd.web.console_sessions import ConsoleSessions
from cloudd.web.console_tokens import ConsoleTokens
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm

with warnings.catch_warnings():  # Starlette 1.x would like httpx2 for its test client; httpx works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PASSWORD = "Pw0rd42x"
SECRET = "cluster-secret"
SERVER_NAME = b"fake-guest"


def des_answer(password: str, challenge: bytes) -> bytes:
    key = bytearray(8)
    for i, byte in enumerate(password.encode()[:8]):
        key[i] = sum(((byte >> bit) & 1) << (7 - bit) for bit in range(8))
    enc = Cipher(TripleDES(bytes(key) * 3), modes.ECB()).encryptor()
    return enc.update(challenge) + enc.finalize()


def recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


class FakeVnc:
    """A VNC server on 127.0.0.1 that wants ``password``; after ServerInit it sends
    ``FRAME`` and echoes what it gets, upper-cased. ``version`` 3.8 or 3.3."""

    def __init__(self, password: str = PASSWORD, version: bytes = b"RFB 003.008\n") -> None:
        self.password, self.version = password, version
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.logins: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(self.version)
                client_version = recv_exactly(conn, 12)
                if self.version == b"RFB 003.003\n":
                    conn.sendall(struct.pack("!I", 2))
                else:
                    conn.sendall(bytes([1, 2]))
                    assert recv_exactly(conn, 1) == b"\x02"
                challenge = os.urandom(16)
                conn.sendall(challenge)
                ok = recv_exactly(conn, 16) == des_answer(self.password, challenge)
                self.logins.append(f"{client_version!r} {'ok' if ok else 'bad'}")
                if not ok:
                    conn.sendall(struct.pack("!I", 1) + (struct.pack("!I", 14) + b"wrong password" if self.version.endswith(b"8\n") else b""))
                    return
                conn.sendall(struct.pack("!I", 0))
                recv_exactly(conn, 1)  # ClientInit
                conn.sendall(struct.pack("!HH", 640, 480) + bytes(16) + struct.pack("!I", len(SERVER_NAME)) + SERVER_NAME + b"FRAME")
                while data := conn.recv(4096):
                    conn.sendall(data.upper())
            except (OSError, AssertionError, ConnectionError):
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def vnc() -> Iterator[FakeVnc]:
    server = FakeVnc()
    try:
        yield server
    finally:
        server.close()


class Pipe(BufferedStream):
    """One end of an in-memory byte pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: Pipe | None = None
        self.sent = bytearray()

    async def _recv(self) -> bytes:
        return await self.inbox.get()

    async def write(self, data: bytes) -> None:
        assert self.peer is not None
        self.sent += data
        await self.peer.inbox.put(data)

    async def close(self) -> None:
        if self.peer is not None:
            await self.peer.inbox.put(b"")


def pipe() -> tuple[Pipe, Pipe]:
    a, b = Pipe(), Pipe()
    a.peer, b.peer = b, a
    return a, b


async def browser_greets(browser: BufferedStream) -> bytes:
    """What noVNC does: agree on 3.8, pick None, send ClientInit; returns ServerInit's name."""
    assert await browser.read_exactly(12) == b"RFB 003.008\n"
    await browser.write(b"RFB 003.008\n")
    count = (await browser.read_exactly(1))[0]
    assert list(await browser.read_exactly(count)) == [1]  # None only: the browser needs no password
    await browser.write(b"\x01")
    assert await browser.read_exactly(4) == b"\0\0\0\0"
    await browser.write(b"\x01")
    await browser.read_exactly(4 + 16)
    (length,) = struct.unpack("!I", await browser.read_exactly(4))
    return await browser.read_exactly(length)


@pytest.mark.parametrize("version", [b"RFB 003.008\n", b"RFB 003.003\n"])
def test_the_proxy_logs_in_with_the_password_and_offers_the_browser_none(version: bytes) -> None:
    server = FakeVnc(version=version)

    async def run() -> None:
        proxy_side, browser = pipe()
        upstream = await TcpStream.open("127.0.0.1", server.port)
        greeting = asyncio.create_task(browser_greets(browser))
        await handshake(proxy_side, upstream, PASSWORD)
        session = asyncio.create_task(relay(proxy_side, upstream))
        assert await greeting == SERVER_NAME
        assert await browser.read_exactly(5) == b"FRAME"
        await browser.write(b"keys")
        assert await browser.read_exactly(4) == b"KEYS"
        await browser.close()  # the browser leaves: the relay ends
        await asyncio.wait_for(session, 5)
        await upstream.close()
        assert PASSWORD.encode() not in bytes(proxy_side.sent)

    try:
        asyncio.run(run())
        assert server.logins == [f"{version!r} ok"]
    finally:
        server.close()


def test_a_wrong_password_fails_before_the_browser_hears_anything(vnc: FakeVnc) -> None:
    async def run() -> None:
        proxy_side, _browser = pipe()
        upstream = await TcpStream.open("127.0.0.1", vnc.port)
        with pytest.raises(RfbError, match="refused its password: wrong password"):
            await handshake(proxy_side, upstream, "not-it")
        await upstream.close()
        assert proxy_side.sent == b""

    asyncio.run(run())


def test_a_server_that_is_not_vnc_or_silent_is_a_clear_error() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    http = socket.create_server(("127.0.0.1", 0))

    def answer_http() -> None:
        conn, _ = http.accept()
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        time.sleep(1)
        conn.close()

    threading.Thread(target=answer_http, daemon=True).start()

    async def run() -> None:
        for server, message in ((http, "does not speak RFB"), (silent, "could not be reached: TimeoutError")):
            proxy_side, _ = pipe()
            upstream = await TcpStream.open("127.0.0.1", server.getsockname()[1])
            with pytest.raises(RfbError, match=message):
                await handshake(proxy_side, upstream, PASSWORD, timeout_s=0.5)
            await upstream.close()

    try:
        asyncio.run(run())
    finally:
        silent.close()
        http.close()


# --- the websocket endpoints, through Starlette's test client ---------------------------------


def node_app(
    vnc_port: int, tokens: ConsoleTokens | None = None, recheck_s: float = 5.0, sessions: ConsoleSessions | None = None,
    service_type: type[ConsoleService] = ConsoleService, wrap: Callable[[ASGIApp], ASGIApp] = lambda app: app, peer: str | None = None,
) -> tuple[TestClient, ConsoleService, Any]:
    """Node n1 of a replica where bob's VM vm1 runs on n1 with its VNC on ``vnc_port``
    (node n2's cloudd answers at ``peer``)."""
    replica = cluster_with_hypervisor()
    new_vm(replica, "vm1", vnc_password=PASSWORD)
    new_vm(replica, "vm2")
    for vm in replica.state.vms.values():
        vm.update(state="running", node="n1")
        vm["observed"]["vnc_port"] = vnc_port
    replica.state.nodes["n2"] = {**replica.state.nodes["n1"], "name": "n2"}
    runtime = SimpleNamespace(
        raft=SimpleNamespace(lock=threading.RLock(), state=replica.state),
        config=SimpleNamespace(name="n1", compute=SimpleNamespace(vnc_listen="127.0.0.1")),
        secret=SECRET, api_addr_of=lambda name: peer if name == "n2" else None,
    )
    service = service_type(runtime, tokens, recheck_s, sessions)  # type: ignore[arg-type]
    app = Starlette(routes=[WebSocketRoute(CONSOLE_WS, service.proxy), WebSocketRoute("/internal/v1/vms/{id}/vnc", service.serve_peer)])
    return TestClient(wrap(app)), service, replica


def refusal(client: TestClient, url: str, **kw: Any) -> WebSocketDisconnect:
    """The close of a websocket the server accepts and closes at once; no data came first."""
    with client.websocket_connect(url, **kw) as ws, pytest.raises(WebSocketDisconnect) as refused:
        ws.receive_bytes()
    return refused.value


def test_a_token_gives_the_browser_the_guest_screen_without_the_password(vnc: FakeVnc) -> None:
    client, service, _ = node_app(vnc.port)
    token, _ = service.tokens.issue("bob", "vm1", time.time())
    with client.websocket_connect(f"{CONSOLE_WS}?vm=vm1&token={token}") as ws:
        received = bytearray()

        def read(n: int) -> bytes:
            while len(received) < n:
                received.extend(ws.receive_bytes())
            data = bytes(received[:n])
            del received[:n]
            return data

        assert read(12) == b"RFB 003.008\n"
        ws.send_bytes(b"RFB 003.008\n")
        assert read(2) == b"\x01\x01"
        ws.send_bytes(b"\x01")
        assert read(4) == b"\0\0\0\0"
        ws.send_bytes(b"\x01")
        init = read(4 + 16 + 4 + len(SERVER_NAME) + 5)
        assert init.endswith(SERVER_NAME + b"FRAME")
        ws.send_bytes(b"hello")
        assert read(5) == b"HELLO"
    assert vnc.logins == ["b'RFB 003.008\\n' ok"]

    reused = refusal(client, f"{CONSOLE_WS}?vm=vm1&token={token}")
    assert reused.code == 1008 and "already used" in reused.reason


def browser_login(ws: Any) -> None:
    """noVNC's side of the handshake through the test client (no checks: see above)."""
    for expect, answer in ((12, b"RFB 003.008\n"), (2, b"\x01"), (4, b"\x01")):
        got = b""
        while len(got) < expect:
            got += ws.receive_bytes()
        ws.send_bytes(answer)


def test_an_open_session_ends_when_the_user_loses_the_vm(vnc: FakeVnc) -> None:
    client, service, replica = node_app(vnc.port, recheck_s=0.1)
    token, _ = service.tokens.issue("bob", "vm1", time.time())
    with client.websocket_connect(f"{CONSOLE_WS}?token={token}") as ws:
        browser_login(ws)
        replica.state.users["bob"]["disabled"] = True
        with pytest.raises(WebSocketDisconnect) as ended:
            while True:
                ws.receive_bytes()
    assert ended.value.code == 1000 and "disabled or gone" in ended.value.reason


def test_bad_tokens_close_the_websocket_with_a_reason_and_nothing_else(vnc: FakeVnc) -> None:
    client, service, replica = node_app(vnc.port, ConsoleTokens(ttl_s=0.2))
    expired, _ = service.tokens.issue("bob", "vm1", time.time())
    foreign, _ = service.tokens.issue("bob", "vm2", time.time())
    time.sleep(0.3)
    cases = {
        f"{CONSOLE_WS}?vm=vm1&token={expired}": "expired",
        f"{CONSOLE_WS}?token=made-up-token": "unknown console token",
        f"{CONSOLE_WS}": "missing or malformed",
    }
    reasons = []
    for url, reason in cases.items():
        closed = refusal(client, url)
        assert closed.code == 1008 and reason in closed.reason, (url, closed.reason)
        reasons.append(closed.reason)
    service.tokens.ttl_s = 30
    foreign, _ = service.tokens.issue("bob", "vm2", time.time())
    closed = refusal(client, f"{CONSOLE_WS}?vm=vm1&token={foreign}")
    assert closed.code == 1008 and "another VM" in closed.reason
    reasons.append(closed.reason)
    replica.state.vms["vm1"]["state"] = "stopped"
    stopped, _ = service.tokens.issue("bob", "vm1", time.time())
    closed = refusal(client, f"{CONSOLE_WS}?token={stopped}")
    assert closed.code == 1008 and "is stopped" in closed.reason
    reasons.append(closed.reason)
    assert vnc.logins == []  # no refused websocket ever reached the VM's VNC server
    for secret in (PASSWORD, expired, foreign, stopped):
        assert all(secret not in reason for reason in reasons)


def test_a_vnc_server_that_refuses_the_password_closes_the_browser_with_1011() -> None:
    server = FakeVnc(password="other-pw")
    try:
        client, service, _ = node_app(server.port)
        token, _ = service.tokens.issue("admin", "vm1", time.time())  # an admin opens a user's VM
        closed = refusal(client, f"{CONSOLE_WS}?token={token}")
        assert closed.code == 1011 and "refused its password" in closed.reason and PASSWORD not in closed.reason
    finally:
        server.close()


def signed(path: str, node: str = "n2", secret: str = SECRET) -> dict[str, str]:
    return {"X-Cloudd-Node": sign_node_request(secret, node, "GET", path, b"")}


def test_only_a_signed_cluster_node_opens_the_internal_vnc_stream(vnc: FakeVnc) -> None:
    client, _, _ = node_app(vnc.port)
    path = "/internal/v1/vms/vm1/vnc"
    for headers in ({}, signed(path, secret="wrong"), signed(path, node="stranger"), signed("/internal/v1/vms/vm2/vnc"), signed(path, node="n1")):
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(path, headers=headers):
            pass
        assert refused.value.code == 1008, headers
    headers = signed(path)
    with client.websocket_connect(path, headers=headers) as ws:
        assert ws.receive_text() == "ready"  # this node logged in with the VM's password
        ws.send_bytes(b"\x01")  # the other node's proxy relays the browser's ClientInit
        received = b""
        while not received.endswith(b"FRAME"):
            received += ws.receive_bytes()
        assert received == struct.pack("!HH", 640, 480) + bytes(16) + struct.pack("!I", len(SERVER_NAME)) + SERVER_NAME + b"FRAME"
    assert vnc.logins == ["b'RFB 003.008\\n' ok"]
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(path, headers=headers):  # the same signed request again
        pass
    closed = refusal(client, "/internal/v1/vms/nope/vnc", headers=signed("/internal/v1/vms/nope/vnc"))
    assert closed.code == 1008 and "does not run on n1" in closed.reason


def test_the_internal_stream_says_why_the_vms_vnc_refused_this_node() -> None:
    server = FakeVnc(password="other-pw")
    try:
        client, _, _ = node_app(server.port)
        path = "/internal/v1/vms/vm1/vnc"
        closed = refusal(client, path, headers=signed(path))
        assert closed.code == 1011 and "refused its password" in closed.reason
    finally:
        server.close()


# --- how many sessions stay open -------------------------------------------------------------


def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def open_session(client: TestClient, service: ConsoleService, user: str, vm: str, stack: contextlib.ExitStack) -> Any:
    """A websocket through the handshake to the guest's first bytes, kept open in ``stack``."""
    token, _ = service.tokens.issue(user, vm, time.time())
    ws = stack.enter_context(client.websocket_connect(f"{CONSOLE_WS}?token={token}"))
    browser_login(ws)
    received = b""
    while not received.endswith(b"FRAME"):
        received += ws.receive_bytes()
    return ws


def test_sessions_are_capped_per_user_and_per_vm_and_each_end_frees_its_slot(vnc: FakeVnc) -> None:
    client, service, replica = node_app(vnc.port, sessions=ConsoleSessions(max_per_user=3, max_per_vm=2))
    replica.state.vms["vm2"]["vnc_password"] = PASSWORD  # the fake VNC server is both VMs'
    sessions = service.sessions
    with client, contextlib.ExitStack() as bobs:
        open_session(client, service, "bob", "vm1", bobs)
        second = bobs.enter_context(contextlib.ExitStack())
        open_session(client, service, "bob", "vm1", second)
        closed = refusal(client, f"{CONSOLE_WS}?token={service.tokens.issue('bob', 'vm1', time.time())[0]}")
        assert (closed.code, closed.reason) == (1008, "VM web-vm1 has 2 console sessions open; close one to open another")
        closed = refusal(client, f"{CONSOLE_WS}?token={service.tokens.issue('admin', 'vm1', time.time())[0]}")
        assert closed.code == 1008 and "VM web-vm1 has 2" in closed.reason  # the VM's limit counts every user
        open_session(client, service, "bob", "vm2", bobs)
        closed = refusal(client, f"{CONSOLE_WS}?token={service.tokens.issue('bob', 'vm2', time.time())[0]}")
        assert (closed.code, closed.reason) == (1008, "you have 3 console sessions open on this node; close one to open another")
        assert (dict(sessions.by_user), dict(sessions.by_vm)) == ({"bob": 3}, {"vm1": 2, "vm2": 1})

        second.close()  # the browser leaves: its slot is free again
        wait_until(lambda: sessions.by_vm["vm1"] == 1)
        open_session(client, service, "admin", "vm1", bobs)
        assert (dict(sessions.by_user), dict(sessions.by_vm)) == ({"bob": 2, "admin": 1}, {"vm1": 2, "vm2": 1})
    wait_until(lambda: not sessions.by_user and not sessions.by_vm)
    assert len(vnc.logins) == 4  # a refused session never reached the VM's VNC server


def test_a_session_that_fails_or_ends_early_gives_its_slot_back() -> None:
    server = FakeVnc(password="other-pw")
    try:
        client, service, replica = node_app(server.port, sessions=ConsoleSessions(max_per_user=1, max_per_vm=1), recheck_s=0.05)
        with client:
            for _ in range(3):  # the VNC server refuses: 1011 every time, never "too many sessions"
                closed = refusal(client, f"{CONSOLE_WS}?token={service.tokens.issue('bob', 'vm1', time.time())[0]}")
                assert closed.code == 1011 and "refused its password" in closed.reason
                assert not service.sessions.by_user and not service.sessions.by_vm
            server.password = PASSWORD
            for _ in range(2):  # the user loses the VM: the session ends, its slot is free
                with contextlib.ExitStack() as stack:
                    ws = open_session(client, service, "bob", "vm1", stack)
                    replica.state.users["bob"]["disabled"] = True
                    with pytest.raises(WebSocketDisconnect):
                        while True:
                            ws.receive_bytes()
                wait_until(lambda: not service.sessions.by_user and not service.sessions.by_vm)
                replica.state.users["bob"]["disabled"] = False
    finally:
        server.close()


def test_the_internal_stream_counts_against_the_vms_limit(vnc: FakeVnc) -> None:
    client, service, _ = node_app(vnc.port, sessions=ConsoleSessions(max_per_user=8, max_per_vm=2))
    path = "/internal/v1/vms/vm1/vnc"
    with client, contextlib.ExitStack() as stack:
        open_session(client, service, "bob", "vm1", stack)  # a browser on this node
        relayed = stack.enter_context(client.websocket_connect(path, headers=signed(path)))  # and one through node n2
        assert relayed.receive_text() == "ready"
        closed = refusal(client, path, headers=signed(path))
        assert (closed.code, closed.reason) == (1008, "VM web-vm1 has 2 console sessions open; close one to open another")
        assert dict(service.sessions.by_vm) == {"vm1": 2} and dict(service.sessions.by_user) == {"bob": 1}
    wait_until(lambda: not service.sessions.by_vm)


def test_a_refusal_of_the_node_that_runs_the_vm_refuses_the_browser_alike(vnc: FakeVnc) -> None:
    reason = "VM web-vm1 has 4 console sessions open; close one to open another"

    def refuse(connection: ServerConnection) -> None:
        connection.close(1008, reason)

    with serve(refuse, "127.0.0.1", 0) as peer:
        threading.Thread(target=peer.serve_forever, daemon=True).start()
        host, port = peer.socket.getsockname()[:2]
        client, service, replica = node_app(vnc.port, peer=f"{host}:{port}")
        replica.state.vms["vm1"]["node"] = "n2"
        with client:
            closed = refusal(client, f"{CONSOLE_WS}?token={service.tokens.issue('bob', 'vm1', time.time())[0]}")
        peer.shutdown()
    assert (closed.code, closed.reason) == (1008, f"node n2: {reason}")
    assert not service.sessions.by_vm and vnc.logins == []


class Recording(ConsoleService):
    """Keeps every upstream stream it opens."""

    opened: list[ByteStream]

    async def open_vnc(self, vm: dict[str, Any]) -> ByteStream:
        stream = await super().open_vnc(vm)
        self.opened = [*getattr(self, "opened", []), stream]
        return stream


def failing_sends(app: ASGIApp) -> ASGIApp:
    """The app, but every websocket frame it sends fails (a browser gone mid-send)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def broken(message: Message) -> None:
            if message["type"] == "websocket.send":
                raise RuntimeError("the websocket send failed")
            await send(message)

        await app(scope, receive, broken)

    return wrapped


def test_the_vnc_connection_closes_when_the_browser_send_raises(vnc: FakeVnc) -> None:
    client, service, _ = node_app(vnc.port, service_type=Recording, wrap=failing_sends)
    token, _ = service.tokens.issue("bob", "vm1", time.time())
    with client, pytest.raises(RuntimeError, match="send failed"), client.websocket_connect(f"{CONSOLE_WS}?token={token}") as ws:
        ws.receive_bytes()
    assert vnc.logins == ["b'RFB 003.008\\n' ok"]  # the proxy logged in, then could not greet the browser
    [upstream] = service.opened  # type: ignore[attr-defined]
    assert isinstance(upstream, TcpStream) and upstream.writer.is_closing()
    assert not service.sessions.by_user and not service.sessions.by_vm
