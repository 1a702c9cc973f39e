"""A small keep-alive HTTP/1.1 load client on raw asyncio streams.

httpx costs more CPU per request than the server it measures; on a 2-core machine the
load generator shares the cores with the cluster, so it must be cheap.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        if body:
            lines.append("Content-Type: application/json")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


async def run_load(
    targets: list[tuple[str, int]],
    make_request: "callable",  # type: ignore[valid-type]
    in_flight: int,
    duration_s: float,
) -> tuple[Result, float]:
    """``in_flight`` workers, each with its own connection to one target (round robin)."""
    result = Result()
    stop_at = time.perf_counter() + duration_s
    counter = iter(range(1 << 62))

    async def worker(w: int) -> None:
        host, port = targets[w % len(targets)]
        conn = Connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                i = next(counter)
                method, path, body, headers = make_request(i, w)
                started = time.perf_counter()
                try:
                    status, _ = await conn.request(method, path, body, headers)
                except (OSError, asyncio.IncompleteReadError):
                    result.errors += 1
                    await conn.close()
                    conn = Connection(host, port)
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return result, time.perf_counter() - started
