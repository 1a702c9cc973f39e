"""Small helpers shared by the tests that boot real guests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def serial(path: Path) -> str:
    """A guest's serial log so far ("" before it exists)."""
    return path.read_text(errors="replace") if path.exists() else ""
