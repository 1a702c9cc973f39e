"""libvirt domain XML from a DomainSpec (ElementTree: every value is escaped).

virtio disks (local files, or iSCSI volumes that qemu logs in to itself) and NICs, a
virtio-scsi controller so CD-ROMs can be hot-plugged, a serial
console logged to a file, VNC on the node's address with a per-VM password.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

from cloudd.ops.compute import ComputeError, DiskSpec, DomainSpec, NicSpec

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


# --- live migration ----------------------------------------------------------------------


def migratable_xml(live_xml: str, target: DomainSpec) -> str:
    """The definition a live migration hands to the target node.

    ``live_xml`` is the source's live definition as ``XMLDesc(VIR_DOMAIN_XML_MIGRATABLE |
    VIR_DOMAIN_XML_SECURE)`` gives it (PCI addresses, machine type, CPU model and VNC
    password included), so the guest ABI stays identical. Only the node-specific parts are
    replaced by those of ``target``, the spec as the target node would write it: each NIC
    (by MAC) gets its bridge and tap, each disk (by target dev) its source (file path, or
    iSCSI portal, target, initiator name and CHAP account), the serial console its log
    file, VNC its listen address and password, direct kernel boot its kernel and initrd
    paths, and cloudd's metadata the target spec's digest. Whatever the spec does not
    say stays as it is live. ComputeError when a NIC or disk of ``target`` is missing.
    """
    try:
        dom = ET.fromstring(live_xml)
    except ET.ParseError as exc:
        raise ComputeError(f"migrating {target.domain_name}: its live definition is not XML ({exc})") from None
    name = dom.findtext("name")
    if name != target.domain_name:
        raise ComputeError(f"migrating {target.domain_name}: the live definition is the one of {name!r}")
    devices = dom.find("devices")
    if devices is None:
        raise ComputeError(f"migrating {target.domain_name}: the live definition has no devices")
    for nic in target.interfaces:
        _retarget_interface(_live_interface(devices, nic.mac, target), nic)
    for disk in target.disks:
        _retarget_disk(_live_disk(devices, disk.target, target), disk)
    if target.serial_log:
        _retarget_serial_log(devices, target.serial_log, target)
    _retarget_graphics(devices, target)
    _retarget_boot_files(dom, target)
    _retarget_digest(dom, target)
    ET.register_namespace("cloudd", CLOUDD_NS)
    return ET.tostring(dom, encoding="unicode")


def _child(parent: ET.Element, tag: str) -> ET.Element:
    """``parent``'s first ``tag`` child, made when missing."""
    element = parent.find(tag)
    return element if element is not None else ET.SubElement(parent, tag)


def _live_interface(devices: ET.Element, mac: str, spec: DomainSpec) -> ET.Element:
    for nic in devices.findall("interface"):
        element = nic.find("mac")
        if element is not None and str(element.get("address", "")).lower() == mac.lower():
            return nic
    raise ComputeError(f"migrating {spec.domain_name}: the running domain has no NIC with MAC {mac}")


def _live_disk(devices: ET.Element, dev: str, spec: DomainSpec) -> ET.Element:
    for disk in devices.findall("disk"):
        target = disk.find("target")
        if target is not None and target.get("dev") == dev:
            return disk
    raise ComputeError(f"migrating {spec.domain_name}: the running domain has no disk {dev}")


def _retarget_interface(element: ET.Element, nic: NicSpec) -> None:
    element.set("type", "bridge")
    source = _child(element, "source")
    source.attrib.clear()
    source.set("bridge", nic.bridge)
    _child(element, "target").set("dev", nic.tap)


def _source_key(source: ET.Element | None) -> tuple[str | None, ...]:
    """What a disk's ``<source>`` points at (file, or iSCSI portal/target/initiator)."""
    if source is None:
        return ()
    host, iqn = source.find("host"), source.find("initiator/iqn")
    return (
        source.get("file"), source.get("protocol"), source.get("name"),
        host.get("name") if host is not None else None, host.get("port") if host is not None else None,
        iqn.get("name") if iqn is not None else None,
    )


def _retarget_disk(element: ET.Element, disk: DiskSpec) -> None:
    """The disk's source (and CHAP account) as the target spec says; a changed source
    loses the live backing chain, which the target's libvirt then reads from the image."""
    fresh = disk_element(disk)
    new_source, old_source = fresh.find("source"), element.find("source")
    if _source_key(old_source) != _source_key(new_source):
        for backing in element.findall("backingStore"):
            element.remove(backing)
    stale = [child for child in element if child.tag in ("source", "auth")]
    position = list(element).index(stale[0]) if stale else 1
    for child in stale:
        element.remove(child)
    for new in (new_source, fresh.find("auth")):
        if new is not None:
            element.insert(min(position, len(element)), new)
            position += 1
    element.set("type", fresh.get("type", "file"))


def _retarget_serial_log(devices: ET.Element, path: str, spec: DomainSpec) -> None:
    # the console of a serial type is the same character device and repeats its <log>
    logs = [log for tag in ("serial", "console") for device in devices.findall(tag) for log in device.findall("log")]
    if not logs:
        serial = devices.find("serial")
        if serial is None:
            raise ComputeError(f"migrating {spec.domain_name}: the running domain has no serial console to log")
        log = ET.Element("log", {"append": "off"})
        serial.insert(0, log)
        logs = [log]
    for log in logs:
        log.set("file", path)


def _retarget_graphics(devices: ET.Element, spec: DomainSpec) -> None:
    for graphics in devices.findall("graphics[@type='vnc']"):
        graphics.set("listen", spec.vnc_listen)
        for listen in graphics.findall("listen[@type='address']"):
            listen.set("address", spec.vnc_listen)
        if spec.vnc_password:
            graphics.set("passwd", spec.vnc_password)


def _retarget_boot_files(dom: ET.Element, spec: DomainSpec) -> None:
    """Direct kernel boot reads these files on the target too (qemu loads them at start)."""
    os_el = dom.find("os")
    if os_el is None:
        return
    for tag, path in (("kernel", spec.kernel), ("initrd", spec.initrd)):
        element = os_el.find(tag)
        if path and element is not None:
            element.text = path


def _retarget_digest(dom: ET.Element, spec: DomainSpec) -> None:
    vm = dom.find(f"./metadata/{{{CLOUDD_NS}}}vm")
    if vm is None:
        vm = ET.SubElement(_child(dom, "metadata"), f"{{{CLOUDD_NS}}}vm", {"id": spec.vm_id})
    vm.set("digest", spec.digest)
