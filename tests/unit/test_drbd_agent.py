"""The storage agents of a DRBD pool's two nodes, each driving a simulated host (LVM and
drbdadm answered by ``PairedHosts``, which keeps both sides' resources and their link):
the replicated volume is made on both sides, Primary where the state says, exported only
there; when the primary's node is lost the leader promotes the secondary, which becomes
Primary without ``--force`` and serves the VM's node; the old primary steps down and gives
up its data when it comes back; deleting removes both copies."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudd.env import volume_links_of
from cloudd.manager import Manager
from cloudd.ops.drbd_pool import ReplicatedVolumes, metadata_bytes
from cloudd.ops.fake_storage import FakeExports
from cloudd.ops.storage import StorageError, node_initiator, volume_target
from cloudd.storage_agent import StorageReconciler
from tests.factories import Replica, admit
from tests.fake_env import FakeEnv
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm
from tests.unit.test_failover import advance
from tests.unit.test_replication import T

GIB = 1 << 30
EXTENT = 4 << 20


@dataclass
class Side:
    alive: bool = True
    lvs: dict[str, int] = field(default_factory=dict)
    res: dict[str, dict[str, str | bool]] = field(default_factory=dict)  # name -> role, disk, up
    calls: list[str] = field(default_factory=list)


class PairedHosts:
    """Two storage hosts whose DRBD resources see each other while both are up."""

    def __init__(self) -> None:
        self.sides = {"s1": Side(), "s2": Side()}
        self.split: set[str] = set()  # resources whose sides diverged (both were Primary)

    def runner(self, name: str):  # type: ignore[no-untyped-def]
        def run(args: list[str]) -> str:
            side = self.sides[name]
            if not side.alive:
                raise AssertionError(f"{name} is powered off but ran {args}")
            side.calls.append(" ".join(args))
            return self.answer(name, args)

        return run

    def peer(self, name: str) -> str:
        return "s2" if name == "s1" else "s1"

    def linked(self, name: str, res: str) -> bool:
        other = self.sides[self.peer(name)]
        mine = self.sides[name].res.get(res, {})
        theirs = other.res.get(res, {})
        return bool(other.alive and mine.get("up") and theirs.get("up") and res not in self.split)

    def answer(self, name: str, args: list[str]) -> str:
        side = self.sides[name]
        tool, rest = args[0], args[1:]
        if tool == "lvcreate":
            lv = rest[rest.index("-n") + 1]
            size = int(rest[rest.index("-L") + 1].rstrip("b"))
            side.lvs[lv] = -(-size // EXTENT) * EXTENT
            return ""
        if tool == "lvs":
            lv = rest[-1].split("/", 1)[1]
            if lv not in side.lvs:
                raise StorageError(f'Failed to find logical volume "{rest[-1]}"')
            row = {"lv_name": lv, "vg_name": "vg0", "lv_size": str(side.lvs[lv]), "data_percent": "", "lv_tags": "cloudd", "lv_path": f"/dev/vg0/{lv}", "pool_lv": ""}
            return json.dumps({"report": [{"lv": [row]}]})
        if tool == "vgs":
            return json.dumps({"report": [{"vg": [{"vg_name": "vg0", "vg_size": str(400 * GIB), "vg_free": str(400 * GIB - sum(side.lvs.values()))}]}]})
        if tool == "lvremove":
            side.lvs.pop(rest[-1].split("/", 1)[1], None)
            return ""
        if tool == "lvextend":
            lv = rest[-1].split("/", 1)[1]
            side.lvs[lv] = -(-int(rest[rest.index("-L") + 1].rstrip("b")) // EXTENT) * EXTENT
            return ""
        if tool == "qemu-img":
            return ""
        if tool == "drbdsetup" and rest[0] == "status":
            res = rest[-1]
            state = side.res.get(res)
            if not state or not state["up"]:
                raise StorageError(f"{res}: No such resource")
            linked = self.linked(name, res)
            other = self.sides[self.peer(name)].res.get(res, {})
            return json.dumps([{
                "name": res, "role": state["role"], "devices": [{"disk-state": state["disk"]}],
                "connections": [{
                    "peer-role": other.get("role", "Unknown") if linked else "Unknown",
                    "connection-state": "Connected" if linked else ("StandAlone" if res in self.split else "Connecting"),
                    "peer_devices": [{"peer-disk-state": other.get("disk", "DUnknown") if linked else "DUnknown", "replication-state": "Established" if linked else "Off"}],
                }],
            }])
        if tool == "drbdsetup" and rest[0] == "down":
            return ""
        if tool == "drbdadm":
            verb, res = rest[0], rest[-1]
            state = side.res.setdefault(res, {"role": "Secondary", "disk": "Diskless", "up": False})
            other = self.sides[self.peer(name)].res.get(res, {})
            if verb == "create-md":
                state["disk"] = "Inconsistent"
            elif verb == "adjust":
                state["up"] = True
                if self.linked(name, res) and other.get("disk") == "UpToDate" and res not in self.split:
                    state["disk"] = "UpToDate"  # the sync is instant here
            elif verb == "primary":
                if "--force" not in rest and state["disk"] != "UpToDate":
                    raise StorageError(f"{res}: State change failed: (-2) Need access to UpToDate data")
                if self.linked(name, res) and other.get("role") == "Primary":
                    raise StorageError(f"{res}: State change failed: (-1) Multiple primaries not allowed by config")
                state["role"], state["disk"] = "Primary", "UpToDate"
                if self.linked(name, res):
                    other["disk"] = "UpToDate"
                elif other.get("role") == "Primary":
                    self.split.add(res)  # both wrote on their own: they will not reconnect by themselves
            elif verb == "secondary":
                state["role"] = "Secondary"
            elif verb == "down":
                state["up"] = False
                state["role"] = "Secondary"
            elif verb == "disconnect":
                pass
            elif verb == "connect" and "--discard-my-data" in rest:
                self.split.discard(res)
                if self.linked(name, res) and other.get("disk") == "UpToDate":
                    state["disk"] = "UpToDate"
            elif verb == "resize":
                pass
            else:
                raise AssertionError(f"unexpected {args}")
            return ""
        raise AssertionError(f"unexpected {args}")


def cluster() -> Replica:
    replica = cluster_with_hypervisor()
    for n, name in ((2, "s1"), (3, "s2")):
        admit(replica, name, n)
        replica.ok("node.register", {"name": name, "roles": ["storage"], "inventory": {"cpus": 2, "ram_mb": 4096, "disk_gb": 500.0}, "storage": {"export": "tgt", "portal": f"10.0.0.{n}:3260"}})
        seq = replica.ok("node.heartbeat", {"name": name})["lease_seq"]
        replica.ok("node.status_set", {"name": name, "status": "up", "observed_seq": seq})
    replica.ok("storage_pool.create", {"name": "mirror", "node": "s1", "backend": "drbd", "config": {"vg": "vg0", "peer": "s2"}})
    return replica


def agents(hosts: PairedHosts, tmp_path: Path) -> dict[str, StorageReconciler]:
    def make(name: str) -> StorageReconciler:
        backend = ReplicatedVolumes("vg0", runner=hosts.runner(name), config_dir=tmp_path / name)
        return StorageReconciler(name, lambda pool: backend, FakeExports(), "secret", report_every_s=30.0, clock=lambda: 0.0)

    return {"s1": make("s1"), "s2": make("s2")}


def step(env: FakeEnv, *agents: StorageReconciler) -> None:
    for agent in agents:
        asyncio.run(agent.step(env))


def replicated_volume(tmp_path: Path, size_gb: int) -> tuple[Replica, PairedHosts, FakeEnv, StorageReconciler, StorageReconciler]:
    """The cluster, both hosts and agents, and the volume vo1 made on both sides."""
    replica, hosts = cluster(), PairedHosts()
    env = FakeEnv(replica)
    s1, s2 = (a := agents(hosts, tmp_path))["s1"], a["s2"]
    step(env, s1)  # the pool's capacity comes from its node only
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": size_gb})
    step(env, s2, s1, s2)
    return replica, hosts, env, s1, s2


def test_a_replicated_volume_fails_over_to_the_secondary_and_the_old_primary_gives_way(tmp_path: Path) -> None:
    replica, hosts, env, s1, s2 = replicated_volume(tmp_path, size_gb=10)
    volume = replica.state.volumes["vo1"]
    assert volume["state"] == "available" and volume["node"] == "s1"
    lv = "cloudd-vo1"
    assert hosts.sides["s1"].lvs[lv] >= 10 * GIB + metadata_bytes(10 * GIB) and lv in hosts.sides["s2"].lvs
    config = (tmp_path / "s1" / "cloudd-vo1.res").read_text()
    assert "address 10.0.0.2:7789;" in config and "address 10.0.0.3:7789;" in config and "device /dev/drbd100;" in config
    assert (tmp_path / "s2" / "cloudd-vo1.res").read_text() == config
    assert any("primary --force" in c for c in hosts.sides["s1"].calls)
    assert not any(c.startswith("drbdadm primary") for c in hosts.sides["s2"].calls)
    sides = volume["replica"]["sides"]
    assert sides["s1"]["role"] == "Primary" and sides["s2"] == {**sides["s2"], "role": "Secondary", "disk_state": "UpToDate", "connection_state": "Connected"}

    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    step(env, s1, s2)
    target = volume_target("vo1")
    assert s1.exports.targets[target].path == "/dev/drbd100" and s1.exports.targets[target].initiators == (node_initiator("n1"),)  # type: ignore[union-attr]
    assert s2.exports.targets == {}  # type: ignore[union-attr]
    assert volume_links_of(replica.state, "n1")["vo1"]["portal"] == "10.0.0.2:3260"

    # s1 loses power: the leader waits out the failover rule, then promotes s2
    hosts.sides["s1"].alive = False
    manager = Manager(T)
    advance(env, manager, 3, ("n1", "s1", "s2"))
    advance(env, manager, 8, ("n1", "s2"))
    assert replica.state.volumes["vo1"]["replica"]["primary"] == "s1"  # down, not lost yet
    advance(env, manager, 20, ("n1", "s2"))
    volume = replica.state.volumes["vo1"]
    assert volume["replica"]["primary"] == "s2" and volume["node"] == "s2"
    step(env, s2)
    assert any(c == "drbdadm primary cloudd-vo1" for c in hosts.sides["s2"].calls)  # no --force
    assert s2.exports.targets[target].initiators == (node_initiator("n1"),)  # type: ignore[union-attr]
    assert volume_links_of(replica.state, "n1")["vo1"]["portal"] == "10.0.0.3:3260"
    assert volume["replica"]["sides"]["s2"]["role"] == "Primary"

    # s1 comes back still Primary of its stale copy: it stops exporting and gives up its data
    hosts.sides["s1"].alive = True
    hosts.split.add("cloudd-vo1")
    advance(env, manager, 24, ("n1", "s1", "s2"))  # its cloudd renews its lease again: up
    assert replica.state.nodes["s1"]["status"] == "up" and replica.state.volumes["vo1"]["replica"]["primary"] == "s2"
    step(env, s1)
    assert s1.exports.targets == {}  # type: ignore[union-attr]
    assert "drbdadm connect --discard-my-data cloudd-vo1" in hosts.sides["s1"].calls
    assert hosts.sides["s1"].res["cloudd-vo1"]["role"] == "Secondary"
    assert volume["replica"]["sides"]["s1"]["connection_state"] == "Connected"

    # deleting removes both copies; the record goes when both reported
    replica.ok("volume.detach", {"id": "vo1"})
    step(env, s2, s1)
    replica.ok("volume.delete", {"id": "vo1"})
    step(env, s2)
    assert "vo1" in replica.state.volumes and "cloudd-vo1" not in hosts.sides["s2"].lvs  # s1's copy remains
    step(env, s1)
    assert "vo1" not in replica.state.volumes and hosts.sides["s1"].lvs == {}


def test_a_secondary_whose_copy_is_not_up_to_date_is_never_promoted_on_the_host(tmp_path: Path) -> None:
    replica, hosts, env, s1, s2 = replicated_volume(tmp_path, size_gb=1)
    # the state says s2 (an admin's mistake or a stale decision), but its disk is Outdated here
    hosts.sides["s2"].res["cloudd-vo1"]["disk"] = "Outdated"
    hosts.sides["s1"].alive = False
    replica.state.volumes["vo1"]["replica"]["primary"] = "s2"
    replica.state.volumes["vo1"]["node"] = "s2"
    before = len(hosts.sides["s2"].calls)
    step(env, s2)
    assert not any(c.startswith("drbdadm primary") for c in hosts.sides["s2"].calls[before:])
    assert hosts.sides["s2"].res["cloudd-vo1"]["role"] == "Secondary"
    assert "Outdated" in replica.state.volumes["vo1"]["replica"]["sides"]["s2"]["error"]
    assert replica.state.volumes["vo1"]["observed"]["exported_to"] == []  # nothing served from it


def test_metadata_room_is_whole_extents_and_grows_with_the_volume() -> None:
    assert metadata_bytes(GIB) == 4 << 20
    assert metadata_bytes(1 << 40) % (4 << 20) == 0 and metadata_bytes(1 << 40) >= (1 << 40) // 32768
    with pytest.raises(StorageError, match="layout"):
        ReplicatedVolumes("vg0", runner=lambda a: "").create("vo9", GIB)
    assert re.fullmatch(r"[0-9]+", str(metadata_bytes(0)))


def test_a_storage_node_whose_lease_went_stale_stops_serving_its_primaries(tmp_path: Path) -> None:
    from cloudd.reconcile import LeaseClock

    replica, hosts = cluster(), PairedHosts()
    env = FakeEnv(replica)
    s1, s2 = (a := agents(hosts, tmp_path))["s1"], a["s2"]
    now = [0.0]
    s1.clock = lambda: now[0]
    s1.lease, s1.fence_after = LeaseClock(renewed_at=0.0, started_at=0.0), 6.0
    step(env, s1)
    replica.ok("volume.create", {"id": "vo1", "name": "data", "owner": "bob", "size_gb": 1})
    new_vm(replica, "vm1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    step(env, s2, s1, s2)
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    step(env, s1)
    assert volume_target("vo1") in s1.exports.targets  # type: ignore[union-attr]
    now[0] = 5.9
    step(env, s1)
    assert volume_target("vo1") in s1.exports.targets  # type: ignore[union-attr]
    now[0] = 6.0  # no renewal for fence_after: before the leader may promote s2
    step(env, s1)
    assert s1.exports.targets == {} and hosts.sides["s1"].res["cloudd-vo1"]["role"] == "Secondary"  # type: ignore[union-attr]
    assert s1.fenced
    s1.lease.renewed(7.0)  # the lease is back and s1 is still the primary in the state: it serves again
    now[0] = 7.5
    step(env, s1)
    assert hosts.sides["s1"].res["cloudd-vo1"]["role"] == "Primary" and volume_target("vo1") in s1.exports.targets  # type: ignore[union-attr]
    assert not s1.fenced


def test_after_a_promotion_the_running_guest_gets_its_volume_back_from_the_new_primary(tmp_path: Path) -> None:
    """The hypervisor's reconciler sees the volume's portal move and re-plugs the disk."""
    from cloudd.ops.fake_compute import FakeCompute
    from cloudd.reconcile import LeaseClock, ReconcileSettings, VmReconciler

    replica, hosts, env, s1, s2 = replicated_volume(tmp_path, size_gb=1)
    replica.ok("vm.create", {"id": "vm1", "name": "db", "owner": "bob", "flavor": "small", "vnc_password": "Abcd1234"})
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("volume.attach", {"id": "vo1", "vm": "vm1"})
    step(env, s1)
    compute = FakeCompute()
    hypervisor = VmReconciler(compute, ReconcileSettings(domain_type="test", vm_dir=str(tmp_path / "vms")), lease=LeaseClock(renewed_at=0.0), fence_after=1e9, cluster_secret="secret")
    n1 = FakeEnv(replica, node_name="n1")
    for _ in range(3):
        asyncio.run(hypervisor.step(n1))
    target = replica.state.volumes["vo1"]["target"]
    assert compute.power["vm1"] == "running" and compute.live["vm1"][target].startswith("iscsi://10.0.0.2:3260/")
    # s1 is lost; the leader promotes s2 (as in the test above, here straight through the command)
    hosts.sides["s1"].alive = False
    seq = replica.state.nodes["s1"]["lease_seq"]
    replica.ok("node.status_set", {"name": "s1", "status": "down", "observed_seq": seq})
    replica.ok("volume.promote", {"id": "vo1", "node": "s2", "observed_seq": seq})
    step(env, s2)
    for _ in range(3):
        asyncio.run(hypervisor.step(n1))
    assert compute.power["vm1"] == "running"  # the guest kept running
    assert compute.live["vm1"][target].startswith("iscsi://10.0.0.3:3260/")
    assert next(d for d in compute.defined["vm1"].disks if d.target == target).path.startswith("iscsi://10.0.0.3:3260/")  # and at the next start
