"""Time from asking for a VM to its guest's boot marker: cloudd vs raw libvirt.

cloudd: ``POST /api/v1/vms`` to a real cloudd node (embedded libvirt, qemu TCG): the
command commits, the leader places the VM, the agent creates its disk, defines and
starts it. Baseline in the same run: defining and starting the same kind of domain
directly through libvirt-python (its own embedded libvirt). Both end when the guest
prints its boot marker on the serial console. Runs alternate, 5 each by default.

Last line: ``provision_overhead_ratio=<cloudd median / raw median>``. Target: <= 1.25.
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

from cloudd.ops.compute import DiskSpec, DomainSpec  # noqa: E402
from cloudd.ops.libvirt_compute import LibvirtCompute  # noqa: E402
from cloudd.ops.local_disk import LocalDisks  # noqa: E402
from tests.cluster.harness import LocalCluster  # noqa: E402

MARKER = "CLOUDD-GUEST-BOOTED"


def wait_marker(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and MARKER in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no boot marker in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    guest = Path("/tmp/cloudd-test-guest")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-guest.sh"), str(guest)], check=True, capture_output=True)
    raw_times: list[float] = []
    cloudd_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cloudd-bench-") as tmp:
        tmp_path = Path(tmp)
        raw = LibvirtCompute(f"qemu:///embed?root={tmp_path / 'raw-libvirt'}", vnc_range=(6700, 6749))
        disks = LocalDisks()
        cluster = LocalCluster(tmp_path / "cluster", first_host=121, compute=["--compute-uri", "embedded", "--vnc-ports", "6750-6799"],
                               timings={"heartbeat_interval": 2.0, "suspect_after": 6.0, "down_after": 15.0, "manager_interval": 0.25})
        try:
            cluster.init(1, max_voters=1)
            # the agent's reconcile loop runs every 2 s by default; the bench measures that default
            with cluster.api("node1") as admin:
                admin.post("/api/v1/flavors", json={"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).raise_for_status()
                admin.post("/api/v1/images", json={"name": "g", "path": str(guest), "format": "kernel", "size_gb": 1}).raise_for_status()
                for run in range(args.runs):
                    vm_dir = tmp_path / "raw" / f"r{run}"
                    started = time.perf_counter()
                    disks.ensure(vm_dir / "disk.qcow2", 1)
                    spec = DomainSpec(f"raw{run}", "raw", 1, 128, (DiskSpec(str(vm_dir / "disk.qcow2")),), domain_type="qemu",
                                      serial_log=str(vm_dir / "serial.log"), kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"), cmdline="console=ttyS0")
                    raw.define(spec)
                    raw.start(spec.vm_id)
                    wait_marker(vm_dir / "serial.log")
                    raw_times.append(time.perf_counter() - started)
                    raw.undefine(spec.vm_id)

                    started = time.perf_counter()
                    reply = admin.post("/api/v1/vms", json={"name": f"bench{run}", "flavor": "tiny", "image": "g"})
                    reply.raise_for_status()
                    vm_id = reply.json()["id"]
                    wait_marker(cluster.nodes["node1"].data_dir / "vms" / vm_id / "serial.log")
                    cloudd_times.append(time.perf_counter() - started)
                    admin.delete(f"/api/v1/vms/{vm_id}").raise_for_status()
                    while admin.get(f"/api/v1/vms/{vm_id}").status_code != 404:
                        time.sleep(0.2)
                    print(f"run {run + 1}: raw libvirt {raw_times[-1]:.2f}s, cloudd {cloudd_times[-1]:.2f}s", flush=True)
        finally:
            cluster.close()
    raw_median, cloudd_median = statistics.median(raw_times), statistics.median(cloudd_times)
    print(f"raw libvirt: median {raw_median:.2f}s (min {min(raw_times):.2f}s); cloudd: median {cloudd_median:.2f}s (min {min(cloudd_times):.2f}s)")
    print(f"provision_overhead_ratio={cloudd_median / raw_median:.2f}")


if __name__ == "__main__":
    main()
