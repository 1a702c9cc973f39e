"""Printing results as a table or as JSON."""

from __future__ import annotations

import datetime
from typing import Any, Sequence

import click
import orjson


def fmt(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and (column.endswith("_at") or column in ("last_heartbeat", "status_since", "ts")):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list):
        return ",".join(fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[c.upper() for c in columns]] + [[fmt(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells)


def emit(data: Any, output: str, columns: Sequence[str] | None = None) -> None:
    """Print ``data`` (a dict, or a list of rows with ``columns``)."""
    if output == "json":
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    if isinstance(data, list):
        click.echo(table(data, columns or sorted({k for row in data for k in row})))
        return
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {fmt(value, key)}")
