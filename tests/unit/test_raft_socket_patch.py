"""pysyncobj must not leave the process with a broken socket.inet_ntop."""

import socket

import cloudd.raft.node  # noqa: F401  (imports pysyncobj)


def test_inet_ntop_still_formats_addresses_after_pysyncobj_is_imported() -> None:
    assert socket.inet_ntop(socket.AF_INET, bytes([192, 0, 2, 1])) == "192.0.2.1"
    assert socket.inet_ntop(socket.AF_INET6, bytes(15) + b"\x01") == "::1"
