"""The RFB (VNC) half of the console proxy.

The proxy logs in to the VM's VNC server (qemu) itself, with the VM's password from the
replicated state, and offers the browser a session without authentication (security
type None): the password never reaches the browser, and the browser proves itself with
a one-time console token instead. After both handshakes the proxy only relays bytes:
the browser's ClientInit reaches qemu, qemu's ServerInit and framebuffer reach the browser.

RFB 3.3, 3.7 and 3.8 are spoken on both sides (RFC 6143). Byte streams are anything
with ``read_exactly``/``read_some``/``write``/``close``: a TCP connection to qemu, the
browser's websocket, or the websocket to the cloudd of the node that runs the VM.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Protocol

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from starlette.websockets import WebSocket, WebSocketDisconnect

SEC_INVALID, SEC_NONE, SEC_VNC = 0, 1, 2
HANDSHAKE_TIMEOUT_S = 15.0
MAX_REASON_BYTES = 1024


class RfbError(Exception):
    """A handshake failed; ``str(exc)`` is safe to show the user (no secrets in it)."""


class ByteStream(Protocol):
    async def read_exactly(self, n: int) -> bytes:
        """``n`` bytes; ``ConnectionError`` when the other end closes first."""

    async def read_some(self) -> bytes:
        """What is there (at least one byte), or ``b""`` once the other end closed."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None:
        """Idempotent."""


