"""``/etc/cloudd/cloudd.toml``: how the cloudd process runs on a node (data dir, log
format and level, the /metrics token). The node's identity stays in node.json.

Precedence: a command-line option, then its ``CLOUDD_*`` environment variable, then this
file, then the built-in default. A missing file at the default path is fine; a file that
was asked for (``--config``/``$CLOUDD_CONFIG``) must exist.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudd.logging_setup import FORMATS, LEVELS
from cloudd.systemd import CONFIG_PATH


@dataclass(frozen=True)
class ProcessConfig:
    data_dir: str | None = None
    log_format: str = "text"
    log_level: str = "info"
    metrics_token_file: str = ""


def load(path: str | None, required: bool = False) -> ProcessConfig:
    """Read the file; ``ValueError`` naming the key on anything wrong."""
    file = Path(path or CONFIG_PATH)
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text())
    except FileNotFoundError:
        if required:
            raise ValueError(f"{file} does not exist") from None
        return ProcessConfig()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{file}: {exc}") from None
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise ValueError(f"{file}: [metrics] must be a table")
    config = ProcessConfig(
        data_dir=_str(file, data, "data_dir", None) or None,
        log_format=_str(file, data, "log_format", "text"),
        log_level=_str(file, data, "log_level", "info"),
        metrics_token_file=_str(file, metrics, "token_file", ""),
    )
    if config.log_format not in FORMATS:
        raise ValueError(f"{file}: log_format must be one of {', '.join(FORMATS)}")
    if config.log_level not in LEVELS:
        raise ValueError(f"{file}: log_level must be one of {', '.join(LEVELS)}")
    return config


def _str(file: Path, table: dict[str, Any], key: str, default: str | None) -> Any:
    value = table.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{file}: {key} must be a string")
    return value


def read_token(path: str) -> str | None:
    """The /metrics bearer token from ``path`` (stripped); None when no file is configured."""
    if not path:
        return None
    token = Path(path).read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the metrics token must be at least 16 characters")
    return token
