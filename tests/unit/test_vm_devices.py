"""Extra disks, swap and ISOs: the commands, and the agent plugging them into guests."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from cloudd.ops.fake_compute import FakeCompute
from cloudd.ops.local_disk import LocalDisks
from cloudd.reconcile import ReconcileSettings, VmReconciler
from tests.fake_env import FakeEnv
from tests.unit.test_compute_commands import cluster_with_hypervisor, new_vm, unchanged


def with_iso(replica, image_id: str = "iso1", owner: str = "admin", public: bool = True):  # type: ignore[no-untyped-def]
    replica.ok("image.register", {"id": image_id, "name": f"cd-{image_id}", "owner": owner, "public": public, "format": "iso", "path": f"/isos/{image_id}.iso", "size_gb": 0.5})
    return replica


def placed(swap_mb: int = 0):  # type: ignore[no-untyped-def]
    replica = with_iso(cluster_with_hypervisor())
    new_vm(replica, swap_mb=swap_mb)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    return replica


def test_extra_disks_get_the_next_free_target_and_count_against_the_node() -> None:
    replica = placed()
    assert replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 10})["disk"]["target"] == "vdc"
    assert replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d2", "size_gb": 10})["disk"]["target"] == "vdd"
    replica.ok("vm.disk.remove", {"id": "vm1", "disk_id": "d1"})
    assert replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d3", "size_gb": 1})["disk"]["target"] == "vdc"
    # the node has 100 GB: OS disk 5 + 10 + 1 used
    error = unchanged(replica, "vm.disk.add", {"id": "vm1", "disk_id": "d4", "size_gb": 90}, "conflict")
    assert "no room" in error["message"] and "disk" in error["message"]


def test_disk_commands_refuse_bad_requests_and_change_nothing() -> None:
    replica = placed()
    replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 1})
    assert "already has disk" in unchanged(replica, "vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 1}, "conflict")["message"]
    unchanged(replica, "vm.disk.add", {"id": "vm1", "disk_id": "d2", "size_gb": 0}, "invalid")
    unchanged(replica, "vm.disk.add", {"id": "nope", "disk_id": "d2", "size_gb": 1}, "not_found")
    unchanged(replica, "vm.disk.remove", {"id": "vm1", "disk_id": "zz"}, "not_found")
    for n in range(2, 9):
        replica.ok("vm.disk.add", {"id": "vm1", "disk_id": f"d{n}", "size_gb": 1})
    assert "8 extra disks" in unchanged(replica, "vm.disk.add", {"id": "vm1", "disk_id": "d9", "size_gb": 1}, "conflict")["message"]
    replica.ok("vm.delete", {"id": "vm1"})
    assert "deleting" in unchanged(replica, "vm.disk.remove", {"id": "vm1", "disk_id": "d1"}, "conflict")["message"]


def test_iso_attach_and_detach_checks_the_image() -> None:
    replica = placed()
    replica.ok("image.register", {"id": "priv", "name": "mine", "owner": "admin", "public": False, "format": "iso", "path": "/p.iso", "size_gb": 1})
    unchanged(replica, "vm.iso.attach", {"id": "vm1", "image": "priv"}, "not_found")  # bob cannot see it
    assert "not an ISO" in unchanged(replica, "vm.iso.attach", {"id": "vm1", "image": "img1"}, "invalid")["message"]
    unchanged(replica, "vm.iso.detach", {"id": "vm1"}, "conflict")
    replica.ok("vm.iso.attach", {"id": "vm1", "image": "iso1"})
    replica.ok("vm.iso.attach", {"id": "vm1", "image": "iso1"})  # the same again: fine
    with_iso(replica, "iso2")
    assert "detach it first" in unchanged(replica, "vm.iso.attach", {"id": "vm1", "image": "iso2"}, "conflict")["message"]
    assert "used by VMs" in unchanged(replica, "image.delete", {"id": "iso1"}, "conflict")["message"]
    replica.ok("vm.iso.detach", {"id": "vm1"})
    assert replica.state.vms["vm1"]["iso"] is None


def test_create_with_swap_and_an_iso_but_not_an_iso_as_the_os_image() -> None:
    replica = with_iso(cluster_with_hypervisor())
    new_vm(replica, "v2", swap_mb=2048, iso="iso1")
    vm = replica.state.vms["v2"]
    assert vm["swap_mb"] == 2048 and vm["iso"] == "iso1" and vm["disks"] == []
    assert "is an ISO" in unchanged(replica, "vm.create", {"id": "v3", "name": "x", "owner": "bob", "flavor": "small", "image": "iso1"}, "invalid")["message"]
    unchanged(replica, "vm.create", {"id": "v3", "name": "x", "owner": "bob", "flavor": "small", "swap_mb": -1}, "invalid")


# --- the agent ---


def agent_for(replica, fake: FakeCompute, vm_dir: str = "/srv/vms", disks: LocalDisks | None = None) -> tuple[FakeEnv, VmReconciler]:  # type: ignore[no-untyped-def]
    env = FakeEnv(replica, node_name="n1")
    return env, VmReconciler(fake, ReconcileSettings(domain_type="qemu", vm_dir=vm_dir), disks=disks)


def step(agent: VmReconciler, env: FakeEnv, times: int = 1) -> None:
    for _ in range(times):
        asyncio.run(agent.step(env))


def test_the_domain_has_root_swap_seed_and_iso_at_fixed_targets() -> None:
    replica = with_iso(cluster_with_hypervisor())
    new_vm(replica, swap_mb=512, iso="iso1")
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    fake = FakeCompute()
    env, agent = agent_for(replica, fake)
    step(agent, env)
    disks = {d.target: d for d in fake.defined["vm1"].disks}
    assert (disks["vda"].serial, disks["vdb"].serial) == ("root", "swap")
    assert disks["sda"].path == "/srv/vms/vm1/seed.iso" and disks["sda"].bus == "scsi" and disks["sda"].device == "cdrom"
    assert disks["sdb"].path == "/isos/iso1.iso" and disks["sdb"].device == "cdrom"
    assert replica.state.vms["vm1"]["observed"]["disks"] == ["sda", "sdb", "vda", "vdb"]


def test_disks_and_isos_are_hot_plugged_into_a_running_guest_and_unplugged() -> None:
    replica = placed()
    fake = FakeCompute()
    env, agent = agent_for(replica, fake)
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "running" and set(fake.live["vm1"]) == {"vda", "sda"}
    replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 2})
    replica.ok("vm.iso.attach", {"id": "vm1", "image": "iso1"})
    step(agent, env)
    assert fake.live["vm1"] == {"vda": "/srv/vms/vm1/disk.qcow2", "sda": "/srv/vms/vm1/seed.iso", "vdc": "/srv/vms/vm1/disk-d1.qcow2", "sdb": "/isos/iso1.iso"}
    assert {d.target for d in fake.defined["vm1"].disks} == {"vda", "sda", "vdc", "sdb"}  # kept for the next boot too
    step(agent, env)
    assert replica.state.vms["vm1"]["observed"]["disks"] == ["sda", "sdb", "vda", "vdc"]
    calls = len(fake.calls)
    step(agent, env, 2)
    assert len(fake.calls) == calls  # converged
    replica.ok("vm.disk.remove", {"id": "vm1", "disk_id": "d1"})
    replica.ok("vm.iso.detach", {"id": "vm1"})
    step(agent, env, 2)
    assert set(fake.live["vm1"]) == {"vda", "sda"} and {d.target for d in fake.defined["vm1"].disks} == {"vda", "sda"}
    assert replica.state.vms["vm1"]["observed"]["disks"] == ["sda", "vda"]
    assert replica.state.vms["vm1"]["state"] == "running"


def test_without_hot_plug_a_change_waits_for_the_next_start() -> None:
    replica = placed()
    fake = FakeCompute(hotplug=False)
    env, agent = agent_for(replica, fake)
    step(agent, env)
    replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 2})
    step(agent, env)
    assert "vdc" in {d.target for d in fake.defined["vm1"].disks} and "vdc" not in fake.live["vm1"]
    assert ("attach_live", "vm1") not in fake.calls
    replica.ok("vm.stop", {"id": "vm1"})
    step(agent, env)
    replica.ok("vm.start", {"id": "vm1"})
    step(agent, env, 2)
    assert "vdc" in fake.live["vm1"] and "vdc" in replica.state.vms["vm1"]["observed"]["disks"]


def test_a_domain_redefined_behind_our_back_is_redefined() -> None:
    replica = placed()
    fake = FakeCompute()
    env, agent = agent_for(replica, fake)
    step(agent, env)
    defines = fake.calls.count(("define", "vm1"))
    fake.defined["vm1"] = fake.defined["vm1"].__class__(**{**fake.defined["vm1"].__dict__, "ram_mb": 4096})
    step(agent, env)
    assert fake.calls.count(("define", "vm1")) == defines + 1 and fake.defined["vm1"].ram_mb == 512


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (scripts/install.sh installs qemu-utils)")
def test_real_files_are_made_and_removed(tmp_path: Path) -> None:
    replica = cluster_with_hypervisor()
    LocalDisks().ensure(tmp_path / "base.qcow2", 1)
    replica.ok("image.register", {"id": "base", "name": "b", "owner": "admin", "public": True, "format": "qcow2", "path": str(tmp_path / "base.qcow2"), "size_gb": 1})
    new_vm(replica, image="base", swap_mb=256)
    replica.ok("vm.place", {"id": "vm1", "node": "n1"})
    replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 1})
    env, agent = agent_for(replica, FakeCompute(), vm_dir=str(tmp_path), disks=LocalDisks())
    step(agent, env)
    vm_dir = tmp_path / "vm1"
    assert sorted(p.name for p in vm_dir.iterdir()) == ["disk-d1.qcow2", "disk.qcow2", "seed.iso"]
    assert (tmp_path / "vm1-swap.qcow2").exists()
    replica.ok("vm.disk.remove", {"id": "vm1", "disk_id": "d1"})
    step(agent, env, 2)
    assert not (vm_dir / "disk-d1.qcow2").exists()
    replica.ok("vm.delete", {"id": "vm1"})
    step(agent, env)
    assert not vm_dir.exists() and not (tmp_path / "vm1-swap.qcow2").exists() and "vm1" not in replica.state.vms


def test_a_default_image_is_used_when_a_request_names_none() -> None:
    replica = with_iso(cluster_with_hypervisor())
    assert "cannot be the default" in unchanged(replica, "image.default_set", {"id": "iso1"}, "invalid")["message"]
    replica.ok("image.register", {"id": "priv", "name": "p", "owner": "admin", "public": False, "format": "qcow2", "path": "/p.qcow2", "size_gb": 1})
    unchanged(replica, "image.default_set", {"id": "priv"}, "invalid")
    unchanged(replica, "image.default_set", {"id": "gone"}, "not_found")
    replica.ok("image.default_set", {"id": "img1"})
    replica.ok("vm.create", {"id": "a", "name": "a", "owner": "bob", "flavor": "small"})
    replica.ok("vm.create", {"id": "b", "name": "b", "owner": "bob", "flavor": "small", "image": None})  # a blank disk
    replica.ok("vm.create", {"id": "c", "name": "c", "owner": "bob", "flavor": "small", "iso": "iso1"})  # an installer
    assert [replica.state.vms[v]["image"] for v in "abc"] == ["img1", None, None]
    replica.ok("vm.delete", {"id": "a"})
    replica.ok("image.delete", {"id": "img1"})
    assert replica.state.cluster["default_image"] is None


def test_a_guest_that_never_releases_a_disk_is_asked_again_only_after_a_while_and_still_stops() -> None:
    replica = placed()
    fake = FakeCompute(releases_unplugged=False)
    env, agent = agent_for(replica, fake)
    agent.settings.unplug_retry_s = 3600
    replica.ok("vm.disk.add", {"id": "vm1", "disk_id": "d1", "size_gb": 2})
    step(agent, env)
    replica.ok("vm.disk.remove", {"id": "vm1", "disk_id": "d1"})
    step(agent, env, 5)
    assert fake.calls.count(("detach_live", "vm1")) == 1  # not every pass
    assert replica.state.vms["vm1"]["observed"]["disks"] == ["sda", "vda", "vdc"]  # honest: still plugged in
    replica.ok("vm.stop", {"id": "vm1"})
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "stopped"


def test_moving_the_swap_dir_never_unplugs_a_running_guests_swap() -> None:
    replica = placed(swap_mb=256)
    fake = FakeCompute()
    env, agent = agent_for(replica, fake)
    step(agent, env)
    agent.settings.swap_dir = "/fast/swap"
    step(agent, env, 2)
    assert ("detach_live", "vm1") not in fake.calls and fake.live["vm1"]["vdb"] == "/srv/vms/vm1-swap.qcow2"
    assert {d.target: d.path for d in fake.defined["vm1"].disks}["vdb"] == "/fast/swap/vm1-swap.qcow2"  # from the next start


class SlowIsos:
    """An image source whose ISO copies take forever to arrive (OS images are at hand)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def path_of(self, image: dict) -> str:
        return str(self.base) if image["format"] != "iso" else f"/images/{image['id']}"

    async def local_path(self, image: dict) -> str:
        if image["format"] == "iso":
            await asyncio.sleep(3600)
        return self.path_of(image)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (scripts/install.sh installs it)")
