"""Logging of the cloudd process: text or JSON lines, and request ids that follow a
command from the API into the replicated log and on to the agent that acts on it.

- ``setup(fmt, level)``: ``text`` (one human line per record) or ``json`` (one JSON object
  per line: ``ts``, ``level``, ``logger``, ``msg``, plus ``request_id``/``vm``/``node``
  when known, ``exc`` with a traceback).
- ``current_request``: the request id of what this task is doing. The API sets it for
  every HTTP request (from ``X-Request-Id`` or a new one) and uses it as the id of the
  command it proposes, so the command in the Raft log, its event and every node's log
  lines carry it.
- ``TRAIL``: a node-local, bounded memory of which request last changed an object
  (filled from the applied commands); the VM reconciler logs under that request id, so
  ``grep <request id>`` finds the agent's work on another node. Not replicated.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from typing import IO, Any

import orjson

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

current_request: contextvars.ContextVar[str | None] = contextvars.ContextVar("cloudd_request_id", default=None)
current_vm: contextvars.ContextVar[str | None] = contextvars.ContextVar("cloudd_vm", default=None)


class ContextFilter(logging.Filter):
    """Copies the request id and VM of the running task onto every record (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request.get()
        if not hasattr(record, "vm"):
            record.vm = current_vm.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with ``[req=…]`` when a request id is known."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [req={request_id}]" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; newlines inside messages stay escaped in the string."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("request_id", "vm"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if self.node:
            out["node"] = self.node
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


def setup(fmt: str = "text", level: str = "info", stream: IO[str] | None = None, node: str | None = None) -> logging.Handler:
    """Configure the root logger (replacing its handlers); returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler


def set_node(node: str) -> None:
    """Name this node in JSON lines from now on (known once node.json is read)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.node = node


@contextlib.contextmanager
def request_scope(request_id: str | None, vm: str | None = None) -> Iterator[None]:
    """Log lines inside carry ``request_id`` (and ``vm``); restores the outer values."""
    token = current_request.set(request_id)
    vm_token = current_vm.set(vm) if vm is not None else None
    try:
        yield
    finally:
        current_request.reset(token)
        if vm_token is not None:
            current_vm.reset(vm_token)


class RequestTrail:
    """Which request last changed an object: object id → request id, newest ``size`` kept.

    ``note_command`` is an apply hook: it remembers commands that a user or admin asked
    for (an ``actor`` with ``user``), not the agents' own reports, under every id the
    command names (``args.id``, ``args.vm``, the result's ``id``)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, str] = OrderedDict()

    def note(self, object_id: str, request_id: str) -> None:
        self._ids[object_id] = request_id
        self._ids.move_to_end(object_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)

    def of(self, object_id: str) -> str | None:
        return self._ids.get(object_id)

    def note_command(self, _index: int, raw: bytes, outcome: dict[str, Any]) -> None:
        if b'"user"' not in raw or "error" in outcome or outcome.get("duplicate"):
            return
        try:
            cmd = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(cmd, dict) or "user" not in (cmd.get("actor") or {}) or not isinstance(cmd.get("id"), str):
            return
        args: dict[str, Any] = cmd["args"] if isinstance(cmd.get("args"), dict) else {}
        result = outcome.get("result")
        named = [args.get("id"), args.get("vm"), result.get("id") if isinstance(result, dict) else None]
        for object_id in named:
            if isinstance(object_id, str) and object_id:
                self.note(object_id, cmd["id"])


TRAIL = RequestTrail()


REQUEST_ID_HEADER = b"x-request-id"


def _valid_id(value: str) -> bool:
    from cloudd.validate import ID_RE

    return bool(ID_RE.fullmatch(value))


class RequestIdMiddleware:
    """ASGI middleware: the request's id is its ``X-Request-Id`` (when well formed) or a
    new one; it is ``current_request`` while the request runs and is echoed in the
    answer's ``X-Request-Id``. (A malformed header is still refused by the handlers that
    use it as an idempotency key.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from cloudd.raft.proposer import new_request_id

        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == REQUEST_ID_HEADER), None)
        request_id = given if given is not None and _valid_id(given) else new_request_id()

        async def echo(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        with request_scope(request_id):
            await self.app(scope, receive, echo)


def command_id(state: Any) -> str | None:
    """The id for the next command an HTTP request proposes when its client chose none:
    the request id for the first, ``<request id>-2``, ``-3`` … for further ones (a
    request id names one command). ``state`` is the request's ``request.state``."""
    base = current_request.get()
    if base is None:
        return None
    count = getattr(state, "commands_proposed", 0) + 1
    state.commands_proposed = count
    return base if count == 1 else f"{base[:56]}-{count}"
