"""Password hashing, tokens, node signatures and join sealing."""

from __future__ import annotations

from cloudd.commands.common import PASSWORD_HASH_RE
from cloudd.security import (
    hash_password,
    join_proof,
    new_token,
    open_for_joiner,
    parse_token,
    seal_for_joiner,
    sign_node_request,
    verify_node_request,
    verify_password,
)


def test_password_hash_roundtrip_and_format() -> None:
    encoded = hash_password("correct horse", n=1 << 10)
    assert PASSWORD_HASH_RE.fullmatch(encoded)
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong horse", encoded)
    assert not verify_password("x", "garbage")
    assert hash_password("same", n=1 << 10) != hash_password("same", n=1 << 10)


def test_token_parse() -> None:
    token = new_token("cdt")
    assert parse_token(str(token), "cdt") == token
    assert parse_token(str(token), "cdj") is None
    assert parse_token("cdt..x", "cdt") is None
    assert parse_token("nonsense", "cdt") is None


def test_node_signature_binds_method_path_body_and_time() -> None:
    header = sign_node_request("s3cret", "n1", "POST", "/api/v1/x", b"{}", now=1000.0)
    assert verify_node_request("s3cret", header, "POST", "/api/v1/x", b"{}", now=1010.0) == "n1"
    assert verify_node_request("other", header, "POST", "/api/v1/x", b"{}", now=1010.0) is None
    assert verify_node_request("s3cret", header, "DELETE", "/api/v1/x", b"{}", now=1010.0) is None
    assert verify_node_request("s3cret", header, "POST", "/api/v1/y", b"{}", now=1010.0) is None
    assert verify_node_request("s3cret", header, "POST", "/api/v1/x", b"{1}", now=1010.0) is None
    assert verify_node_request("s3cret", header, "POST", "/api/v1/x", b"{}", now=1100.0) is None
    assert verify_node_request("s3cret", "garbage", "POST", "/api/v1/x", b"{}") is None


def test_join_seal_needs_the_token_key() -> None:
    key = "ab" * 16
    sealed = seal_for_joiner(key, b"cluster-secret")
    assert b"cluster-secret" not in sealed.encode()
    assert open_for_joiner(key, sealed) == b"cluster-secret"
    assert join_proof(key, b"x") != join_proof("cd" * 16, b"x")
