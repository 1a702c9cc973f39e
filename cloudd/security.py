"""Secrets: password hashing (scrypt, memory-hard), tokens, node request signatures.

Nothing here logs a secret. Token strings are ``<prefix>.<id>.<secret>``: the id is
stored in the replicated state, the secret only as a SHA-256 hash (tokens are random,
high-entropy strings, so a fast hash is enough; passwords get scrypt).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass

from cryptography.fernet import Fernet

SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1  # 16 MiB of memory per hash
MAX_PASSWORD_BYTES = 1024
NODE_SIGNATURE_WINDOW_S = 60.0


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    data = password.encode()
    if len(data) > MAX_PASSWORD_BYTES:
        raise ValueError("password too long")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=256 << 20, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt_hex, digest_hex = encoded.split("$")
        if scheme != "scrypt":
            return False
        data = password.encode()
        if len(data) > MAX_PASSWORD_BYTES:
            return False
        digest = hashlib.scrypt(
            data, salt=bytes.fromhex(salt_hex), n=int(n), r=int(r), p=int(p), maxmem=256 << 20, dklen=32
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class TokenParts:
    prefix: str
    token_id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.prefix}.{self.token_id}.{self.secret}"


def new_token(prefix: str) -> TokenParts:
    return TokenParts(prefix, secrets.token_hex(8), secrets.token_urlsafe(32))


def derived_token(cluster_secret: str, prefix: str, owner: str, request_id: str) -> TokenParts:
    """The token a request id stands for: a retry (same id, any node) gets the same token."""
    key = _node_key(cluster_secret)
    seed = f"{prefix}\n{owner}\n{request_id}".encode()
    token_id = hmac.new(key, b"id\n" + seed, hashlib.sha256).hexdigest()[:16]
    secret = base64.urlsafe_b64encode(hmac.new(key, b"secret\n" + seed, hashlib.sha256).digest()).decode().rstrip("=")
    return TokenParts(prefix, token_id, secret)


def parse_token(text: str, prefix: str) -> TokenParts | None:
    if not text.isascii():
        return None
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != prefix or not parts[1] or not parts[2]:
        return None
    if len(parts[1]) > 64 or len(parts[2]) > 128:
        return None
    return TokenParts(*parts)


def _node_key(cluster_secret: str) -> bytes:
    return hmac.new(cluster_secret.encode(), b"cloudd node request signing", hashlib.sha256).digest()


def sign_node_request(cluster_secret: str, node: str, method: str, path: str, body: bytes, now: float | None = None) -> str:
    """The ``X-Cloudd-Node`` header value proving a request comes from a cluster node."""
    ts = f"{(now if now is not None else time.time()):.3f}"
    message = "\n".join([node, ts, method.upper(), path, hashlib.sha256(body).hexdigest()]).encode()
    mac = hmac.new(_node_key(cluster_secret), message, hashlib.sha256).hexdigest()
    return f"{node}:{ts}:{mac}"


def verify_node_request(cluster_secret: str, header: str, method: str, path: str, body: bytes, now: float | None = None) -> str | None:
    """Return the node name when the signature is valid and fresh, else None."""
    parsed = parse_node_signature(header, now)
    if parsed is None:
        return None
    node, when, mac = parsed
    expected = sign_node_request(cluster_secret, node, method, path, body, now=when).rsplit(":", 1)[1]
    return node if hmac.compare_digest(expected.encode(), mac.encode()) else None


def parse_node_signature(header: str, now: float | None = None) -> tuple[str, float, str] | None:
    """Split and sanity-check a signature header (fresh, finite, ASCII) before any body is read."""
    if not header.isascii() or len(header) > 256:
        return None
    try:
        node, ts, mac = header.rsplit(":", 2)
        when = float(ts)
    except ValueError:
        return None
    current = now if now is not None else time.time()
    if not math.isfinite(when) or abs(current - when) > NODE_SIGNATURE_WINDOW_S or len(mac) != 64:
        return None
    return node, when, mac


def join_proof(key_hex: str, payload: bytes) -> str:
    """HMAC a join request with the join token's key, so the key never crosses the wire."""
    return hmac.new(bytes.fromhex(key_hex), payload, hashlib.sha256).hexdigest()


def _join_fernet(key_hex: str) -> "Fernet":
    key = base64.urlsafe_b64encode(hashlib.sha256(b"cloudd join seal" + bytes.fromhex(key_hex)).digest())
    return Fernet(key)


def seal_for_joiner(key_hex: str, plaintext: bytes) -> str:
    """Encrypt the cluster secret for a joining node with a key derived from its token."""
    return _join_fernet(key_hex).encrypt(plaintext).decode()


def open_for_joiner(key_hex: str, sealed: str) -> bytes:
    return _join_fernet(key_hex).decrypt(sealed.encode())
