"""cloudd's rebalance planner against Ganeti's ``hbal`` on the same unbalanced clusters.

Each cluster exists twice: as an htools text file (the format ``hspace -S``/``hbal -S``
write: groups, nodes, instances, cluster tags, instance policies) for ``hbal -t FILE -S
OUT``, and as a cloudd ``Snapshot`` for ``plan_rebalance``. After balancing, the same
function (``spreads``) measures both end states from the instance-to-node assignment:

- RAM: share of the node's memory in use (node OS memory, memory htools cannot account
  for, and the memory of the instances on it) -- i.e. 1 - hbal's p_fmem;
- disk: share of the node's disk taken by the disks of the instances on it;
- vCPU: vCPUs of the instances on it per physical core (hbal's r_cpu);

each as the population standard deviation across the online nodes.

Generated clusters (default): 20 and 30 nodes of three hardware types, ~15 instances
per node of a mix of flavors, piled on a quarter of the nodes (up to 95 % of their RAM)
so the cluster starts badly unbalanced; several seeds. Every instance uses the
``sharedfile`` disk template: htools moves such instances to any node (they are
"externally mirrored": failover-to-any), whereas ``plain`` and ``file`` instances are not
movable at all and ``drbd`` ones are tied to a primary/secondary pair. The price: htools
does not count shared-storage disks against a node's disk (only ``plain`` and ``drbd``
use "local storage"), so hbal's disk term is flat and it does not balance disk here.
cloudd's model counts a VM's disks on the node it runs on (``vm_disk_gb``), so by
default its snapshot carries the disks and its planner balances them too (a different,
harder objective than hbal's); ``--cloudd-disk ignore`` gives cloudd hbal's view (disks
not on the node, disk_gb=0) for a like-for-like comparison of RAM and vCPU.

How the two are made comparable:
- capacities: node RAM minus what the node itself uses (``ram_reserve_mb=0``), disk, and
  cores x the instance policy's vcpu-ratio (htools' default 4.0; cloudd's ``cpu_ratio``
  is set to the same value, which is also the hard limit hbal enforces: --max-cpu is
  read from the cluster's policy);
- N+1: hbal's balancing only checks N+1 through memory reserved for DRBD secondaries;
  shared-storage instances have none, so hbal does not keep N+1 here and cloudd runs
  with ``keep_n_plus_one=False`` (hbal's global N+1 check is used by allocation -- hail,
  hspace -- not by hbal);
- moves: hbal with no ``-l`` limit (as many as it wants) and its default stop rule
  (min-gain 0.01 once the score is below 0.1); cloudd with ``max_moves=500`` (never
  reached) and its default ``min_gain`` and ``breadth``;
- usage: cloudd runs its ``resource`` policy (no observed usage); hbal runs with
  ``--ignore-dynu`` so it does not balance its default "1 per instance" dynamic load
  (an instance count) either (``--hbal-dynu`` keeps hbal's default);
- time: cloudd's ``plan_rebalance`` call; hbal's wall time minus that of the same run
  with ``-l 0`` (loading and saving the cluster, no balancing) -- the raw wall time is
  printed too.

With ``--text-data FILE`` the benchmark runs on an htools text file instead (e.g. one
written by ``hscan`` or ``hspace -S`` on a real cluster). There cloudd moves only the
instances hbal may move to any node (blockdev, sharedfile, rbd, ext, gluster): plain,
file and diskless ones stay, and drbd ones stay too (cloudd has no secondaries); the
spread counts each instance's disk on its primary node only. Offline nodes (and nodes of
other groups with ``--group``) are left out of the spreads and are "in maintenance" for
cloudd: hbal evacuates instances from offline nodes, cloudd's planner leaves them (cloudd
drains a node by a separate operation).

Per cluster, a table; then the totals. Aggregates are sums over the clusters: the spread
ratios are sum(cloudd spread) / sum(hbal spread), the moves and time ratios sum(cloudd) /
sum(hbal). Last line:
``balance_ratio=<RAM> moves_ratio=<moves> plan_time_ratio=<time>`` (targets: all three
<= 1.0, and the disk and vCPU ratios printed before it <= 1.0 too).

hbal comes from the Debian package ``ganeti-htools-3.0`` (binary
``/usr/lib/ganeti/3.0/usr/bin/hbal``); when it is missing and we run as root the
benchmark installs it with apt-get.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloudd.alloc.rebalance import plan_rebalance
from cloudd.alloc.snapshot import AllocSettings, Snapshot

HBAL = "/usr/lib/ganeti/3.0/usr/bin/hbal"
PACKAGE = "ganeti-htools-3.0"
SIZES = (20, 30)
SEEDS = (1, 2, 3)
PER_NODE = 15  # instances per node on average
HOT_SHARE = 0.25  # share of nodes the instances are piled on
HOT_FILL = 0.95  # how full (RAM) a hot node may get

# node hardware: cores, RAM MiB, disk GiB
NODE_TYPES = [(16, 131072, 2048), (24, 196608, 3072), (32, 262144, 4096)]
# instance flavors: vcpus, RAM MiB, disk GiB, weight
FLAVORS = [
    (1, 1024, 10, 2), (1, 2048, 20, 2), (2, 2048, 40, 2), (2, 4096, 20, 3), (2, 4096, 80, 2), (4, 8192, 40, 3),
    (4, 8192, 160, 2), (8, 16384, 100, 1), (2, 16384, 50, 1), (8, 8192, 300, 1), (4, 16384, 200, 1),
]  # on average ~6.3 GiB, 3 vCPUs and 72 GiB: 15 a node fill about half the cluster
# htools: instances of these templates may be moved to any node (externally mirrored)
MOVABLE_ANYWHERE = {"blockdev", "sharedfile", "rbd", "ext", "gluster"}
LOCAL_STORAGE = {"plain", "drbd"}  # htools counts only these against a node's disk


# --- the cluster, as htools sees it -------------------------------------------------------


@dataclass
class HNode:
    name: str
    t_mem: float  # MiB
    n_mem: int
    f_mem: int
    t_dsk: float  # MiB
    f_dsk: int
    t_cpu: float
    role: str  # N, M, Y (offline)
    group: str
    rest: list[str] = field(default_factory=list)  # spindles, tags, ... as read
    offline: bool = False
    base_mem: float = 0.0  # node OS + unaccounted memory (fixed while instances move)


@dataclass
class HInst:
    name: str
    mem: int  # MiB
    dsk: int  # MiB
    vcpus: int
    status: str
    auto_balance: str
    pnode: str
    snode: str
    template: str
    rest: list[str] = field(default_factory=list)

    @property
    def offline(self) -> bool:
        return self.status == "ADMIN_offline"

    @property
    def running(self) -> bool:
        return self.status in ("running", "ERROR_up")


@dataclass
class Cluster:
    name: str
    groups: list[str]  # raw lines
    nodes: dict[str, HNode]
    insts: dict[str, HInst]
    tags: list[str]
    policies: list[str]  # raw lines
    vcpu_ratio: float = 4.0


def _sections(text: str) -> list[list[str]]:
    """Split on single empty lines, like htools' ``sepSplit ""`` (two empty lines make an
    empty section)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline (Haskell's ``lines`` drops it)
    out: list[list[str]] = [[]]
    for line in lines:
        if line == "":
            out.append([])
        else:
            out[-1].append(line)
    return out


def parse_text(text: str, name: str = "cluster") -> Cluster:
    sections = _sections(text)
    if len(sections) not in (4, 5):
        raise SystemExit(f"{name}: {len(sections)} sections in the htools text data instead of 4 or 5")
    glines, nlines, ilines, tags = sections[:4]
    pollines = sections[4] if len(sections) == 5 else []
    nodes: dict[str, HNode] = {}
    for line in nlines:
        f = line.split("|")
        numeric = f[1:7]
        offline = f[7] == "Y" or "?" in numeric
        num = [0.0 if v == "?" else float(v) for v in numeric]
        nodes[f[0]] = HNode(f[0], num[0], int(num[1]), int(num[2]), num[3], int(num[4]), num[5], f[7], f[8], f[9:], offline)
    insts: dict[str, HInst] = {}
    for line in ilines:
        f = line.split("|")
        insts[f[0]] = HInst(f[0], int(f[1]), int(f[2]), int(f[3]), f[4], f[5], f[6], f[7], f[8], f[9:])
    cluster = Cluster(name, glines, nodes, insts, tags, pollines)
    cluster.vcpu_ratio = vcpu_ratio(cluster, None)
    for node in nodes.values():
        running = sum(i.mem for i in insts.values() if i.pnode == node.name and i.running)
        node.base_mem = max(0.0, node.t_mem - node.f_mem - running)  # n_mem + x_mem
    return cluster


def vcpu_ratio(cluster: Cluster, group: str | None) -> float:
    """The instance policy's vcpu-ratio: the group's (``group``, or the only group) if it
    has its own policy line, else the cluster's (owner ""), else htools' default 4.0.
    Policy lines: owner|std spec|min;max specs|disk templates|vcpu ratio|spindle ratio."""
    ratios = {f[0]: float(f[4]) for f in (line.split("|") for line in cluster.policies) if len(f) >= 6}
    names = [g.split("|")[0] for g in cluster.groups]
    uuids = {g.split("|")[1]: g.split("|")[0] for g in cluster.groups if "|" in g}
    if group is None and len(names) == 1:
        group = names[0]
    group = uuids.get(group or "", group)
    return ratios.get(group or "", ratios.get("", 4.0))


def write_text(cluster: Cluster, assignment: dict[str, str] | None = None) -> str:
    """The htools text format (as ``hspace -S`` writes it); ``assignment`` moves instances."""
    where = assignment or {}
    mem_on: dict[str, int] = {}
    for i in cluster.insts.values():
        node = where.get(i.name, i.pnode)
        if not i.offline:
            mem_on[node] = mem_on.get(node, 0) + i.mem
    nlines = []
    for n in cluster.nodes.values():
        f_mem = int(n.t_mem - n.base_mem - mem_on.get(n.name, 0))
        nlines.append("|".join([n.name, f"{n.t_mem:.0f}", str(n.n_mem), str(f_mem), f"{n.t_dsk:.0f}", str(n.f_dsk), f"{n.t_cpu:.0f}", n.role, n.group, *n.rest]))
    ilines = [
        "|".join([i.name, str(i.mem), str(i.dsk), str(i.vcpus), i.status, i.auto_balance, where.get(i.name, i.pnode), i.snode, i.template, *i.rest])
        for i in cluster.insts.values()
    ]
    sections = [cluster.groups, nlines, ilines, cluster.tags, cluster.policies]
    # each section as ``unlines`` (every line ends in a newline), joined by a newline: an
    # empty section (no cluster tags) gives two empty lines in a row
    return "\n".join("".join(line + "\n" for line in s) for s in sections)


def assignment_of(cluster: Cluster) -> dict[str, str]:
    return {i.name: i.pnode for i in cluster.insts.values()}


# --- generated clusters -------------------------------------------------------------------


def generate(n_nodes: int, seed: int, per_node: int = PER_NODE) -> Cluster:
    """A cluster of ``n_nodes`` with ~``per_node`` instances each, piled on a few nodes."""
    rng = random.Random(seed * 1000 + n_nodes)
    uuid = "uuid-group-default"
    nodes: dict[str, HNode] = {}
    for k in range(n_nodes):
        cores, ram, disk = rng.choice(NODE_TYPES)
        name = f"node{k + 1:03d}"
        # rest: spindles | tags | exclusive storage | free spindles | vCPUs of the node OS | cpu speed
        nodes[name] = HNode(name, ram, 0, ram, disk * 1024, disk * 1024, cores, "M" if k == 0 else "N", uuid, ["1", "", "N", "1", "0", "1.0"])
    names = list(nodes)
    hot = rng.sample(names, max(1, round(n_nodes * HOT_SHARE)))
    used = {n: [0, 0, 0] for n in names}  # vcpus, RAM MiB, disk GiB

    def room(node: str, vcpus: int, ram: int, disk: int, fill: float) -> bool:
        n = nodes[node]
        u = used[node]
        return u[1] + ram <= fill * n.t_mem and u[0] + vcpus <= 4.0 * n.t_cpu and u[2] + disk <= n.t_dsk / 1024

    insts: dict[str, HInst] = {}
    weights = [f[3] for f in FLAVORS]
    for k in range(n_nodes * per_node):
        vcpus, ram, disk, _ = rng.choices(FLAVORS, weights)[0]
        order = (rng.sample(hot, len(hot)) if rng.random() < 0.8 else []) + rng.sample(names, len(names))
        node = next((n for n in order if room(n, vcpus, ram, disk, HOT_FILL)), None)
        if node is None:
            continue  # the cluster is full: fewer instances
        u = used[node]
        u[0] += vcpus
        u[1] += ram
        u[2] += disk
        name = f"inst{k + 1:04d}"
        insts[name] = HInst(name, ram, disk * 1024, vcpus, "running", "Y", node, "", "sharedfile", ["", "1", "-", "N"])
    spec_min = "128,1,1024,1,1,1"
    spec_max = "262144,64,4194304,16,8,12"
    templates = "diskless,file,sharedfile,plain,blockdev,drbd,rbd,ext,gluster"
    policies = [f"|{spec_min}|{spec_min};{spec_max}|{templates}|4.0|32.0", f"default|{spec_min}|{spec_min};{spec_max}|{templates}|4.0|32.0"]
    cluster = Cluster(f"{n_nodes}n-s{seed}", [f"default|{uuid}|preferred||"], nodes, insts, [], policies, 4.0)
    for n in nodes.values():
        n.f_mem = int(n.t_mem - used[n.name][1])
    return cluster


# --- one measure for both -----------------------------------------------------------------


def spreads(cluster: Cluster, where: dict[str, str]) -> dict[str, float]:
    """Population standard deviation across the online nodes of RAM in use (share of the
    node's memory), disk in use (share of its disk: the instances' disks on their primary
    node) and vCPUs per physical core, for the assignment ``where`` (instance -> node)."""
    online = [n for n in cluster.nodes.values() if not n.offline]
    ram = {n.name: n.base_mem for n in online}
    disk = {n.name: 0.0 for n in online}
    vcpus = {n.name: 0.0 for n in online}
    for i in cluster.insts.values():
        node = where[i.name]
        if node not in ram:
            continue
        disk[node] += i.dsk
        if not i.offline:
            ram[node] += i.mem
            vcpus[node] += i.vcpus

    def sd(values: list[float]) -> float:
        return statistics.pstdev(values) if len(values) > 1 else 0.0

    return {
        "ram": sd([ram[n.name] / n.t_mem for n in online]),
        "disk": sd([disk[n.name] / n.t_dsk if n.t_dsk else 0.0 for n in online]),
        "vcpu": sd([vcpus[n.name] / n.t_cpu if n.t_cpu else 0.0 for n in online]),
    }


# --- cloudd -------------------------------------------------------------------------------


def cloudd_movable(cluster: Cluster) -> set[str]:
    return {i.name for i in cluster.insts.values() if i.template in MOVABLE_ANYWHERE}


def snapshot(cluster: Cluster, disk_mode: str) -> Snapshot:
    settings = AllocSettings(policy="resource", cpu_ratio=cluster.vcpu_ratio, ram_reserve_mb=0, disk_reserve_gb=0.0)
    nodes = {
        n.name: {
            "name": n.name, "roles": ["hypervisor"], "status": "up", "maintenance": n.offline,
            "inventory": {"cpus": round(n.t_cpu), "ram_mb": int(n.t_mem - n.base_mem), "disk_gb": n.t_dsk / 1024},
        }
        for n in cluster.nodes.values()
    }
    vms = []
    for i in cluster.insts.values():
        shared = i.template not in LOCAL_STORAGE
        disk_gb = 0.0 if (disk_mode == "ignore" and shared) else i.dsk / 1024
        vms.append({
            "id": i.name, "node": i.pnode, "state": "running",
            "vcpus": 0 if i.offline else i.vcpus, "ram_mb": 0 if i.offline else i.mem, "disk_gb": disk_gb,
        })
    return Snapshot.build(nodes, vms, settings)


@dataclass
class Result:
    spread: dict[str, float]
    moves: int  # planned steps
    relocated: int  # instances whose node differs at the end
    seconds: float
    wall: float = 0.0
    note: str = ""


def run_cloudd(cluster: Cluster, disk_mode: str, max_moves: int) -> Result:
    snap = snapshot(cluster, disk_mode)
    movable = cloudd_movable(cluster)
    start = time.perf_counter()
    plan = plan_rebalance(snap, max_moves=max_moves, movable=lambda d: d.vm_id in movable, keep_n_plus_one=False)
    seconds = time.perf_counter() - start
    where = assignment_of(cluster)
    for move in plan.moves:  # applied to a copy of the assignment
        where[move.vm_id] = move.target
    relocated = sum(1 for i in cluster.insts.values() if where[i.name] != i.pnode)
    note = "max_moves reached" if len(plan.moves) >= max_moves else ""
    return Result(spreads(cluster, where), len(plan.moves), relocated, seconds, seconds, note)


# --- hbal ---------------------------------------------------------------------------------


def ensure_hbal(path: str) -> str:
    if os.access(path, os.X_OK):
        return path
    if path != HBAL:
        raise SystemExit(f"hbal not found at {path}")
    if os.geteuid() != 0:
        raise SystemExit(f"hbal is missing ({HBAL}): install it with `apt-get install -y --no-install-recommends {PACKAGE}` (as root) and run again")
    print(f"hbal is missing: installing {PACKAGE} with apt-get install -y --no-install-recommends {PACKAGE}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", PACKAGE], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", PACKAGE], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not os.access(path, os.X_OK):
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
        raise SystemExit(f"could not install {PACKAGE}")
    return path


STEP = re.compile(r"^\s*\d+\.\s+\S+\s+\S+\s+=>\s+\S+\s+[0-9.]+", re.MULTILINE)


def run_hbal(hbal: str, cluster: Cluster, workdir: Path, dynu: bool, group: str | None) -> Result:
    data = workdir / f"{cluster.name}.data"
    data.write_text(write_text(cluster))
    base = [hbal, "-t", str(data)]
    if not dynu:
        base.append("--ignore-dynu")
    if group:
        base += ["-G", group]
    # loading and saving only (no balancing round): hbal's fixed cost
    start = time.perf_counter()
    subprocess.run([*base, "-l", "0", "-S", str(workdir / f"{cluster.name}.noop")], capture_output=True, text=True, check=True)
    fixed = time.perf_counter() - start
    out = workdir / cluster.name
    start = time.perf_counter()
    done = subprocess.run([*base, "-S", str(out)], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"hbal failed on {data} (exit {done.returncode})")
    balanced = Path(f"{out}.balanced")
    if not balanced.exists():  # older htools write FILE itself
        balanced = out
    after = parse_text(balanced.read_text(), cluster.name)
    where = assignment_of(after)
    missing = set(cluster.insts) - set(where)
    if missing:
        raise SystemExit(f"{balanced}: {len(missing)} instances missing from hbal's saved state")
    steps = len(STEP.findall(done.stdout))
    relocated = sum(1 for i in cluster.insts.values() if where[i.name] != i.pnode)
    note = ""
    m = re.search(r"Cluster score improved from ([0-9.]+) to ([0-9.]+)", done.stdout)
    if m:
        note = f"score {m.group(1)} -> {m.group(2)}"
    return Result(spreads(cluster, where), steps, relocated, max(wall - fixed, 1e-3), wall, note)  # 1 ms at least


# --- report -------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 1.0 if a <= 0 else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="node counts of the generated clusters (comma-separated)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of the generated clusters (comma-separated)")
    parser.add_argument("--per-node", type=int, default=PER_NODE, help="instances per node on average")
    parser.add_argument("--text-data", action="append", metavar="FILE", help="an htools text file to run on instead (repeatable)")
    parser.add_argument("--group", help="with --text-data: the node group hbal balances (-G; cloudd gets the same nodes)")
    parser.add_argument("--max-moves", type=int, default=500, help="cloudd's max_moves")
    parser.add_argument("--cloudd-disk", choices=("count", "ignore"), default="count",
                        help="count: cloudd's snapshot carries the instances' disks (cloudd's model); ignore: shared-storage disks are not on the node, as in htools")
    parser.add_argument("--hbal-dynu", action="store_true", help="let hbal balance its default dynamic load (1 per instance) too")
    parser.add_argument("--hbal", default=HBAL, help="path of the hbal binary")
    parser.add_argument("--keep", metavar="DIR", help="write the htools files here (and keep them)")
    args = parser.parse_args()

    hbal = ensure_hbal(args.hbal)
    if args.text_data:
        clusters = []
        for path in args.text_data:
            cluster = parse_text(Path(path).read_text(), Path(path).stem)
            if args.group:  # only the chosen group's nodes (and their instances) for cloudd
                uuids = {g.split("|")[1] for g in cluster.groups if args.group in g.split("|")[:2]}
                if not uuids:
                    raise SystemExit(f"{path}: no node group {args.group}")
                for n in cluster.nodes.values():
                    if n.group not in uuids:
                        n.offline = True
                cluster.vcpu_ratio = vcpu_ratio(cluster, args.group)
            elif len(cluster.groups) > 1:
                raise SystemExit(f"{path}: {len(cluster.groups)} node groups; choose one with --group (hbal balances one group at a time)")
            clusters.append(cluster)
    else:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        seeds = [int(s) for s in args.seeds.split(",") if s]
        clusters = [generate(n, seed, args.per_node) for n in sizes for seed in seeds]

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="alloc_vs_hbal."))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"hbal: {hbal} ({subprocess.run([hbal, '--version'], capture_output=True, text=True, check=False).stdout.splitlines()[0]})")
    print(f"cloudd: plan_rebalance(max_moves={args.max_moves}, keep_n_plus_one=False), policy resource, disks {args.cloudd_disk}; "
          f"hbal: -t FILE -S OUT{'' if args.hbal_dynu else ' --ignore-dynu'}, no -l limit")
    print("spreads: population std dev across online nodes of RAM share, disk share, vCPUs per core")
    totals = {"cloudd": {"ram": 0.0, "disk": 0.0, "vcpu": 0.0, "moves": 0, "relocated": 0, "seconds": 0.0, "wall": 0.0},
              "hbal": {"ram": 0.0, "disk": 0.0, "vcpu": 0.0, "moves": 0, "relocated": 0, "seconds": 0.0, "wall": 0.0}}
    per_cluster_ram: list[float] = []
    try:
        for cluster in clusters:
            before = spreads(cluster, assignment_of(cluster))
            online = [n for n in cluster.nodes.values() if not n.offline]
            on = [i for i in cluster.insts.values() if not i.offline and not cluster.nodes[i.pnode].offline]
            ram_use = sum(i.mem for i in on) / sum(n.t_mem for n in online)
            vcpu_use = sum(i.vcpus for i in on) / sum(n.t_cpu * cluster.vcpu_ratio for n in online)
            h = run_hbal(hbal, cluster, workdir, args.hbal_dynu, args.group)
            c = run_cloudd(cluster, args.cloudd_disk, args.max_moves)
            print()
            print(f"cluster {cluster.name}: {len(online)} nodes, {len(cluster.insts)} instances, RAM {ram_use:.0%} used, "
                  f"vCPUs {vcpu_use:.0%} of cores x {cluster.vcpu_ratio:g}")
            print(f"  {'':8} {'RAM sd':>8} {'disk sd':>8} {'vCPU sd':>8} {'moves':>6} {'moved':>6} {'plan s':>8} {'wall s':>8}")
            print(f"  {'before':8} {before['ram']:8.4f} {before['disk']:8.4f} {before['vcpu']:8.4f}")
            for label, r in (("hbal", h), ("cloudd", c)):
                print(f"  {label:8} {r.spread['ram']:8.4f} {r.spread['disk']:8.4f} {r.spread['vcpu']:8.4f} {r.moves:6d} {r.relocated:6d} {r.seconds:8.3f} {r.wall:8.3f}  {r.note}")
                t = totals[label]
                for k in ("ram", "disk", "vcpu"):
                    t[k] += r.spread[k]
                t["moves"] += r.moves
                t["relocated"] += r.relocated
                t["seconds"] += r.seconds
                t["wall"] += r.wall
            per_cluster_ram.append(ratio(c.spread["ram"], h.spread["ram"]))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    hb, cd = totals["hbal"], totals["cloudd"]
    print()
    print(f"totals over {len(clusters)} clusters (sums):")
    print(f"  {'':8} {'RAM sd':>8} {'disk sd':>8} {'vCPU sd':>8} {'moves':>6} {'moved':>6} {'plan s':>8} {'wall s':>8}")
    for label, t in (("hbal", hb), ("cloudd", cd)):
        print(f"  {label:8} {t['ram']:8.4f} {t['disk']:8.4f} {t['vcpu']:8.4f} {t['moves']:6d} {t['relocated']:6d} {t['seconds']:8.3f} {t['wall']:8.3f}")
    print(f"RAM spread ratio per cluster: median {statistics.median(per_cluster_ram):.3f}, worst {max(per_cluster_ram):.3f}")
    print(f"plan_time_ratio on hbal's raw wall time: {ratio(cd['seconds'], hb['wall']):.4f}")
    print(f"disk_ratio={ratio(cd['disk'], hb['disk']):.3f} vcpu_ratio={ratio(cd['vcpu'], hb['vcpu']):.3f}")
    print(f"balance_ratio={ratio(cd['ram'], hb['ram']):.3f} moves_ratio={ratio(cd['moves'], hb['moves']):.3f} "
          f"plan_time_ratio={ratio(cd['seconds'], hb['seconds']):.4f}")


if __name__ == "__main__":
    main()
