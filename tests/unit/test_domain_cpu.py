"""The domain XML's <cpu>: a named model when the VM has one, the hypervisor's default otherwise."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from cloudd.ops.compute import DomainSpec
from cloudd.ops.domain_xml import digest_of, domain_xml


def test_a_cpu_model_is_a_custom_exact_cpu_without_fallback() -> None:
    spec = DomainSpec("v1", "v1", 2, 256, domain_type="qemu", cpu_model="Haswell-noTSX-IBRS")
    root = ET.fromstring(domain_xml(spec))
    cpus = root.findall("cpu")
    assert len(cpus) == 1
    assert cpus[0].attrib == {"mode": "custom", "match": "exact", "check": "partial"}
    models = cpus[0].findall("model")
    assert len(models) == 1 and models[0].text == "Haswell-noTSX-IBRS" and models[0].attrib == {"fallback": "forbid"}
    assert list(cpus[0]) == models  # no features: the named model alone


def test_no_cpu_model_leaves_the_hypervisors_default() -> None:
    root = ET.fromstring(domain_xml(DomainSpec("v1", "v1", 2, 256, domain_type="qemu")))
    assert root.find("cpu") is None


def test_the_model_name_is_escaped() -> None:
    root = ET.fromstring(domain_xml(DomainSpec("v1", "v1", 1, 128, cpu_model="<evil>&'\"")))
    assert root.findtext("cpu/model") == "<evil>&'\""


def test_the_model_changes_the_digest() -> None:
    plain = DomainSpec("v1", "v1", 1, 128)
    with_model = DomainSpec("v1", "v1", 1, 128, cpu_model="Westmere")
    assert plain.digest != with_model.digest
    assert digest_of(domain_xml(with_model)) == with_model.digest
