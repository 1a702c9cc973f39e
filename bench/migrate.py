"""Live migration of an idle 128 MiB TCG guest through a real cloudd cluster, against a
bare libvirt call between the same two libvirtds, in the same run.

The cluster (bench/_migrate_cluster.py): three ``cloudd serve`` processes with cloudd's
default timings; node1 leads and holds no VM, node2 and node3 each drive a private
libvirtd (tests/e2e/libvirtd.py: own host UUID, VNC and migration ports), one VM
directory both see (``shared_vm_storage``, ``migration_unsafe``).

- **cloudd**: a VM created through the API (the ``tiny`` flavor: 1 vCPU, 128 MiB; the
  test guest's kernel and initrd). One run is ``POST /api/v1/vms/{id}/migrate
  {"node": <target>, "mode": "live"}`` to node1, timed from the request until its task
  (``GET /api/v1/tasks/{id}``, polled every 20 ms) has succeeded: the Raft commits, the
  target's preparation, the source's libvirt migration and its landing report. The
  downtime is the one the source measured, from the task (``detail.downtime_ms``).
- **raw** (the baseline): ``dom.migrateToURI3`` on an open connection to the same
  libvirtds, with the flags and parameters cloudd's driver uses (peer to peer, live,
  persistent on the target, undefined here, ``tcp://127.0.0.1``, unsafe, 300 ms max
  downtime), of an identical guest defined straight in libvirt outside cloudd (its own
  name ``bench-raw``; the cloudd VM's domain XML with its own files): cloudd's agents
  never see it, so moving it cannot disturb the cloudd VM's state. Its downtime comes
  from the target's completed job.

Each round makes four hops: cloudd A->B, raw B->A, raw A->B, cloudd B->A (the raw guest
starts on B), so both modes go both ways in every round and each guest ends the round
where it began. After every hop (untimed) the guest must print its heartbeat with the
same RAM-only token and a larger uptime (it moved live, never rebooted), its domain must
be defined and running on the target only, and for cloudd the API must show the VM
running on the target with no migration and no leftovers; after each raw pair the API
must still show the cloudd VM running where it was.

For every cloudd run it also prints where the time went: when the task showed the target
prepared ("moving its memory") and the source's start recorded ("starting"), the libvirt
call as the source logged it (start, duration) and libvirt's own job time, and the rest
until the task succeeded.

Last line: ``live_migrate_s=<median cloudd> overhead_ratio=<cloudd median / raw median>
downtime_ms=<median cloudd downtime>``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import libvirt  # noqa: E402

from bench._migrate_cluster import MIGRATE_URI, BenchCluster  # noqa: E402
from cloudd.ops.compute import LiveOptions, MigrationTarget  # noqa: E402
from cloudd.ops.libvirt_compute import migration_call  # noqa: E402
from tests.e2e.libvirtd import libvirtd_missing  # noqa: E402
from tests.e2e.test_live_migration import heartbeats  # noqa: E402

GUEST_DIR = Path("/tmp/cloudd-test-guest")  # what the e2e tests' guest fixture builds
RAW = "bench-raw"  # the baseline's domain: not cloudd-*, so no cloudd agent looks at it
POLL_S = 0.02
MAX_DOWNTIME_MS = 300  # what cloudd asks for (the cluster's default migration_max_downtime_ms)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ cloudd\.migration_agent: VM (\S+): (.*)$")


@dataclass
class Guest:
    serial: Path
    token: str = ""
    last_uptime: float = 0.0


@dataclass
class Hop:
    mode: str
    direction: str
    seconds: float
    downtime_ms: float | None
    job_ms: float | None = None  # libvirt's own time for the migration job (the target's completed job)
    timeline: list[tuple[float, str]] = field(default_factory=list)  # cloudd: (s after the request, what)
    # cloudd: the source's libvirt call as its log shows it (s after the request): from
    # "live migration to" (the call is handed to a thread) to "live-migrated" (its result
    # seen by the source's migration pass)
    call: tuple[float, float] | None = None


@dataclass
class Bench:
    cluster: BenchCluster
    conns: dict[str, libvirt.virConnect]
    api: httpx.Client
    vm_id: str
    vm_name: str
    guests: dict[str, Guest]  # "cloudd", "raw"
    hops: list[Hop] = field(default_factory=list)

    def domain(self, mode: str) -> str:
        return f"cloudd-{self.vm_id}" if mode == "cloudd" else RAW


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def completed_job(conn: libvirt.virConnect, domain: str) -> tuple[float | None, float | None]:
    """(downtime ms, job time ms) of the migration that just ended on the target."""
    stats = conn.lookupByName(domain).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return (float(stats["downtime"]) if "downtime" in stats else None, float(stats["time_elapsed"]) if "time_elapsed" in stats else None)


# --- the two ways to move a guest --------------------------------------------------------


def cloudd_migrate(bench: Bench, source: str, target: str) -> Hop:
    """One live migration through the API, timed until its task has succeeded."""
    seen: list[tuple[float, str]] = []
    wall = time.time()
    started = time.perf_counter()
    reply = bench.api.post(f"/api/v1/vms/{bench.vm_id}/migrate", json={"node": target, "mode": "live"})
    if reply.status_code != 202:
        raise RuntimeError(f"migrate {source}->{target} refused: {reply.status_code} {reply.text}")
    task_id = reply.json()["task"]["id"]
    seen.append((time.perf_counter() - started, "202 accepted"))
    while True:
        task = bench.api.get(f"/api/v1/tasks/{task_id}").json()
        now = time.perf_counter() - started
        what = f"{task['state']} {task['progress']}%: {task['message']}"
        if seen[-1][1] != what:
            seen.append((now, what))
        if task["state"] != "running":
            break
        if now > 300:
            raise RuntimeError(f"the migration {source}->{target} did not end in 300 s: {task}")
        time.sleep(POLL_S)
    took = now
    if task["state"] != "succeeded":
        raise RuntimeError(f"the migration {source}->{target} {task['state']}: {task['message']}")
    downtime = task["detail"].get("downtime_ms")
    if downtime is None:
        found = re.search(r"downtime (\d+(?:\.\d+)?) ms", task["message"])
        downtime = float(found.group(1)) if found else None
    _, job_ms = completed_job(bench.conns[target], bench.domain("cloudd"))
    logged = source_log(bench, source, wall)
    began = [at for at, what in logged if ": live migration to " in what]
    ended = [at for at, what in logged if ": live-migrated to " in what]
    call = (began[0], ended[-1]) if began and ended else None
    return Hop("cloudd", f"{source}->{target}", took, downtime, job_ms, sorted(seen + logged), call)


def source_log(bench: Bench, source: str, since_wall: float) -> list[tuple[float, str]]:
    """The source's log lines about this VM's live migration since the request, placed in
    the request's timeline (the log has millisecond timestamps)."""
    out = []
    for line in bench.cluster.logs(source).splitlines():
        found = LOG_LINE.match(line)
        if not found or found.group(2) != bench.vm_name:
            continue
        at = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at < since_wall - 0.001:
            continue
        out.append((at - since_wall, f"{source} log: {found.group(3)[:110]}"))
    return out


