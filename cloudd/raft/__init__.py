"""Embedded Raft (pysyncobj): one replicated ``apply(command)``, persistence, membership."""

import socket as _socket

_inet_ntop = _socket.inet_ntop
import pysyncobj.tcp_connection  # noqa: E402,F401  (imports its vendored win_inet_pton)

# pysyncobj 0.3.17's vendored win_inet_pton replaces socket.inet_ntop on every platform
# with a Windows-only version (its `if os.name == 'nt'` guards only inet_pton), which
# breaks whatever else in the process formats addresses (pyroute2 decoding VXLAN
# attributes): put the real one back.
_socket.inet_ntop = _inet_ntop
