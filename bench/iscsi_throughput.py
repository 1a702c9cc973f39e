"""Sequential 1 MiB writes and reads of a volume through tgt (qemu's own iSCSI initiator)
against the same raw file accessed locally, measured in one run.

A file volume (``FileVolumes``) is exported by a private tgtd on loopback with the
cloudd target layout (LUN 1, initiator ACL, CHAP) and driven with ``qemu-img bench``
(O_DIRECT for the local file, so the page cache does not flatter the baseline).

Last line: ``iscsi_read_ratio=<iscsi/local> iscsi_write_ratio=<iscsi/local>``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudd.ops.file_volumes import FileVolumes  # noqa: E402
from cloudd.ops.storage import ExportSpec, volume_target  # noqa: E402
from cloudd.ops.tgt import TgtDaemon, TgtExports, free_control_port  # noqa: E402
from tests.cluster.harness import free_port  # noqa: E402

QEMU_DEFAULT_INITIATOR = "iqn.2008-11.org.linux-kvm"  # what qemu-img logs in as
MIB = 1 << 20


def bench(target: str, count: int, write: bool, cache: str) -> float:
    """MiB/s of ``count`` sequential 1 MiB requests, one at a time (depth 1)."""
    args = ["qemu-img", "bench", "-f", "raw", "-t", cache, "-s", "1M", "-S", "1M", "-d", "1", "-c", str(count)]
    if write:
        args += ["-w", "--pattern=90"]
    args.append(target)
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"qemu-img bench failed: {done.stderr.strip()}")
    match = re.search(r"Run completed in ([0-9.]+) seconds", done.stdout)
    seconds = float(match.group(1)) if match else elapsed
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="volume size and amount moved per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudd-bench-iscsi-", dir="/var/tmp") as tmp:
        volumes = FileVolumes(Path(tmp) / "pool")
        info = volumes.create("bench", args.mib * MIB)
        portal = f"127.0.0.1:{free_port('127.0.0.1')}"
        daemon = TgtDaemon(free_control_port(), portal, Path(tmp) / "tgtd.log").start()
        try:
            exports = TgtExports(portal, control_port=daemon.control_port)
            password = "bench-chap-secret-1"
            exports.ensure(ExportSpec(volume_target("bench"), info.path, (QEMU_DEFAULT_INITIATOR,), "bench-user", password))
            url = f"iscsi://bench-user%{password}@{portal}/{volume_target('bench')}/1"
            results: dict[str, list[float]] = {"local_write": [], "local_read": [], "iscsi_write": [], "iscsi_read": []}
            for _ in range(args.rounds):
                results["local_write"].append(bench(info.path, args.mib, True, "none"))
                results["iscsi_write"].append(bench(url, args.mib, True, "none"))
                results["local_read"].append(bench(info.path, args.mib, False, "none"))
                results["iscsi_read"].append(bench(url, args.mib, False, "none"))
        finally:
            daemon.stop()
    best = {k: max(v) for k, v in results.items()}
    for key in ("local_write", "iscsi_write", "local_read", "iscsi_read"):
        print(f"{key}: {best[key]:.0f} MiB/s (best of {args.rounds}: {', '.join(f'{x:.0f}' for x in results[key])})")
    print(f"iscsi_read_ratio={best['iscsi_read'] / best['local_read']:.2f} iscsi_write_ratio={best['iscsi_write'] / best['local_write']:.2f}")


if __name__ == "__main__":
    main()