def raw_migrate(bench: Bench, source: str, target: str) -> Hop:
    """The baseline: one libvirt call with cloudd's flags and parameters (the max downtime
    set beforehand, like cloudd's driver; the downtime read afterwards, untimed)."""
    dom = bench.conns[source].lookupByName(RAW)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)
    target_uri = bench.cluster.daemons[target].uri
    params, flags = migration_call(MigrationTarget(target, target_uri, MIGRATE_URI), LiveOptions(max_downtime_ms=MAX_DOWNTIME_MS, unsafe=True), xml)
    dom.migrateSetMaxDowntime(MAX_DOWNTIME_MS)
    started = time.perf_counter()
    dom.migrateToURI3(target_uri, params, flags)
    took = time.perf_counter() - started
    downtime, job_ms = completed_job(bench.conns[target], RAW)
    return Hop("raw", f"{source}->{target}", took, downtime, job_ms)


# --- untimed checks --------------------------------------------------------------------------


def domains(bench: Bench, node: str) -> dict[str, bool]:
    """The domains of a node's libvirtd: name -> running."""
    return {dom.name(): dom.isActive() == 1 for dom in bench.conns[node].listAllDomains()}


def landed(bench: Bench, mode: str, node: str) -> None:
    """The guest beats on ``node`` with its token and a larger uptime; its domain is there,
    running and persistent, and nowhere else."""
    guest = bench.guests[mode]

    def beating() -> bool:
        beats = heartbeats(guest.serial)
        return bool(beats) and beats[-1][0] > guest.last_uptime

    wait_for(beating, 30, f"a heartbeat of the {mode} guest on {node}")
    beats = heartbeats(guest.serial)
    if {token for _, token in beats} != {guest.token}:
        raise RuntimeError(f"the {mode} guest on {node} has other memory: {beats[-3:]} (token {guest.token})")
    if "CLOUDD-GUEST-BOOTED" in guest.serial.read_text(errors="replace"):
        raise RuntimeError(f"the {mode} guest booted on {node}")
    guest.last_uptime = beats[-1][0]
    name = bench.domain(mode)
    where = {n: domains(bench, n).get(name) for n in bench.conns}
    if where != {n: (True if n == node else None) for n in bench.conns}:
        raise RuntimeError(f"the {mode} guest's domain is not (only) running on {node}: {where}")
    if not bench.conns[node].lookupByName(name).isPersistent():
        raise RuntimeError(f"the {mode} guest's domain is not persistent on {node}")


