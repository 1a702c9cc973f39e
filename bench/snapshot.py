"""Cost of one snapshot of a 100k-VM-sized state: cloudd's orjson writer vs pysyncobj's default.

pysyncobj's default compaction pickles the whole object through gzip in a forked child on
every node every 5,000 entries; cloudd writes one orjson document in the tick thread,
rarely. The state here is synthetic: 100,000 VM-shaped objects of ~25 fields (the real VM
model arrives with the compute issue) plus 1,000 nodes.

Last line: ``snapshot_write_ratio=<cloudd/pickle+gzip>`` (lower is better) and the
absolute times; the write blocks the tick thread, so it must stay well under the election
timeout (250 ms) or happen rarely enough that a follower's brief lag does not matter.
"""

from __future__ import annotations

import gzip
import pickle
import sys
import tempfile
import time
from pathlib import Path

from pysyncobj.node import TCPNode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudd.model.state import State  # noqa: E402
from cloudd.raft import snapshot  # noqa: E402


def synthetic_state(vms: int = 100_000, nodes: int = 1_000) -> State:
    state = State()
    state.cluster = {"id": "bench", "name": "bench", "max_voters": 3, "created_at": 1.0}
    for i in range(nodes):
        state.nodes[f"hv{i}"] = {"name": f"hv{i}", "raft_addr": None, "api_addr": f"10.0.{i // 250}.{i % 250}:8400", "membership": "replica",
                                 "roles": ["hypervisor"], "inventory": {"cpus": 64, "ram_mb": 262144, "disk_gb": 4000.0, "facts": {}},
                                 "maintenance": False, "status": "up", "status_since": 1.0, "lease_seq": 12345, "last_heartbeat": 2.0,
                                 "admitted_at": 1.0, "registered_at": 1.0, "usage": {"load1": 1.5}}
    vm_table: dict[str, dict[str, object]] = {}
    for i in range(vms):
        vm_table[f"vm-{i:06d}"] = {
            "id": f"vm-{i:06d}", "name": f"web-{i}", "owner": f"user{i % 500}", "flavor": "m1.small", "vcpus": 2, "ram_mb": 2048,
            "image": "debian-12", "disks": [{"id": f"d{i}", "size_gb": 20, "pool": "ssd"}], "nics": [{"mac": "52:54:00:00:00:01", "network": "net1", "ip": "10.1.2.3"}],
            "iso": None, "ha": True, "ha_priority": 5, "desired_power": "running", "node": f"hv{i % nodes}", "state": "running",
            "observed": {"power": "running", "cpu_pct": 12.5, "ram_used_mb": 1500}, "vnc": {"host": "10.0.0.1", "port": 5900 + i % 1000},
            "created_at": 1.0, "updated_at": 2.0, "task": None, "error": None, "tags": ["prod"], "pool": "default",
        }
    state.users = {"vms": vm_table}  # stands in for the future VM table
    return state


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    state = synthetic_state()
    meta = ((b"x", 10, 1), (b"y", 9, 1), {TCPNode("127.0.0.1:1")})
    with tempfile.TemporaryDirectory() as tmp:
        ours = Path(tmp) / "ours"
        theirs = Path(tmp) / "theirs"

        def write_pickle() -> None:
            with open(theirs, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
                pickle.dump((state.to_dict(), *meta), g)

        ours_s = min(timed(lambda: snapshot.write(str(ours), state, meta)) for _ in range(3))
        theirs_s = min(timed(write_pickle) for _ in range(3))
        load_s = min(timed(lambda: snapshot.read(str(ours), lambda s: None)) for _ in range(3))
        print(f"state: {ours.stat().st_size / 2**20:.1f} MiB as orjson, {theirs.stat().st_size / 2**20:.1f} MiB as pickle+gzip")
        print(f"write: cloudd orjson {ours_s * 1000:.0f} ms, pysyncobj default pickle+gzip {theirs_s * 1000:.0f} ms; load {load_s * 1000:.0f} ms")
        print(f"snapshot_write_ratio={ours_s / theirs_s:.2f} cloudd_write_ms={ours_s * 1000:.0f}")


if __name__ == "__main__":
    main()
