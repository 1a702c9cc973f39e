"""A network partition with real processes: three ``cloudd serve`` nodes on loopback
(libvirt's test driver); one node is cut off from the other two by nftables rules in the
host namespace, in a table of this test's own.

The isolated node must destroy its VMs (self-fence: its log line, with its wall-clock
time) before the majority re-homes its HA VMs (the ``vm.failover`` event and the VM's
``recovered.at``: wall clock of the same machine, so both sides compare). After the
partition heals, the node rejoins, drops its stale copies and does not run the re-homed VMs.

Why cgroups: a node's outgoing connections (pysyncobj connects from the higher address to
the lower one; httpx too) leave from 127.0.0.1, not from its own 127.0.0.x, so the
address alone does not tell which node sent a packet. Each node runs in a cgroup of its
own and the rules match the sending socket's cgroup plus the destination address:
packets from the isolated node to the others' addresses, and from the others to the
isolated node's address, are dropped. This test process is in none of those cgroups: it
still reaches every node's API.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.harness import CLOUDD, LocalCluster, Node, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CGROUP_FS = Path("/sys/fs/cgroup")  # nft resolves "socket cgroupv2" paths below it
SELF_FENCE_RE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ERROR cloudd\.reconcile: self-fence: no lease renewal for "
    r"(?P<stale>[\d.]+)s \(fence_after [\d.]+s\): destroyed (?P<count>\d+) VMs \((?P<ids>[^)]*)\)$",
    re.MULTILINE,
)
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"


def cgroup2_root() -> Path | None:
    """Where cgroup v2 is mounted, if at or below /sys/fs/cgroup (nft needs that)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            mount = Path(parts[1])
            if mount == CGROUP_FS or CGROUP_FS in mount.parents:
                return mount
    return None


class Partition:
    """This test's nftables table and cgroups; ``close`` removes both."""

    def __init__(self, cg_mount: Path) -> None:
        self.name = f"cloudd_partition_{secrets.token_hex(4)}"
        self.cg_dir = cg_mount / self.name
        self.cg_rel = self.cg_dir.relative_to(CGROUP_FS)  # as nft wants it
        self.cg_dir.mkdir()
        self.table = False

    def cgroup(self, node: str) -> Path:
        path = self.cg_dir / node
        path.mkdir(exist_ok=True)
        return path

    def isolate(self, victim: Node, others: list[Node]) -> None:
        other_addrs = ", ".join(n.host for n in others)
        rules = [f'socket cgroupv2 level 2 "{self.cg_rel / victim.name}" ip daddr {{ {other_addrs} }} counter drop']
        rules += [f'socket cgroupv2 level 2 "{self.cg_rel / n.name}" ip daddr {victim.host} counter drop' for n in others]
        body = "\n".join(f"    {rule}" for rule in rules)
        script = f"table inet {self.name} {{\n  chain out {{\n    type filter hook output priority -10; policy accept;\n{body}\n  }}\n}}\n"
        self.table = True  # even a half-made table is deleted
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)

    def dropped(self) -> str:
        return subprocess.run(["nft", "list", "table", "inet", self.name], text=True, capture_output=True, check=False).stdout

    def heal(self) -> None:
        if self.table:
            subprocess.run(["nft", "delete", "table", "inet", self.name], capture_output=True, check=False)
            self.table = False

    def close(self) -> None:
        try:
            self.heal()
        finally:
            for path in sorted(self.cg_dir.glob("*"), reverse=True):
                if path.is_dir():
                    path.rmdir()
            self.cg_dir.rmdir()