def settled(bench: Bench, node: str) -> None:
    """The API shows the cloudd VM running on ``node``, no migration, no leftovers."""
    def ok() -> dict[str, Any] | None:
        vm = bench.api.get(f"/api/v1/vms/{bench.vm_id}").json()
        return vm if vm["state"] == "running" and vm["node"] == node and not vm.get("migration") and not vm.get("leftovers") else None

    try:
        wait_for(ok, 60, f"the VM settled on {node}")
    except RuntimeError:
        raise RuntimeError(f"the VM is not settled on {node}: {bench.api.get(f'/api/v1/vms/{bench.vm_id}').json()}") from None


# --- setup -------------------------------------------------------------------------------------


def define_raw(cluster: BenchCluster, source: libvirt.virConnect, conn: libvirt.virConnect, vm_id: str) -> Path:
    """The baseline's guest, defined and started on ``conn``: the cloudd VM's domain (read
    from ``source``: same kernel, initrd, 128 MiB, CPU model, devices) under another name,
    with its own files in the shared VM directory. Returns its serial log."""
    cloudd_dir, raw_dir = cluster.vm_dir / vm_id, cluster.vm_dir / RAW
    raw_dir.mkdir()
    xml = source.lookupByName(f"cloudd-{vm_id}").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    root = ET.fromstring(xml.replace(f"{cloudd_dir}/", f"{raw_dir}/"))
    root.find("name").text = RAW  # type: ignore[union-attr]
    for tag in ("uuid", "title", "metadata"):
        for child in root.findall(tag):
            root.remove(child)
    for name in ("disk.qcow2", "seed.iso"):
        if (cloudd_dir / name).exists():
            shutil.copyfile(cloudd_dir / name, raw_dir / name)  # the cloudd guest never writes its disk (initramfs)
    dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
    dom.create()
    return raw_dir / "serial.log"


def first_beat(guest: Guest, what: str) -> None:
    beats = wait_for(lambda: heartbeats(guest.serial), 120, f"the {what} guest's first heartbeat", interval=0.3)
    guest.token, guest.last_uptime = beats[0][1], beats[-1][0]


