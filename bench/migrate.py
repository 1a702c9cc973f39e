"""Live migration of an idle 128 MiB TCG guest between two private libvirtds on this
machine (tests/e2e/libvirtd.py: own host UUIDs, VNC and migration port ranges), back
and forth, through cloudd's driver path against a bare libvirt call, in the same run.

- **cloudd** (``cloudd_migrate``, one function so the full cluster path, API -> agent,
  can take its place): ``LibvirtCompute.migrate_live`` with the target node's spec
  (its own serial log): a connection of its own, the live XML rewritten by
  ``migratable_xml``, ``migrateToURI3`` peer to peer, the downtime from libvirt's
  job-completed event.
- **raw** (the baseline): ``dom.migrateToURI3`` on an open connection with the same flags,
  ``migrate_uri`` and a by-hand XML (the live one with the serial log path replaced).

Each round makes four hops: cloudd A->B, raw B->A, raw A->B, cloudd B->A, so both modes
go both ways in every round. After every hop (untimed) the guest must print its
heartbeat on the target with the same RAM-only token and a larger uptime: it moved live.
Downtime is libvirt's measurement (the guest's pause at the switch-over).

Last line: ``live_migrate_s=<median cloudd> overhead_ratio=<cloudd median / raw median>
downtime_ms=<median cloudd downtime>``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from cloudd.ops.compute import DomainSpec, LiveOptions, MigrationTarget  # noqa: E402
from cloudd.ops.libvirt_compute import LibvirtCompute, migration_call  # noqa: E402
from tests.e2e.libvirtd import PrivateLibvirtd, libvirtd_missing  # noqa: E402
from tests.e2e.test_live_migration import heartbeats  # noqa: E402

GUEST_DIR = Path("/tmp/cloudd-test-guest")  # what the e2e tests' guest fixture builds
NODES = {"a": ((7400, 7449), (49400, 49449)), "b": ((7450, 7499), (49450, 49499))}  # VNC, migration ports: no test uses these
VM = "bench-mig"
MIGRATE_URI = "tcp://127.0.0.1"


@dataclass
class Bench:
    daemons: dict[str, PrivateLibvirtd]
    drivers: dict[str, LibvirtCompute]
    raw: dict[str, libvirt.virConnect]
    work: Path
    token: str = ""
    last_uptime: float = 0.0
    hops: list[tuple[str, str, float, float | None]] = field(default_factory=list)  # mode, direction, seconds, downtime ms

    def spec(self, node: str) -> DomainSpec:
        return DomainSpec(
            VM, VM, 1, 128, domain_type="qemu", serial_log=str(self.work / f"{node}.serial.log"),
            kernel=str(GUEST_DIR / "vmlinuz"), initrd=str(GUEST_DIR / "initrd.img"), cmdline="console=ttyS0",
        )

    def target(self, node: str) -> MigrationTarget:
        return MigrationTarget(node, self.daemons[node].uri, MIGRATE_URI)


Hop = tuple[float, float | None]  # seconds, downtime ms


def cloudd_migrate(bench: Bench, source: str, target: str) -> Hop:
    """cloudd's path: the source node's driver migrates to the target node's spec."""
    result = bench.drivers[source].migrate_live(VM, bench.target(target), bench.spec(target), LiveOptions())
    return result.elapsed_s, result.downtime_ms


