"""A guest with the named CPU model its group shares, under qemu TCG (embedded libvirt):
the models libvirt reports usable are real (the chosen one boots and is the guest's CPU),
and a model the host does not offer is refused at start with a clear error."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from cloudd.alloc.cpu import common_model, compatible
from cloudd.ops.compute import ComputeError, DomainSpec
from cloudd.ops.libvirt_compute import LibvirtCompute
from tests.e2e.guest_helpers import serial, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MARKER = "CLOUDD-GUEST-BOOTED"


def tiny(vm_id: str, guest: Path, log: Path, cpu_model: str) -> DomainSpec:
    return DomainSpec(
        vm_id, vm_id, 1, 128, (), domain_type="qemu", serial_log=str(log), cpu_model=cpu_model,
        kernel=str(guest / "vmlinuz"), initrd=str(guest / "initrd.img"), cmdline="console=ttyS0",
    )


def live_cpu(uri: str, vm_id: str) -> ET.Element | None:
    conn = libvirt.open(uri)
    try:
        return ET.fromstring(conn.lookupByName(f"cloudd-{vm_id}").XMLDesc(0)).find("cpu")
    finally:
        conn.close()


def test_the_common_model_boots_and_an_unknown_one_is_refused(embedded: tuple[LibvirtCompute, Path], guest: Path) -> None:
    drv, root = embedded
    tcg = LibvirtCompute(drv.uri, domain_type="qemu")  # the same embedded libvirt, asked about TCG guests
    models = tcg.cpu_models()
    assert "qemu64" in models, models
    chosen = common_model({"hv1": models, "hv2": list(reversed(models))})  # two nodes like this one
    assert chosen is not None and chosen != "qemu64", models  # something newer than the baseline

    log = root / "cpu1.serial.log"
    tcg.define(tiny("cpu1", guest, log, chosen))
    try:
        tcg.start("cpu1")
        wait_for(lambda: MARKER in serial(log), 60, "the boot marker")
        cpu = live_cpu(drv.uri, "cpu1")
        assert cpu is not None and cpu.get("mode") == "custom" and cpu.findtext("model") == chosen
        assert tcg.domains()["cpu1"].power == "running"
    finally:
        tcg.undefine("cpu1")

    # a model libvirt knows but this host's qemu cannot offer (AVX-512 under TCG), and a made-up one
    missing = "Cooperlake"
    assert compatible(missing, models) == "CPU model Cooperlake is not available on this node"
    for vm_id, model, why in (("cpu2", missing, "incompatible with host CPU"), ("cpu3", "NoSuchLake", "Unknown CPU model NoSuchLake")):
        tcg.define(tiny(vm_id, guest, root / f"{vm_id}.serial.log", model))
        try:
            with pytest.raises(ComputeError, match=why):
                tcg.start(vm_id)
            assert tcg.domains()[vm_id].power == "shut_off"
        finally:
            tcg.undefine(vm_id)
