"""Small declarative validation of JSON arguments.

Used by the command handlers (inside the replicated ``apply``, so it must be pure and
deterministic) and by the API for request bodies. A spec is a mapping of field name to
``Field``; unknown fields, missing required fields and wrong types are errors that name
the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cloudd.errors import CloudError

HOSTNAME_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
USERNAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}:[0-9]{1,5}$")
HEX_RE = re.compile(r"^[0-9a-f]+$")
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Field:
    """One argument: its kind and constraints.

    kind: "str", "int", "num", "bool", "list", "dict", "obj" (nested ``spec``), "any".
    """

    kind: str
    required: bool = True
    pattern: re.Pattern[str] | None = None
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    item: "Field | None" = None
    spec: Mapping[str, "Field"] | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind in ("dict", "obj"):
        return isinstance(value, dict)
    return kind == "any"


def check_value(name: str, f: Field, value: Any) -> Any:
    """Validate one value against its field; returns the (possibly normalized) value."""
    if value is None:
        if f.nullable:
            return None
        raise CloudError("invalid", f"{name} must not be null", {"field": name})
    if not _type_ok(f.kind, value):
        raise CloudError("invalid", f"{name} must be of type {f.kind}", {"field": name})
    if f.kind in ("int", "num"):
        if value != value or value in (float("inf"), float("-inf")):
            raise CloudError("invalid", f"{name} must be a finite number", {"field": name})
        if f.min is not None and value < f.min:
            raise CloudError("invalid", f"{name} must be at least {f.min:g}", {"field": name})
        if f.max is not None and value > f.max:
            raise CloudError("invalid", f"{name} must be at most {f.max:g}", {"field": name})
    if f.kind in ("str", "list", "dict") and f.max_len is not None and len(value) > f.max_len:
        raise CloudError("invalid", f"{name} is longer than {f.max_len}", {"field": name})
    if f.kind == "str" and f.pattern is not None and not f.pattern.fullmatch(value):
        raise CloudError("invalid", f"{name} has an invalid format", {"field": name})
    if f.choices is not None and value not in f.choices:
        allowed = ", ".join(str(c) for c in f.choices)
        raise CloudError("invalid", f"{name} must be one of: {allowed}", {"field": name})
    if f.kind == "list" and f.item is not None:
        value = [check_value(f"{name}[{i}]", f.item, v) for i, v in enumerate(value)]
    if f.kind == "dict" and f.item is not None:
        out = {}
        for k, v in value.items():
            out[k] = check_value(f"{name}.{k}", f.item, v)
        value = out
    if f.kind == "obj" and f.spec is not None:
        value = check_args(value, f.spec, prefix=f"{name}.")
    if f.check is not None:
        problem = f.check(value)
        if problem:
            raise CloudError("invalid", f"{name} {problem}", {"field": name})
    return value


def check_args(args: Any, spec: Mapping[str, Field], prefix: str = "") -> dict[str, Any]:
    """Validate a JSON object against ``spec``; returns a new dict of the known fields.

    Raises ``CloudError("invalid")`` naming the first offending field.
    """
    if not isinstance(args, dict):
        raise CloudError("invalid", f"{prefix.rstrip('.') or 'body'} must be a JSON object")
    unknown = sorted(k for k in args if k not in spec)
    if unknown:
        raise CloudError(
            "invalid", f"unknown field {prefix}{unknown[0]}", {"unknown": [prefix + u for u in unknown]}
        )
    out: dict[str, Any] = {}
    for name, f in spec.items():
        if name not in args:
            if f.required:
                raise CloudError("invalid", f"{prefix}{name} is required", {"field": prefix + name})
            continue
        out[name] = check_value(prefix + name, f, args[name])
    return out