class PartitionCluster(LocalCluster):
    """LocalCluster whose every ``cloudd serve`` runs in the partition's cgroup of its node."""

    def __init__(self, root: Path, partition: Partition, first_host: int) -> None:
        super().__init__(root, first_host=first_host)
        self.partition = partition

    def start(self, name: str) -> Node:
        node = self.nodes[name]
        assert node.proc is None or node.proc.poll() is not None, f"{name} already runs"
        cgroup = self.partition.cgroup(name)
        with open(node.log_path, "ab") as log:
            # the shell joins the cgroup, then becomes cloudd (same pid): every socket cloudd makes is in it
            node.proc = subprocess.Popen(
                ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), CLOUDD, "serve", "--data-dir", str(node.data_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        return node


@pytest.fixture
def partition() -> Iterator[Partition]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft")
    mount = cgroup2_root()
    if mount is None:
        pytest.skip("needs cgroup v2 mounted at or below /sys/fs/cgroup")
    p = Partition(mount)
    try:
        yield p
    finally:
        p.close()


def vms_by_name(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in api.get("/api/v1/vms", params={"all": "true", "limit": 1000}).json()["items"]}


def log_time(text: str) -> float:
    return datetime.strptime(text, LOG_TIME).timestamp()  # logging's asctime: local time, like strptime's


def self_fences(text: str) -> list[tuple[float, float, list[str]]]:
    """(wall time, stale seconds, destroyed VM ids) of each self-fence line."""
    return [(log_time(m["at"]), float(m["stale"]), [i for i in m["ids"].split(", ") if i]) for m in SELF_FENCE_RE.finditer(text)]


@pytest.mark.parametrize("isolated", ["follower", "leader"])
def test_an_isolated_node_fences_its_vms_before_the_majority_restarts_them(partition: Partition, tmp_path: Path, isolated: str) -> None:
    cluster = PartitionCluster(tmp_path, partition, first_host=185 if isolated == "follower" else 191)
    try:
        run_scenario(cluster, partition, isolated)
    finally:
        try:
            partition.heal()
        finally:
            cluster.close()


def run_scenario(cluster: PartitionCluster, partition: Partition, isolated: str) -> None:
    timings = cluster.timings
    cluster.init(3)
    admin = cluster.api("node1")
    assert admin.patch("/api/v1/cluster/settings", json={"shared_vm_storage": True}).status_code == 200
    assert admin.post("/api/v1/flavors", json={"name": "ha", "vcpus": 1, "ram_mb": 64, "disk_gb": 1}).status_code == 201

    def create(i: int) -> None:
        reply = admin.post("/api/v1/vms", json={"name": f"ha{i}", "flavor": "ha", "ha": True})
        assert reply.status_code == 202, reply.text
        wait_for(lambda: vms_by_name(admin)[f"ha{i}"]["state"] == "running", timeout=60, what=f"ha{i} running")

    for i in range(3):
        create(i)
    leader = cluster.wait_leader()
    if isolated == "leader":
        victim = leader
    else:
        victim = next(n for n in sorted(cluster.nodes) if n != leader)
    for i in range(3, 8):  # the victim needs an HA VM of its own
        if any(v["node"] == victim for v in vms_by_name(admin).values()):
            break
        create(i)
    others = [n for n in sorted(cluster.nodes) if n != victim]
    survivor = cluster.api(others[0])
    cluster.wait_connected()
    before = vms_by_name(survivor)
    moving = {v["id"]: name for name, v in before.items() if v["node"] == victim}
    assert moving, f"no VM on {victim}: {before}"
    victim_node = cluster.nodes[victim]
    log_offset = len(victim_node.log_text())

    partition.isolate(victim_node, [cluster.nodes[n] for n in others])
    cut_at = time.time()

    # the majority re-homes the victim's HA VMs
    def rehomed() -> dict[str, dict[str, Any]] | None:
        vms = vms_by_name(survivor)
        done = all(vms[name]["node"] != victim and vms[name]["state"] == "running" for name in moving.values())
        return vms if done else None

    after = wait_for(rehomed, timeout=60, interval=0.2, what=f"{sorted(moving.values())} running on the majority side")
    rehomed_at = time.time()
    events = {e["target"]: e for e in survivor.get("/api/v1/events", params={"op": "vm.failover", "limit": 100}).json()["items"]}

    # the isolated node's own account: it destroyed them, and when
    fences = wait_for(lambda: self_fences(victim_node.log_text()[log_offset:]), timeout=10, what=f"{victim}'s self-fence line")
    fenced_at: dict[str, float] = {}
    for at, stale, ids in fences:
        assert stale >= timings["fence_after"]
        for vm_id in ids:
            fenced_at.setdefault(vm_id, at)
    lines = [f"partition at 0 ({victim}, the {isolated})"]
    for vm_id, name in sorted(moving.items()):
        vm = after[name]
        assert vm["recovered"]["from"] == victim and vm["recovered"]["to"] == vm["node"] != victim
        assert vm_id in events, f"no vm.failover event for {name}"
        failover_at = min(vm["recovered"]["at"], events[vm_id]["ts"])
        lines.append(f"{name}: self-fenced at {fenced_at.get(vm_id, float('nan')) - cut_at:+.2f} s, vm.failover at {events[vm_id]['ts'] - cut_at:+.2f} s (recovered.at {vm['recovered']['at'] - cut_at:+.2f} s) onto {vm['node']}")
        assert vm_id in fenced_at, f"{victim} never self-fenced {name} ({vm_id}): {fences}\n" + "\n".join(lines)
        assert fenced_at[vm_id] < failover_at, f"{name} re-homed BEFORE {victim} destroyed it:\n" + "\n".join(lines)
        # the leader waits fence_after + failover_margin after the last renewal it saw (at most a heartbeat before the cut)
        assert failover_at - cut_at >= timings["fence_after"] + timings["failover_margin"] - timings["heartbeat_interval"] - 0.5, "\n".join(lines)
    print("\n".join(lines) + f"\nall running elsewhere (API) at {rehomed_at - cut_at:+.2f} s")
    print(partition.dropped())

    # heal: the node rejoins, removes its stale copies and runs none of them
    healed_offset = len(victim_node.log_text())
    partition.heal()

    def logged(text: str) -> bool:
        return text in victim_node.log_text()[healed_offset:]

    wait_for(lambda: logged("lease renewed again: VMs here are managed again"), timeout=60, what=f"{victim} renewing its lease again")
    for vm_id, name in moving.items():
        line = f"VM {vm_id} runs on {after[name]['node']} now: removing the stale copy here"
        wait_for(lambda: logged(line), timeout=30, what=f"{victim} removing its stale copy of {name}")  # noqa: B023 - called at once
    cluster.wait_connected()
    members = {m["name"]: m for m in cluster.status(victim)["members"]}
    assert members[victim]["connected"] and all(members[n]["connected"] for n in others)
    wait_for(lambda: {m["name"]: m["status"] for m in cluster.status(others[0])["members"]}[victim] == "up", timeout=30, what=f"{victim} up again")
    time.sleep(3.0)  # a few reconcile passes of the returned node
    final = vms_by_name(cluster.api(victim))
    healed_log = victim_node.log_text()[healed_offset:]
    for vm_id, name in moving.items():
        assert final[name]["node"] == after[name]["node"] != victim and final[name]["state"] == "running", final[name]
        assert final[name]["observed"]["ts"] and final[name]["observed"]["power"] == "running"
        assert f"VM {name}: found off behind cloudd's back" not in healed_log, healed_log
        assert f"VM {name}:" not in healed_log, f"{victim} acted on {name} after the heal:\n{healed_log}"
    digests = cluster.wait_same_digest(list(cluster.nodes))
    assert len({d["digest"] for d in digests}) == 1, f"the replicas diverged after the heal: {digests}"

    # timeliness: the node destroys its VMs once its lease is fence_after old (docs/operations.md,
    # "Failover"), keeping most of failover_margin between its fence and the leader's failover;
    # a self-fence that comes a whole margin late only wins the race by the leader's polling delay
    first_stale = fences[0][1]
    assert first_stale <= timings["fence_after"] + timings["failover_margin"] / 2, (
        f"{victim} self-fenced {first_stale:.1f} s after its last renewal (fence_after {timings['fence_after']:g} s, "
        f"failover_margin {timings['failover_margin']:g} s): the safety margin to the failover was eaten up\n" + "\n".join(lines)
    )
