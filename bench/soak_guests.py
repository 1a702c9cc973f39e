"""Soak the compute driver: define -> boot -> destroy -> undefine cycles of real TCG guests.

Proves the embedded-libvirt setup holds up: every cycle must boot to the serial marker;
any failure or hang (a cycle over --cycle-timeout) stops the run with a non-zero exit.
Baseline in the same run: the first cycle's time; the ratio shows whether cycles slow down.

Last line: ``soak_cycles=<n> soak_failures=<n> last_vs_first_cycle_ratio=<r>``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloudd.ops.compute import DomainSpec  # noqa: E402
from cloudd.ops.libvirt_compute import LibvirtCompute  # noqa: E402

MARKER = "CLOUDD-GUEST-BOOTED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cycle-timeout", type=float, default=90.0)
    args = parser.parse_args()
    guest = Path("/tmp/cloudd-test-guest")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-guest.sh"), str(guest)], check=True, capture_output=True)
    times: list[float] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="cloudd-soak-") as tmp:
        drv = LibvirtCompute(f"qemu:///embed?root={tmp}/libvirt", vnc_range=(6650, 6699))
        end = time.monotonic() + args.minutes * 60
        cycle = 0
        while time.monotonic() < end:
            cycle += 1
            log = Path(tmp) / f"serial-{cycle}.log"
            spec = DomainSpec(f"soak{cycle}", "soak", 1, 128, (), domain_type="qemu", serial_log=str(log),
                              kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"), cmdline="console=ttyS0")
            started = time.monotonic()
            try:
                drv.define(spec)
                drv.start(spec.vm_id)
                while not (log.exists() and MARKER in log.read_text(errors="replace")):
                    if time.monotonic() - started > args.cycle_timeout:
                        raise TimeoutError(f"cycle {cycle}: no boot marker after {args.cycle_timeout:g}s")
                    time.sleep(0.1)
                drv.destroy(spec.vm_id)
                drv.undefine(spec.vm_id)
            except Exception as exc:  # report and stop: a soak stops at the first failure
                failures += 1
                print(f"cycle {cycle} FAILED: {exc}", flush=True)
                break
            times.append(time.monotonic() - started)
            log.unlink(missing_ok=True)
            if cycle % 10 == 0:
                print(f"{cycle} cycles, median {statistics.median(times):.2f}s, last {times[-1]:.2f}s", flush=True)
    ratio = (statistics.median(times[-5:]) / times[0]) if len(times) >= 5 else float("nan")
    print(f"cycles {len(times)} in {args.minutes:g} min: min {min(times):.2f}s median {statistics.median(times):.2f}s max {max(times):.2f}s" if times else "no cycle completed")
    print(f"soak_cycles={len(times)} soak_failures={failures} last_vs_first_cycle_ratio={ratio:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
