"""CPU models for live migration: the best model a group of nodes shares, and which nodes
a VM's model allows (cloudd.alloc.cpu), and what libvirt reports usable."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cloudd.alloc.cpu import PREFERENCE, common_model, compatible
from cloudd.ops.libvirt_compute import LibvirtCompute, usable_cpu_models

DATA = Path(__file__).parent / "data"

# what Debian 12's qemu 7.2 under libvirt 9.0 reports usable for TCG (<domain type='qemu'>)
TCG = ["qemu64", "qemu32", "pentium3", "pentium2", "pentium", "n270", "kvm64", "kvm32", "coreduo", "core2duo", "athlon", "Westmere", "Penryn", "Opteron_G2", "Opteron_G1", "Nehalem", "Conroe", "486"]
HASWELL_HOST = ["qemu64", "kvm64", "Conroe", "Penryn", "Nehalem", "Nehalem-IBRS", "Westmere", "Westmere-IBRS", "SandyBridge", "SandyBridge-IBRS", "IvyBridge", "IvyBridge-IBRS", "Haswell-noTSX", "Haswell-noTSX-IBRS", "Opteron_G1", "Opteron_G2"]
SKYLAKE_HOST = HASWELL_HOST + ["Broadwell-noTSX", "Broadwell-noTSX-IBRS", "Skylake-Client-noTSX-IBRS", "Skylake-Server-noTSX-IBRS"]
ROME_HOST = ["qemu64", "kvm64", "Opteron_G1", "Opteron_G2", "Opteron_G3", "Conroe", "Penryn", "Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell-noTSX", "Broadwell-noTSX", "EPYC", "EPYC-IBPB", "EPYC-Rome"]


def test_the_preference_list_has_each_model_once_and_each_vendor_line_in_order() -> None:
    assert len(PREFERENCE) == len(set(PREFERENCE))
    assert PREFERENCE[0] == "qemu64"
    rank = PREFERENCE.index
    intel = ["Conroe", "Penryn", "Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell", "Broadwell", "Skylake-Client", "Skylake-Server", "Cascadelake-Server", "Icelake-Server", "Cooperlake", "SapphireRapids"]
    amd = ["Opteron_G1", "Opteron_G2", "Opteron_G3", "Opteron_G4", "Opteron_G5", "EPYC", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"]
    for line in (intel, amd, ["x86-64-v2", "x86-64-v3", "x86-64-v4"]):
        assert [rank(m) for m in line] == sorted(rank(m) for m in line)
    assert rank("Haswell-noTSX") < rank("Haswell") < rank("Haswell-IBRS")
    assert "qemu32" not in PREFERENCE and "486" not in PREFERENCE  # 32-bit models are never chosen


def test_heterogeneous_nodes_get_the_newest_model_they_all_run() -> None:
    assert common_model({"hv1": HASWELL_HOST, "hv2": SKYLAKE_HOST}) == "Haswell-noTSX-IBRS"
    assert common_model({"hv1": SKYLAKE_HOST, "hv2": SKYLAKE_HOST}) == "Skylake-Server-noTSX-IBRS"
    assert common_model({"hv1": ROME_HOST}) == "EPYC-Rome"  # an AMD host keeps its own line
    assert common_model({"hv1": ROME_HOST, "hv2": SKYLAKE_HOST}) == "Broadwell-noTSX"  # Intel and AMD: what both offer
    assert common_model({"hv1": TCG, "hv2": TCG}) == "Westmere"
    assert common_model({"hv1": TCG, "hv2": HASWELL_HOST}) == "Westmere"


def test_a_node_that_cannot_tell_or_no_nodes_give_no_model() -> None:
    assert common_model({"hv1": SKYLAKE_HOST, "hv2": []}) is None
    assert common_model({}) is None


def test_nothing_in_common_gives_no_model() -> None:
    assert common_model({"hv1": ["EPYC-Milan"], "hv2": ["Cooperlake"]}) is None
    assert common_model({"hv1": ["qemu32", "486"], "hv2": ["486", "pentium"]}) is None  # shared, but never chosen
    assert common_model({"hv1": ["pentium3", "pentium2", "pentium", "486"]}) is None  # this machine's broken KVM
    assert common_model({"hv1": ["Nehalem", "FutureLake"], "hv2": ["FutureLake", "Nehalem"]}) == "Nehalem"  # unknown names are never chosen


def test_the_choice_does_not_depend_on_the_order_of_nodes_or_models() -> None:
    nodes = {"hv1": HASWELL_HOST, "hv2": SKYLAKE_HOST, "hv3": TCG + ["SandyBridge"]}
    answers = set()
    for order in itertools.permutations(nodes):
        answers.add(common_model({name: list(reversed(nodes[name])) for name in order}))
        answers.add(common_model({name: tuple(sorted(nodes[name])) for name in order}))
    assert answers == {"SandyBridge"}


@pytest.mark.parametrize(("model", "node", "reason"), [
    (None, ["qemu64"], None),  # no model: the hypervisor's default runs anywhere
    ("Haswell", [], None),  # the node cannot tell: not refused
    ("Haswell-noTSX", HASWELL_HOST, None),
    ("Haswell", HASWELL_HOST, "CPU model Haswell is not available on this node"),
    ("EPYC-Rome", SKYLAKE_HOST, "CPU model EPYC-Rome is not available on this node"),
])
def test_compatible(model: str | None, node: list[str], reason: str | None) -> None:
    assert compatible(model, node) == reason


def test_usable_models_from_this_machines_domain_capabilities() -> None:
    xml = (DATA / "domcaps-qemu-7.2-tcg.xml").read_text()
    assert usable_cpu_models(xml) == TCG  # libvirt's order; the usable='no' ones (Haswell, EPYC…) left out


def test_usable_models_when_custom_models_are_unsupported_or_missing() -> None:
    assert usable_cpu_models("<domainCapabilities><cpu><mode name='custom' supported='no'/></cpu></domainCapabilities>") == []
    assert usable_cpu_models("<domainCapabilities><domain>test</domain></domainCapabilities>") == []
    assert usable_cpu_models("not xml") == []
    xml = "<domainCapabilities><cpu><mode name='custom' supported='yes'><model usable='yes' vendor='Intel'>Nehalem</model><model usable='no'>Haswell</model><model usable='unknown'>Foo</model><model usable='yes'> </model></mode></cpu></domainCapabilities>"
    assert usable_cpu_models(xml) == ["Nehalem"]


def test_the_test_driver_cannot_tell() -> None:
    assert LibvirtCompute("test:///default").cpu_models() == []
    assert LibvirtCompute("test:///default", domain_type="test").cpu_models() == []
