"""libvirt domain XML from a DomainSpec (ElementTree: every value is escaped).

virtio disks (local files, or iSCSI volumes that qemu logs in to itself) and NICs, a
virtio-scsi controller so CD-ROMs can be hot-plugged, a serial
console logged to a file, VNC on the node's address with a per-VM password.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from cloudd.ops.compute import DiskSpec, DomainSpec, NicSpec

CLOUDD_NS = "https://cloudd.dev/xmlns/domain/1"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


NAMESPACE = uuid.UUID("5f0c2a43-86b5-4c5e-9d0f-3f7c1c0a7d21")


def domain_uuid(vm_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, vm_id)


def domain_xml(spec: DomainSpec) -> str:
    dom = ET.Element("domain", {"type": spec.domain_type})
    _sub(dom, "name", spec.domain_name)
    _sub(dom, "uuid", str(domain_uuid(spec.vm_id)))  # stable, so a redefine updates in place
    _sub(dom, "title", spec.name)
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{CLOUDD_NS}}}vm", {"id": spec.vm_id, "digest": spec.digest})
    _sub(dom, "memory", str(spec.ram_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os")
    type_attrs = {"arch": "x86_64"}
    if spec.machine:
        type_attrs["machine"] = spec.machine
    _sub(os_el, "type", "hvm", **type_attrs)
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_el, "cmdline", spec.cmdline)
    # else the firmware boots the disks by their <boot order> (OS disk, then an install ISO)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.cpu_model:  # one named model for the VM's whole group: it can migrate live among them
        cpu = _sub(dom, "cpu", mode="custom", match="exact", check="partial")
        _sub(cpu, "model", spec.cpu_model, fallback="forbid")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    _sub(devices, "controller", type="scsi", model="virtio-scsi", index="0")
    for disk in spec.disks:
        devices.append(disk_element(disk))
    for nic in spec.interfaces:
        devices.append(interface_element(nic))
    serial = _sub(devices, "serial", type="pty")
    if spec.serial_log:
        _sub(serial, "log", file=spec.serial_log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    graphics = {"type": "vnc", "port": "-1", "autoport": "yes", "listen": spec.vnc_listen}
    if spec.vnc_password:
        graphics["passwd"] = spec.vnc_password
    _sub(devices, "graphics", **graphics)
    _sub(devices, "memballoon", model="virtio")
    ET.register_namespace("cloudd", CLOUDD_NS)
    return ET.tostring(dom, encoding="unicode")


def disk_element(disk: DiskSpec, boot: bool = True) -> ET.Element:
    d = ET.Element("disk", {"type": "network" if disk.iscsi else "file", "device": disk.device})
    _sub(d, "driver", name="qemu", type=disk.format, cache="none" if disk.device == "disk" else "default")
    if disk.iscsi is not None:
        iscsi = disk.iscsi
        source = _sub(d, "source", protocol="iscsi", name=f"{iscsi.target}/{iscsi.lun}")
        _sub(source, "host", name=iscsi.host, port=str(iscsi.port))
        _sub(_sub(source, "initiator"), "iqn", name=iscsi.initiator)
        _sub(_sub(d, "auth", username=iscsi.chap_user), "secret", type="iscsi", usage=iscsi.target)
    else:
        _sub(d, "source", file=disk.path)
    _sub(d, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly or disk.device == "cdrom":
        _sub(d, "readonly")
    if disk.serial:
        _sub(d, "serial", disk.serial)
    if boot and disk.boot_order is not None:
        _sub(d, "boot", order=str(disk.boot_order))
    return d


def disk_xml(disk: DiskSpec) -> str:
    """One ``<disk>`` device, for hot-plugging (its boot order applies from the next start,
    through the persistent definition)."""
    return ET.tostring(disk_element(disk, boot=False), encoding="unicode")


def interface_element(nic: NicSpec) -> ET.Element:
    """A NIC as a tap in a Linux bridge: libvirt creates the tap named ``nic.tap``."""
    element = ET.Element("interface", type="bridge")
    _sub(element, "mac", address=nic.mac)
    _sub(element, "source", bridge=nic.bridge)
    _sub(element, "target", dev=nic.tap)
    _sub(element, "model", type=nic.model)
    return element


def interface_xml(nic: NicSpec) -> str:
    return ET.tostring(interface_element(nic), encoding="unicode")


def digest_of(xml: str) -> str | None:
    """The spec digest cloudd stored in a domain's metadata (None when absent)."""
    try:
        vm = ET.fromstring(xml).find(f"./metadata/{{{CLOUDD_NS}}}vm")
    except ET.ParseError:
        return None
    return vm.get("digest") if vm is not None else None