def run(cluster: BenchCluster, rounds: int) -> Bench:
    vm_id, a = cluster.create_vm("bench-mig")
    b = next(n for n in cluster.daemons if n != a)
    conns = {n: libvirt.open(d.uri) for n, d in cluster.daemons.items()}
    api = cluster.api()
    try:
        guests = {"cloudd": Guest(cluster.vm_dir / vm_id / "serial.log")}
        first_beat(guests["cloudd"], "cloudd")
        guests["raw"] = Guest(define_raw(cluster, conns[a], conns[b], vm_id))  # on B: it starts each round there
        first_beat(guests["raw"], "raw")
        bench = Bench(cluster, conns, api, vm_id, "bench-mig", guests)
        settled(bench, a)
        time.sleep(3)  # idle: past the boot
        print(f"cloudd VM {vm_id} on {a} (A), raw guest {RAW} on {b} (B); {rounds} rounds", flush=True)
        modes: dict[str, Callable[[Bench, str, str], Hop]] = {"cloudd": cloudd_migrate, "raw": raw_migrate}
        for round_ in range(rounds):
            for mode, source, target in (("cloudd", a, b), ("raw", b, a), ("raw", a, b), ("cloudd", b, a)):
                hop = modes[mode](bench, source, target)
                landed(bench, mode, target)
                settled(bench, target if mode == "cloudd" else b)  # after a raw move: still where cloudd put it
                bench.hops.append(hop)
                shown = f"{hop.downtime_ms:.0f} ms" if hop.downtime_ms is not None else "?"
                job = f"{hop.job_ms / 1000:.3f} s" if hop.job_ms is not None else "?"
                print(f"round {round_ + 1} {mode:6} {hop.direction}: {hop.seconds:.3f} s, downtime {shown}, libvirt job {job}", flush=True)
                for at, what in hop.timeline:
                    print(f"    {at:7.3f} s  {what}", flush=True)
        return bench
    finally:
        api.close()
        for conn in conns.values():
            conn.close()


def summary(bench: Bench) -> None:
    def times(mode: str, direction: str | None = None) -> list[float]:
        return [h.seconds for h in bench.hops if h.mode == mode and direction in (None, h.direction)]

    directions = sorted({h.direction for h in bench.hops})
    for mode in ("cloudd", "raw"):
        parts = ", ".join(f"{d} {statistics.median(times(mode, d)):.3f} s" for d in directions)
        downtimes = [h.downtime_ms for h in bench.hops if h.mode == mode and h.downtime_ms is not None]
        jobs = [h.job_ms for h in bench.hops if h.mode == mode and h.job_ms is not None]
        print(
            f"{mode}: runs {', '.join(f'{t:.3f}' for t in times(mode))} s; median {statistics.median(times(mode)):.3f} s ({parts}); "
            f"downtime median {statistics.median(downtimes):.0f} ms, max {max(downtimes):.0f} ms; libvirt job median {statistics.median(jobs) / 1000:.3f} s",
            flush=True,
        )
    cloudd_hops = [h for h in bench.hops if h.mode == "cloudd"]
    calls = [(h.seconds, h.call) for h in cloudd_hops if h.call is not None]
    if calls:
        before = [c[0] for _, c in calls]
        inside = [c[1] - c[0] for _, c in calls]
        after = [took - c[1] for took, c in calls]
        print(
            "cloudd: where the time went (medians; the source's log lines, ms resolution): request -> libvirt call handed to a thread "
            f"{statistics.median(before):.3f} s (max {max(before):.3f}); the call until the source's pass saw its result {statistics.median(inside):.3f} s "
            f"(max {max(inside):.3f}; raw call median {statistics.median(times('raw')):.3f}); -> task succeeded, seen by the client {statistics.median(after):.3f} s (max {max(after):.3f})",
            flush=True,
        )
    cloudd, baseline = statistics.median(times("cloudd")), statistics.median(times("raw"))
    downtime = statistics.median(h.downtime_ms for h in cloudd_hops if h.downtime_ms is not None)
    print(f"live_migrate_s={cloudd:.3f} overhead_ratio={cloudd / baseline:.2f} downtime_ms={downtime:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="each round: both modes, both ways (default 5)")
    parser.add_argument("--keep-logs", type=Path, help="copy the nodes' logs here before cleaning up")
    args = parser.parse_args()
    reason = libvirtd_missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    subprocess.run(["bash", str(ROOT / "scripts" / "build-guest.sh"), str(GUEST_DIR)], check=True, capture_output=True, timeout=300)
    cluster = BenchCluster()
    try:
        cluster.start(GUEST_DIR)
        bench = run(cluster, args.rounds)
    except BaseException:
        for name in cluster.nodes.nodes:
            print(f"----- {name} (last lines) -----\n{cluster.logs(name)[-3000:]}", file=sys.stderr)
        raise
    finally:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for name, node in cluster.nodes.nodes.items():
                if node.log_path.exists():
                    shutil.copyfile(node.log_path, args.keep_logs / f"{name}.log")
        cluster.close()
    summary(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