def test_an_iso_still_on_its_way_holds_up_neither_the_vm_nor_its_power_steps(tmp_path: Path) -> None:
    replica = placed()
    LocalDisks().ensure(tmp_path / "base.qcow2", 1)
    fake = FakeCompute()
    env = FakeEnv(replica, node_name="n1")
    settings = ReconcileSettings(domain_type="qemu", vm_dir=str(tmp_path / "vms"))
    agent = VmReconciler(fake, settings, disks=LocalDisks(), image_source=SlowIsos(tmp_path / "base.qcow2"))
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "running"
    replica.ok("vm.iso.attach", {"id": "vm1", "image": "iso1"})
    step(agent, env)
    vm = replica.state.vms["vm1"]
    assert "being fetched" in vm["observed"]["device_error"] and vm["state"] == "running"
    assert "sdb" not in fake.live["vm1"]
    replica.ok("vm.stop", {"id": "vm1"})
    step(agent, env)
    assert replica.state.vms["vm1"]["state"] == "stopped"


def test_a_failed_hot_plug_is_reported_without_putting_the_vm_in_error() -> None:
    replica = placed()
    fake = FakeCompute()
    env, agent = agent_for(replica, fake)
    step(agent, env)
    fake.fail_next("attach_live", "unable to open /isos/iso1.iso: Permission denied")
    replica.ok("vm.iso.attach", {"id": "vm1", "image": "iso1"})
    step(agent, env)
    vm = replica.state.vms["vm1"]
    assert vm["state"] == "running" and "Permission denied" in vm["observed"]["device_error"]
    step(agent, env)
    vm = replica.state.vms["vm1"]
    assert vm["observed"]["device_error"] is None and "sdb" in vm["observed"]["disks"]
