"""A minimal RFB (VNC) client for tests: VNC password authentication and key presses.

Enough to prove what a person at the console can do: log in with the VM's password and
type at the guest's login prompt.
"""

from __future__ import annotations

import socket
import struct
import time

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

VNC_AUTH = 2
RETURN = 0xFF0D


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the VNC server closed the connection")
        data += chunk
    return data


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """DES of the challenge, keyed by the password with each byte's bits mirrored (RFB 7.2.2).
    TripleDES with the same key three times is single DES."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


class RfbClient:
    def __init__(self, host: str, port: int, password: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        version = _recv(self.sock, 12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"not a VNC server: {version!r}")
        self.sock.sendall(b"RFB 003.008\n")
        types = _recv(self.sock, _recv(self.sock, 1)[0])
        if VNC_AUTH not in types:
            raise ConnectionError(f"the server offers no VNC password authentication: {list(types)}")
        self.sock.sendall(bytes([VNC_AUTH]))
        self.sock.sendall(vnc_auth_response(password, _recv(self.sock, 16)))
        if struct.unpack("!I", _recv(self.sock, 4))[0] != 0:
            raise PermissionError("VNC authentication failed")
        self.sock.sendall(b"\x01")  # ClientInit: share the desktop
        self.width, self.height = struct.unpack("!HH", _recv(self.sock, 4))
        _recv(self.sock, 16)  # pixel format
        self.name = _recv(self.sock, struct.unpack("!I", _recv(self.sock, 4))[0]).decode(errors="replace")

    def key(self, keysym: int) -> None:
        for down in (1, 0):
            self.sock.sendall(struct.pack("!BBxxI", 4, down, keysym))
        time.sleep(0.05)

    def type(self, text: str) -> None:
        """Lower-case letters, digits, space, '-' and newline (no shifted characters)."""
        for ch in text:
            self.key(RETURN if ch == "\n" else ord(ch))

    def close(self) -> None:
        self.sock.close()