def raw_migrate(bench: Bench, source: str, target: str) -> Hop:
    """The baseline: one libvirt call with the same flags (the downtime read afterwards
    from the target's completed job, untimed)."""
    dom = bench.raw[source].lookupByName(f"cloudd-{VM}")
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)
    xml = xml.replace(str(bench.work / f"{source}.serial.log"), str(bench.work / f"{target}.serial.log"))
    params, flags = migration_call(bench.target(target), LiveOptions(), xml)
    started = time.perf_counter()
    dom.migrateToURI3(bench.daemons[target].uri, params, flags)
    took = time.perf_counter() - started
    stats = bench.raw[target].lookupByName(f"cloudd-{VM}").jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return took, float(stats["downtime"]) if "downtime" in stats else None


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def landed(bench: Bench, node: str) -> None:
    """Untimed: the guest beats on ``node`` with its token and a larger uptime, and the
    other node has nothing left."""
    log = bench.work / f"{node}.serial.log"

    def beating() -> bool:
        beats = heartbeats(log)
        return bool(beats) and beats[-1][0] > bench.last_uptime

    wait_for(beating, 30, f"a heartbeat on {node}")
    beats = heartbeats(log)
    if {token for _, token in beats} != {bench.token}:
        raise RuntimeError(f"the guest on {node} has other memory: {beats[-3:]} (token {bench.token})")
    if "CLOUDD-GUEST-BOOTED" in log.read_text(errors="replace"):
        raise RuntimeError(f"the guest booted on {node}")
    other = "b" if node == "a" else "a"
    if VM not in bench.drivers[node].domains() or bench.drivers[other].domains():
        raise RuntimeError(f"the domain is not (only) on {node}")
    bench.last_uptime = beats[-1][0]


def run(bench: Bench, rounds: int) -> None:
    drv = bench.drivers["a"]
    drv.define(bench.spec("a"))
    drv.start(VM)
    log = bench.work / "a.serial.log"
    wait_for(lambda: heartbeats(log), 120, "the guest's first heartbeat")
    bench.token = heartbeats(log)[0][1]
    time.sleep(3)  # idle: past the boot
    modes: dict[str, Callable[[Bench, str, str], Hop]] = {"cloudd": cloudd_migrate, "raw": raw_migrate}
    for round_ in range(rounds):
        for mode, source, target in (("cloudd", "a", "b"), ("raw", "b", "a"), ("raw", "a", "b"), ("cloudd", "b", "a")):
            took, downtime = modes[mode](bench, source, target)
            landed(bench, target)
            bench.hops.append((mode, f"{source}->{target}", took, downtime))
            shown = f"{downtime:.0f} ms" if downtime is not None else "?"
            print(f"round {round_ + 1} {mode:6} {source}->{target}: {took:.3f} s, downtime {shown}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="each round: both modes, both ways (default 5)")
    args = parser.parse_args()
    reason = libvirtd_missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    subprocess.run(["bash", str(ROOT / "scripts" / "build-guest.sh"), str(GUEST_DIR)], check=True, capture_output=True, timeout=300)
    work = Path(tempfile.mkdtemp(prefix="cloudd-bench-migrate-", dir="/tmp"))
    daemons: dict[str, PrivateLibvirtd] = {}
    raw: dict[str, libvirt.virConnect] = {}
    try:
        for node, (vnc, migration) in NODES.items():
            (work / node).mkdir()
            daemons[node] = PrivateLibvirtd(vnc, log_dir=work / node, migration_ports=migration).start()
        drivers = {node: LibvirtCompute(d.uri, vnc_range=d.vnc_ports) for node, d in daemons.items()}
        raw = {node: libvirt.open(d.uri) for node, d in daemons.items()}
        bench = Bench(daemons, drivers, raw, work)
        run(bench, args.rounds)
    finally:
        for conn in raw.values():
            conn.close()
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)

    def times(mode: str, direction: str | None = None) -> list[float]:
        return [took for m, d, took, _ in bench.hops if m == mode and direction in (None, d)]

    for mode in ("cloudd", "raw"):
        parts = ", ".join(f"{d} {statistics.median(times(mode, d)):.3f} s" for d in ("a->b", "b->a"))
        downtimes = [ms for m, _, _, ms in bench.hops if m == mode and ms is not None]
        print(f"{mode}: median {statistics.median(times(mode)):.3f} s ({parts}), downtime median {statistics.median(downtimes):.0f} ms, max {max(downtimes):.0f} ms")
    cloudd, baseline = statistics.median(times("cloudd")), statistics.median(times("raw"))
    downtime = statistics.median(ms for m, _, _, ms in bench.hops if m == "cloudd" and ms is not None)
    print(f"live_migrate_s={cloudd:.3f} overhead_ratio={cloudd / baseline:.2f} downtime_ms={downtime:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
