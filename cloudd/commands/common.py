"""Helpers shared by the command handlers."""

from __future__ import annotations

import re
from typing import Any

from cloudd.errors import CloudError
from cloudd.model.state import State
from cloudd.validate import ADDRESS_RE, HEX_RE, HOSTNAME_RE, ID_RE, USERNAME_RE, Field

PASSWORD_HASH_RE = re.compile(r"^scrypt\$[0-9]{1,8}\$[0-9]{1,3}\$[0-9]{1,3}\$[0-9a-f]{32}\$[0-9a-f]{64}$")

NODE_NAME = Field("str", pattern=HOSTNAME_RE)
USER_NAME = Field("str", pattern=USERNAME_RE)
ADDRESS = Field("str", pattern=ADDRESS_RE)
OBJECT_ID = Field("str", pattern=ID_RE)
SHA256_HEX = Field("str", pattern=HEX_RE, max_len=64, check=lambda v: None if len(v) == 64 else "must be 64 hex digits")
PASSWORD_HASH = Field("str", pattern=PASSWORD_HASH_RE)
TIMESTAMP = Field("num", min=0)


def require_initialized(state: State) -> None:
    if not state.initialized:
        raise CloudError("conflict", "the cluster is not initialized")


def get_node(state: State, name: str) -> dict[str, Any]:
    node = state.nodes.get(name)
    if node is None:
        raise CloudError("not_found", f"node {name} not found")
    return node


def get_user(state: State, name: str) -> dict[str, Any]:
    user = state.users.get(name)
    if user is None:
        raise CloudError("not_found", f"user {name} not found")
    return user