class BufferedStream:
    """``read_exactly``/``read_some`` over a ``_recv`` that returns chunks (``b""``: closed)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.closed_reason = ""

    async def _recv(self) -> bytes:
        raise NotImplementedError

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = await self._recv()
            if not chunk:
                raise ConnectionError(self.closed_reason or "the connection closed")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_some(self) -> bytes:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            return data
        return await self._recv()


class TcpStream(BufferedStream):
    """A TCP connection (to a VM's VNC port)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float = 10.0) -> TcpStream:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        return cls(reader, writer)

    async def _recv(self) -> bytes:
        try:
            return await self.reader.read(1 << 16)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class BrowserStream(BufferedStream):
    """An accepted Starlette websocket (binary frames; text frames are taken as bytes)."""

    def __init__(self, websocket: WebSocket) -> None:
        super().__init__()
        self.websocket = websocket

    async def _recv(self) -> bytes:
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return b""
        if message["type"] == "websocket.disconnect":
            return b""
        if message.get("bytes") is not None:
            return bytes(message["bytes"])
        return str(message.get("text") or "").encode()

    async def write(self, data: bytes) -> None:
        await self.websocket.send_bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self.websocket.close(code, reason[:120])
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass


class PeerStream(BufferedStream):
    """A client websocket (``websockets``) to another node's cloudd."""

    def __init__(self, connection: Any) -> None:
        super().__init__()
        self.connection = connection

    async def _recv(self) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            message = await self.connection.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.reason:
                self.closed_reason = exc.rcvd.reason
            return b""
        return message if isinstance(message, bytes) else str(message).encode()

    async def write(self, data: bytes) -> None:
        await self.connection.send(data)

    async def close(self) -> None:
        await self.connection.close()


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The answer to a VNC authentication challenge (RFC 6143 7.2.2): the 16 bytes
    DES-encrypted with the password (8 bytes at most, NUL-padded) as key, each key byte's
    bits in reverse order. Triple DES with one key three times is single DES."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def _minor(version: bytes) -> int:
    """3, 7 or 8: the protocol this side and ``version`` (``RFB 003.xxx\\n``) share."""
    if len(version) != 12 or not version.startswith(b"RFB 003.") or not version.endswith(b"\n") or not version[8:11].isdigit():
        raise RfbError("the other side does not speak RFB")
    minor = int(version[8:11])
    return 8 if minor >= 8 else 7 if minor == 7 else 3


async def _u32(stream: ByteStream) -> int:
    value: int = struct.unpack("!I", await stream.read_exactly(4))[0]
    return value


async def _reason(stream: ByteStream) -> str:
    length = await _u32(stream)
    return (await stream.read_exactly(min(length, MAX_REASON_BYTES))).decode(errors="replace")


async def login(upstream: ByteStream, password: str | None) -> int:
    """Log in to a VNC server as a client, up to (not including) ClientInit; return the
    protocol minor version agreed (3, 7 or 8). VNC authentication with ``password`` when
    the server offers it, None otherwise. ``RfbError`` on refusal."""
    use = _minor(await upstream.read_exactly(12))
    await upstream.write(b"RFB 003.%03d\n" % use)
    if use == 3:
        chosen = await _u32(upstream)
        if chosen == SEC_INVALID:
            raise RfbError(f"the VM's VNC server refused the connection: {await _reason(upstream)}")
        offered = [chosen]
    else:
        count = (await upstream.read_exactly(1))[0]
        if count == 0:
            raise RfbError(f"the VM's VNC server refused the connection: {await _reason(upstream)}")
        offered = list(await upstream.read_exactly(count))
        chosen = SEC_VNC if SEC_VNC in offered and password else SEC_NONE if SEC_NONE in offered else SEC_INVALID
        if chosen == SEC_INVALID:
            raise RfbError(f"the VM's VNC server offers no security type the proxy speaks: {offered}")
        await upstream.write(bytes([chosen]))
    if chosen == SEC_VNC:
        if not password:
            raise RfbError("the VM's VNC server wants a password and the VM has none")
        await upstream.write(vnc_auth_response(password, await upstream.read_exactly(16)))
    elif chosen != SEC_NONE:
        raise RfbError(f"the VM's VNC server chose a security type the proxy does not speak: {chosen}")
    if (chosen == SEC_VNC or use == 8) and await _u32(upstream) != 0:
        detail = await _reason(upstream) if use == 8 else ""
        raise RfbError("the VM's VNC server refused its password" + (f": {detail}" if detail else ""))
    return use


async def serve_without_auth(browser: ByteStream) -> int:
    """Be the VNC server towards the browser, up to (not including) ClientInit, with no
    authentication (security type None); return the minor version agreed."""
    await browser.write(b"RFB 003.008\n")
    use = _minor(await browser.read_exactly(12))
    if use == 3:
        await browser.write(struct.pack("!I", SEC_NONE))
        return use
    await browser.write(bytes([1, SEC_NONE]))
    if (await browser.read_exactly(1))[0] != SEC_NONE:
        raise RfbError("the browser chose a security type that was not offered")
    if use == 8:
        await browser.write(struct.pack("!I", 0))
    return use


async def login_within(upstream: ByteStream, password: str | None, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """``login`` with a deadline; every failure (a timeout, a closed side) is an ``RfbError``."""
    try:
        async with asyncio.timeout(timeout_s):
            await login(upstream, password)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise RfbError(f"the VM's console could not be reached: {str(exc) or exc.__class__.__name__}") from None


async def greet_within(browser: ByteStream, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """``serve_without_auth`` with a deadline; every failure is an ``RfbError``."""
    try:
        async with asyncio.timeout(timeout_s):
            await serve_without_auth(browser)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise RfbError(f"the browser left during the handshake: {str(exc) or exc.__class__.__name__}") from None


async def handshake(browser: ByteStream, upstream: ByteStream, password: str | None, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Log in upstream first (a refusal never reaches the browser as a session), then
    greet the browser. ``RfbError`` on any failure, also on a timeout or a closed side."""
    await login_within(upstream, password, timeout_s)
    await greet_within(browser, timeout_s)


async def relay(a: ByteStream, b: ByteStream) -> None:
    """Copy bytes both ways until either side closes; leaves closing to the caller."""

    async def pump(src: ByteStream, dst: ByteStream) -> None:
        try:
            while data := await src.read_some():
                await dst.write(data)
        except Exception:  # noqa: BLE001  # any broken side (socket, websocket) ends the session alike
            return

    tasks = [asyncio.create_task(pump(a, b)), asyncio.create_task(pump(b, a))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
