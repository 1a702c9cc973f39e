"""The definition a live migration hands to the target (``migratable_xml``), and the
libvirt call around it (``migration_call``, ``progress_of``)."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import libvirt
import pytest

from cloudd.ops.compute import ComputeError, DiskSpec, DomainSpec, IscsiSource, LiveOptions, MigrationTarget, NicSpec
from cloudd.ops.domain_xml import CLOUDD_NS, digest_of, migratable_xml
from cloudd.ops.libvirt_compute import MIGRATION_FLAGS, migration_call, progress_of

# what libvirt 9.0 gives for XMLDesc(VIR_DOMAIN_XML_MIGRATABLE | VIR_DOMAIN_XML_SECURE) of
# a running cloudd domain on hv1 (a qcow2 overlay on an image, an iSCSI volume, one NIC)
LIVE = """<domain type='qemu'>
  <name>cloudd-vm1</name>
  <uuid>1805516f-2385-51c7-9266-a3a29668db2f</uuid>
  <title>web</title>
  <metadata xmlns:cloudd="https://cloudd.dev/xmlns/domain/1">
    <cloudd:vm id="vm1" digest="f3d21676533aceb8"/>
  </metadata>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/var/lib/cloudd/images/kern/vmlinuz</kernel>
    <initrd>/var/lib/cloudd/images/kern/initrd.img</initrd>
    <cmdline>console=ttyS0</cmdline>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/cloudd/vms/vm1/root.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/var/lib/cloudd/images/img1.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <serial>root</serial>
      <boot order='1'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <auth username='vol1'>
        <secret type='iscsi' usage='iqn.2026-11.io.cloudd:volume:vol1'/>
      </auth>
      <source protocol='iscsi' name='iqn.2026-11.io.cloudd:volume:vol1/1'>
        <host name='10.0.0.5' port='3260'/>
        <initiator>
          <iqn name='iqn.2026-11.io.cloudd:node:hv1'/>
        </initiator>
      </source>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <serial>vol1</serial>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>
    </disk>
    <controller type='scsi' index='0' model='virtio-scsi'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </controller>
    <controller type='usb' index='0' model='piix3-uhci'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pci-root'/>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='cbr-net1'/>
      <target dev='ct-port1'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </interface>
    <serial type='pty'>
      <log file='/var/lib/cloudd/vms/vm1/serial.log' append='off'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='pty'>
      <log file='/var/lib/cloudd/vms/vm1/serial.log' append='off'/>
      <target type='serial' port='0'/>
    </console>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='10.0.0.1' passwd='pwsource'>
      <listen type='address' address='10.0.0.1'/>
    </graphics>
    <audio id='1' type='none'/>
    <video>
      <model type='cirrus' vram='16384' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </video>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"""

VOLUME = IscsiSource("10.0.0.6", 3261, "iqn.2026-11.io.cloudd:volume:vol1", "iqn.2026-11.io.cloudd:node:hv2", "vol1-hv2")
# the VM as hv2 would define it: its own bridge and tap, paths, initiator, address, password
TARGET = DomainSpec(
    "vm1", "web", 1, 128,
    (
        DiskSpec("/srv/cloudd/vms/vm1/root.qcow2", target="vda", boot_order=1, serial="root"),
        DiskSpec(VOLUME.url, format="raw", target="vdb", serial="vol1", iscsi=VOLUME),
    ),
    domain_type="qemu", vnc_listen="10.0.0.2", vnc_password="pwtarget", serial_log="/srv/cloudd/vms/vm1/serial.log",
    interfaces=(NicSpec("52:54:00:12:34:56", "cbr-net1b", "ct-port1b"),), cpu_model="qemu64",
    kernel="/srv/cloudd/images/kern/vmlinuz", initrd="/srv/cloudd/images/kern/initrd.img", cmdline="console=ttyS0",
)


def device(root: ET.Element, tag: str, key: str, value: str) -> ET.Element:
    for element in root.findall(f"./devices/{tag}"):
        if any(child.get(key) == value for child in element):
            return element
    raise AssertionError(f"no {tag} with {key}={value}")


def without_node_parts(xml: str) -> list[tuple[str, dict[str, str]]]:
    """Every element with its attributes, minus what a migration may change."""
    out = []
    for element in ET.fromstring(xml).iter():
        if element.tag in ("source", "host", "iqn", "auth", "secret", "log", "listen", "graphics", "backingStore", "format", "kernel", "initrd", "initiator") or element.tag.startswith("{"):
            continue
        attrs = dict(element.attrib)
        if element.tag == "target" and "dev" in attrs and "bus" not in attrs:  # a tap
            attrs.pop("dev")
        out.append((element.tag, attrs))
    return out


def test_the_node_specific_parts_are_the_targets() -> None:
    out = ET.fromstring(migratable_xml(LIVE, TARGET))
    nic = device(out, "interface", "address", "52:54:00:12:34:56")
    assert nic.get("type") == "bridge"
    assert nic.find("source").attrib == {"bridge": "cbr-net1b"}  # type: ignore[union-attr]
    assert nic.find("target").get("dev") == "ct-port1b"  # type: ignore[union-attr]

    root = device(out, "disk", "dev", "vda")
    assert root.get("type") == "file"
    assert root.find("source").attrib == {"file": "/srv/cloudd/vms/vm1/root.qcow2"}  # type: ignore[union-attr]
    assert root.find("backingStore") is None  # the target's libvirt reads the chain from the image
    assert root.find("boot").get("order") == "1"  # type: ignore[union-attr]

    volume = device(out, "disk", "dev", "vdb")
    assert volume.get("type") == "network"
    source = volume.find("source")
    assert source is not None and source.attrib == {"protocol": "iscsi", "name": "iqn.2026-11.io.cloudd:volume:vol1/1"}
    assert source.find("host").attrib == {"name": "10.0.0.6", "port": "3261"}  # type: ignore[union-attr]
    assert source.find("initiator/iqn").get("name") == "iqn.2026-11.io.cloudd:node:hv2"  # type: ignore[union-attr]
    assert [a.get("username") for a in volume.findall("auth")] == ["vol1-hv2"]
    assert volume.find("auth/secret").attrib == {"type": "iscsi", "usage": "iqn.2026-11.io.cloudd:volume:vol1"}  # type: ignore[union-attr]
    assert [child.tag for child in volume] == ["driver", "source", "auth", "target", "serial", "address"]

    assert [log.get("file") for log in out.findall("./devices/*/log")] == ["/srv/cloudd/vms/vm1/serial.log"] * 2
    assert all(log.get("append") == "off" for log in out.findall("./devices/*/log"))
    graphics = out.find("./devices/graphics")
    assert graphics is not None and graphics.get("listen") == "10.0.0.2" and graphics.get("passwd") == "pwtarget"
    assert graphics.find("listen").get("address") == "10.0.0.2"  # type: ignore[union-attr]
    assert out.findtext("./os/kernel") == "/srv/cloudd/images/kern/vmlinuz"
    assert out.findtext("./os/initrd") == "/srv/cloudd/images/kern/initrd.img"


def test_the_guest_abi_and_everything_else_stay_as_they_run() -> None:
    out = migratable_xml(LIVE, TARGET)
    assert without_node_parts(out) == without_node_parts(LIVE)
    root = ET.fromstring(out)
    assert [a.attrib for a in root.iter("address")] == [a.attrib for a in ET.fromstring(LIVE).iter("address")]
    assert root.findtext("uuid") == "1805516f-2385-51c7-9266-a3a29668db2f"
    assert root.find("./os/type").get("machine") == "pc-i440fx-7.2"  # type: ignore[union-attr]
    assert root.findtext("./cpu/model") == "qemu64"
    assert root.findtext("./os/cmdline") == "console=ttyS0"
    assert root.findtext("./devices/disk/serial") == "root"


def test_the_metadata_carries_the_target_specs_digest() -> None:
    out = migratable_xml(LIVE, TARGET)
    assert digest_of(out) == TARGET.digest != "f3d21676533aceb8"
    vm = ET.fromstring(out).find(f"./metadata/{{{CLOUDD_NS}}}vm")
    assert vm is not None and vm.get("id") == "vm1"
    assert 'xmlns:cloudd="https://cloudd.dev/xmlns/domain/1"' in out  # libvirt keeps the element by its namespace
    bare = LIVE.replace(LIVE[LIVE.index("  <metadata"):LIVE.index("</metadata>") + len("</metadata>\n")], "")
    assert digest_of(migratable_xml(bare, TARGET)) == TARGET.digest


def test_what_the_spec_does_not_say_stays_as_it_runs() -> None:
    # a spec without NICs, disks, log, password or kernel: only VNC's address and the digest change
    bare = DomainSpec("vm1", "web", 1, 128, vnc_listen="10.0.0.2")
    out = ET.fromstring(migratable_xml(LIVE, bare))
    assert device(out, "interface", "address", "52:54:00:12:34:56").find("target").get("dev") == "ct-port1"  # type: ignore[union-attr]
    assert device(out, "disk", "dev", "vda").find("source").get("file") == "/var/lib/cloudd/vms/vm1/root.qcow2"  # type: ignore[union-attr]
    assert device(out, "disk", "dev", "vda").find("backingStore") is not None
    assert out.find("./devices/serial/log").get("file") == "/var/lib/cloudd/vms/vm1/serial.log"  # type: ignore[union-attr]
    assert out.find("./devices/graphics").get("passwd") == "pwsource"  # type: ignore[union-attr]
    assert out.findtext("./os/kernel") == "/var/lib/cloudd/images/kern/vmlinuz"


def test_an_unchanged_disk_source_keeps_its_backing_chain() -> None:
    same = dataclasses.replace(TARGET, disks=(DiskSpec("/var/lib/cloudd/vms/vm1/root.qcow2", target="vda", boot_order=1),))
    disk = device(ET.fromstring(migratable_xml(LIVE, same)), "disk", "dev", "vda")
    assert disk.find("backingStore/source").get("file") == "/var/lib/cloudd/images/img1.qcow2"  # type: ignore[union-attr]


def test_a_serial_log_is_added_when_the_running_domain_has_none() -> None:
    live = LIVE.replace("      <log file='/var/lib/cloudd/vms/vm1/serial.log' append='off'/>\n", "")
    out = ET.fromstring(migratable_xml(live, TARGET))
    assert [log.get("file") for log in out.findall("./devices/serial/log")] == ["/srv/cloudd/vms/vm1/serial.log"]


def test_a_mac_matches_whatever_its_case() -> None:
    upper = dataclasses.replace(TARGET, interfaces=(NicSpec("52:54:00:12:34:56".upper(), "cbr-x", "ct-x"),))
    nic = device(ET.fromstring(migratable_xml(LIVE, upper)), "interface", "address", "52:54:00:12:34:56")
    assert nic.find("target").get("dev") == "ct-x"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dataclasses.replace(TARGET, interfaces=(NicSpec("52:54:00:00:00:99", "cbr-x", "ct-x"),)), "no NIC with MAC 52:54:00:00:00:99"),
        (dataclasses.replace(TARGET, disks=(*TARGET.disks, DiskSpec("/srv/swap.qcow2", target="vdc"))), "no disk vdc"),
        (dataclasses.replace(TARGET, vm_id="vm2"), "the live definition is the one of 'cloudd-vm1'"),
    ],
)
def test_a_device_of_the_target_spec_missing_live_is_a_clear_error(spec: DomainSpec, message: str) -> None:
    with pytest.raises(ComputeError, match=message):
        migratable_xml(LIVE, spec)


def test_a_broken_live_definition_is_a_compute_error() -> None:
    with pytest.raises(ComputeError, match="not XML"):
        migratable_xml("<domain><name>cloudd-vm1</name>", TARGET)
    with pytest.raises(ComputeError, match="no serial console"):
        migratable_xml("<domain><name>cloudd-vm1</name><devices/></domain>", DomainSpec("vm1", "web", 1, 128, serial_log="/x.log"))


# --- the libvirt call ------------------------------------------------------------------


def test_a_migration_is_live_peer_to_peer_and_moves_the_definition() -> None:
    params, flags = migration_call(MigrationTarget("hv2", "qemu+tls://hv2/system", "tcp://10.1.0.2"), LiveOptions(), "<domain/>")
    assert flags == MIGRATION_FLAGS == (
        libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    assert params == {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: "<domain/>",
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: "<domain/>",
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.1.0.2",
    }


def test_the_options_and_the_transport_become_flags_and_parameters() -> None:
    options = LiveOptions(bandwidth_mib_s=50, max_downtime_ms=100, copy_disks=("vdc",))
    params, flags = migration_call(MigrationTarget("hv2", "qemu+tls://hv2/system", "tcp://10.1.0.2", tls=True), options, "<domain/>")
    assert flags == MIGRATION_FLAGS | libvirt.VIR_MIGRATE_TLS | libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 50
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vdc"]
    # tunnelled: the memory travels inside libvirt's connection, so no migrate_uri
    params, flags = migration_call(MigrationTarget("hv2", "qemu+tls://hv2/system", "tcp://10.1.0.2", tunnelled=True), LiveOptions(), "<domain/>")
    assert flags == MIGRATION_FLAGS | libvirt.VIR_MIGRATE_TUNNELLED
    assert libvirt.VIR_MIGRATE_PARAM_URI not in params


def test_progress_is_read_from_a_running_outgoing_migration_only() -> None:
    running = {
        "type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, "time_elapsed": 2500,
        "data_total": 1000, "data_processed": 700, "data_remaining": 250, "memory_dirty_rate": 12, "memory_iteration": 2,
    }
    progress = progress_of(running)
    assert progress is not None
    assert (progress.elapsed_s, progress.data_total, progress.data_processed, progress.data_remaining, progress.memory_dirty_rate, progress.iteration) == (2.5, 1000, 700, 250, 12, 2)
    assert progress.percent == 75
    assert progress_of({"type": libvirt.VIR_DOMAIN_JOB_NONE}) is None
    assert progress_of({**running, "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_DUMP}) is None
