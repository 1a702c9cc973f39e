"""systemd integration: the notify protocol (``Type=notify``, watchdog) and installing
the units, the config file and the data dir.

``notify`` speaks sd_notify(3) over ``$NOTIFY_SOCKET`` (an AF_UNIX datagram socket, a
leading ``@`` meaning the abstract namespace) without libsystemd. ``Notifier`` is what
``cloudd serve`` uses: ``READY=1`` once the API serves, ``WATCHDOG=1`` from the agent loop
(only after a pass that completed), ``STATUS=`` lines, ``STOPPING=1``. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

UNITS = ("cloudd.service", "cloudd-fence-guard.service")
TMPFILES = "cloudd.conf"
DEFAULT_PREFIX = "/opt/cloudd"  # where the repo lives; its venv runs cloudd
DEFAULT_DATA_DIR = "/var/lib/cloudd"
CONFIG_PATH = "/etc/cloudd/cloudd.toml"
SEND_TIMEOUT_S = 0.2


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message (``READY=1``, ``WATCHDOG=1``, ``STATUS=…``; several
    separated by newlines). False, never an exception, when ``$NOTIFY_SOCKET`` is unset or
    the socket does not answer."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # never block the event loop for long: a receiver that stopped reading fills
            # its queue (net.unix.max_dgram_qlen, 10 datagrams by default)
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address.replace("\0", "@"), exc)
        return False


def watchdog_period(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog period systemd set for this process (``$WATCHDOG_USEC``), in seconds;
    None when there is none or ``$WATCHDOG_PID`` names another process."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(raw) / 1_000_000


@dataclass
class Notifier:
    """cloudd's side of ``Type=notify``. ``alive()`` is called by the agent loop after
    every pass that completed; it sends ``WATCHDOG=1`` at most every half period, so a
    hung or failing agent loop stops the keep-alives and systemd restarts cloudd."""

    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Callable[[], float] = time.monotonic
    period: float | None = field(init=False)
    last_alive: float | None = field(init=False, default=None)
    last_status: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.period = watchdog_period(self.environ)

    @classmethod
    def take_from_environ(cls, environ: dict[str, str] | os._Environ[str] | None = None) -> Notifier:
        """A notifier for this process that removes ``NOTIFY_SOCKET`` and ``WATCHDOG_*``
        from the environment, so the programs cloudd starts (dnsmasq, tgtd, qemu) do not
        inherit them."""
        env = os.environ if environ is None else environ
        mine = {key: env[key] for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if key in env}
        for key in mine:
            del env[key]
        return cls(environ=mine)

    @property
    def enabled(self) -> bool:
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def ready(self, status: str) -> bool:
        self.last_status = status
        return notify(f"READY=1\nSTATUS={status}", self.environ)

    def status(self, status: str) -> bool:
        """A ``STATUS=`` line, sent only when it changed."""
        if status == self.last_status:
            return False
        self.last_status = status
        return notify(f"STATUS={status}", self.environ)

    def alive(self) -> bool:
        """Keep the watchdog fed (a completed agent pass); True when a keep-alive went out."""
        if self.period is None:
            return False
        now = self.clock()
        if self.last_alive is not None and now - self.last_alive < self.period / 2:
            return False
        self.last_alive = now
        return notify("WATCHDOG=1", self.environ)

    def stopping(self) -> bool:
        return notify("STOPPING=1\nSTATUS=stopping", self.environ)


# --- installing ----------------------------------------------------------------------


CONFIG_TEMPLATE = """\
# /etc/cloudd/cloudd.toml: how the cloudd process runs on this node. The node's identity
# (name, addresses, timings) is in <data_dir>/node.json, written by 'cloudd init' / 'join';
# the cluster's state is replicated by Raft. Command-line options and CLOUDD_* environment
# variables override these values.

# this node's state directory (node.json, cluster.secret, the Raft journal)
data_dir = "{data_dir}"

# "text" (one human-readable line per record) or "json" (one JSON object per line)
log_format = "text"
# debug, info, warning or error
log_level = "info"

[metrics]
# GET /metrics is public on the API port when this is empty (like /healthz); with a file
# holding a token, scrapers must send "Authorization: Bearer <token>" (Prometheus:
# authorization.credentials_file). The file should be 0600.
token_file = ""
"""


@dataclass
class Installed:
    """What ``install`` wrote (paths under ``root``) and what it left alone."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def units_dir() -> Path:
    """The repository's ``systemd/`` directory (units and tmpfiles.d file)."""
    return Path(__file__).resolve().parent.parent / "systemd"


def render_unit(text: str, prefix: str, data_dir: str) -> str:
    """A unit file for an install at ``prefix`` (its ``.venv/bin/cloudd``) and ``data_dir``."""
    text = text.replace(f"{DEFAULT_PREFIX}/.venv/bin/cloudd", f"{prefix.rstrip('/')}/.venv/bin/cloudd")
    text = text.replace(f"file:{DEFAULT_PREFIX}/", f"file:{prefix.rstrip('/')}/")
    return text.replace(DEFAULT_DATA_DIR, data_dir.rstrip("/") or "/")


def install(root: str | Path = "/", prefix: str = DEFAULT_PREFIX, data_dir: str = DEFAULT_DATA_DIR, source: Path | None = None) -> Installed:
    """Place the units in ``<root>/etc/systemd/system``, the tmpfiles.d file in
    ``<root>/etc/tmpfiles.d``, ``<root>/etc/cloudd/cloudd.toml`` (kept when it exists) and
    the data dir (0700). Paths inside the files stay absolute on the target system
    (``root`` is only where they are written: a test's temp dir, an image being built).
    Idempotent; it neither reloads nor enables anything."""
    root_path = Path(root)
    source = source or units_dir()
    out = Installed()

    def place(relative: str, text: str, mode: int, keep: bool = False) -> None:
        path = root_path / relative.lstrip("/")
        if keep and path.exists():
            out.kept.append(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        out.written.append(path)

    for unit in UNITS:
        place(f"etc/systemd/system/{unit}", render_unit((source / unit).read_text(), prefix, data_dir), 0o644)
    place(f"etc/tmpfiles.d/{TMPFILES}", render_unit((source / "cloudd.tmpfiles").read_text(), prefix, data_dir), 0o644)
    place(CONFIG_PATH, CONFIG_TEMPLATE.format(data_dir=data_dir), 0o644, keep=True)
    data = root_path / data_dir.lstrip("/")
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    run = root_path / "run/cloudd"
    if root_path != Path("/"):
        run.mkdir(parents=True, exist_ok=True)  # at / systemd-tmpfiles makes it at boot
    return out


def systemctl_available() -> bool:
    """Whether systemd runs this host (``/run/systemd/system`` exists, as sd_booted(3))."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None
