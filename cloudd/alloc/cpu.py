"""CPU models for live migration: which named model a VM gets, and where it may run.

A guest started with the host's own CPU (or the hypervisor's default on a newer host)
may use instructions another node lacks, and then cannot move there live. So every VM of
a placement group gets one named model that every node of the group reports usable
(``ComputeDriver.cpu_models``), and the allocator offers a VM only nodes that run its model.

``PREFERENCE`` orders the x86-64 models that libvirt knows, from the oldest and most
compatible to the newest. Intel, AMD, Hygon and the vendor-neutral models are interleaved
by roughly what they offer (x86-64 ABI level first, then generation), so each vendor line
on its own is oldest to newest, and the pick among models of several lines is stable.
Within a generation ``-noTSX`` comes before the full model and ``-IBRS`` (speculation
control for the guest) after its counterpart. Names no node reports are harmless: the
list also holds models of qemu and libvirt releases newer than Debian 12's (x86-64-v2…v4,
SapphireRapids, EPYC-Genoa…). 32-bit and odd models (qemu32, pentium, athlon…) are left
out on purpose: they are never chosen.

No I/O: the node's reports come in as data.
"""

from __future__ import annotations

from typing import Mapping, Sequence

PREFERENCE: tuple[str, ...] = (
    # x86-64 baseline (ABI level 1)
    "qemu64",
    "kvm64",
    "x86-64-v1",
    "Opteron_G1",
    "Conroe",
    "Opteron_G2",
    "Penryn",
    "Opteron_G3",
    # ABI level 2: SSE4.2, POPCNT
    "x86-64-v2",
    "Nehalem",
    "Nehalem-IBRS",
    "Westmere",
    "Westmere-IBRS",
    "Snowridge",
    "Opteron_G4",
    "SandyBridge",
    "SandyBridge-IBRS",
    "Opteron_G5",
    "IvyBridge",
    "IvyBridge-IBRS",
    # ABI level 3: AVX2, BMI, FMA
    "x86-64-v3",
    "Haswell-noTSX",
    "Haswell",
    "Haswell-noTSX-IBRS",
    "Haswell-IBRS",
    "Broadwell-noTSX",
    "Broadwell",
    "Broadwell-noTSX-IBRS",
    "Broadwell-IBRS",
    "Dhyana",
    "EPYC",
    "EPYC-IBPB",
    "Skylake-Client",
    "Skylake-Client-noTSX-IBRS",
    "Skylake-Client-IBRS",
    "EPYC-Rome",
    "EPYC-Milan",
    "SierraForest",
    # ABI level 4: AVX-512
    "x86-64-v4",
    "Skylake-Server",
    "Skylake-Server-noTSX-IBRS",
    "Skylake-Server-IBRS",
    "Cascadelake-Server-noTSX",
    "Cascadelake-Server",
    "Icelake-Client-noTSX",
    "Icelake-Client",
    "Icelake-Server-noTSX",
    "Icelake-Server",
    "Cooperlake",
    "EPYC-Genoa",
    "SapphireRapids",
    "GraniteRapids",
)
RANK: dict[str, int] = {name: index for index, name in enumerate(PREFERENCE)}


def common_model(models_per_node: Mapping[str, Sequence[str]]) -> str | None:
    """The newest model of ``PREFERENCE`` that every node (name -> the models it reports
    usable) can run. None when there are no nodes, when a node reported no models (it
    cannot tell, so no model is safe to promise), or when the nodes share no model of the
    preference list. The answer depends only on the sets, not on the order of nodes or
    models."""
    if not models_per_node:
        return None
    common: set[str] | None = None
    for models in models_per_node.values():
        if not models:
            return None
        common = set(models) if common is None else common & set(models)
    ranked = [RANK[name] for name in common or () if name in RANK]
    return PREFERENCE[max(ranked)] if ranked else None


def compatible(cpu_model: str | None, node_models: Sequence[str]) -> str | None:
    """None when a VM with ``cpu_model`` may run on a node that reports ``node_models``
    usable, else the reason why not. A VM without a model (the hypervisor's default) is
    compatible with every node, and so is every VM with a node that cannot tell (an empty
    list: libvirt's test driver, an older node): such a node is not refused, the start
    itself would then fail with the hypervisor's own error."""
    if cpu_model is None or not node_models or cpu_model in node_models:
        return None
    return f"CPU model {cpu_model} is not available on this node"
