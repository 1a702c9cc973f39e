"""cloudctl's config file: endpoints to try in order, and the login token (0600)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import orjson


def default_path() -> Path:
    env = os.environ.get("CLOUDCTL_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cloudctl" / "config.json"


@dataclass
class CtlConfig:
    endpoints: list[str] = field(default_factory=list)
    token: str | None = None
    user: str | None = None
    path: Path = field(default_factory=default_path)

    @classmethod
    def load(cls, path: Path | None = None) -> "CtlConfig":
        path = path or default_path()
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls(path=path)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        endpoints = data.get("endpoints", [])
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ValueError(f"{path}: endpoints must be a list of URLs")
        return cls(endpoints=endpoints, token=data.get("token"), user=data.get("user"), path=path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"endpoints": self.endpoints, "token": self.token, "user": self.user}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.chmod(self.path, 0o600)
