"""LVM, DRBD and LIO drivers, through the commands they build and recorded tool output.

This machine's kernel has no device-mapper, DRBD or LIO: the drivers run against a
``RecordingRunner`` that answers with output recorded the way the real tools print it
(``lvs``/``vgs --reportformat json``, ``qemu-img info --output json``, ``drbdsetup status
--json`` of DRBD 9) and, for LIO, a fake rtslib module that records the objects made.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudd.ops.drbd import (
    DrbdPeer,
    DrbdResource,
    DrbdVolumes,
    allocate_minor_port,
    drbd_unavailable_reason,
    parse_status,
    render_config,
)
from cloudd.ops.lio import LioExports, lio_unavailable_reason, parse_portal
from cloudd.ops.lvm import LvmVolumes, lvm_unavailable_reason
from cloudd.ops.storage import ExportSpec, PoolCapacity, StorageError, VolumeInfo, node_initiator, volume_target

Answer = str | Exception | list[str | Exception]


class RecordingRunner:
    """Records every argument list and answers from recorded output keyed by the command line
    (a list answers successive calls in turn; an exception is raised like a failing tool's)."""

    def __init__(self, answers: dict[str, Answer] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str]) -> str:
        assert all(isinstance(arg, str) for arg in args)
        self.calls.append(list(args))
        key = " ".join(args)
        if key not in self.answers:
            raise AssertionError(f"unexpected command: {key}")
        answer = self.answers[key]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def lines(self) -> list[str]:
        return [" ".join(call) for call in self.calls]


# -- LVM: recorded output (lvm2 2.03 as on Debian 12; `--units b --nosuffix` gives plain byte counts)

GIB = 1 << 30
LV_OPTS = "--reportformat json --units b --nosuffix -o lv_name,vg_name,lv_size,data_percent,lv_tags,lv_path,pool_lv"


def lvs_json(*rows: dict[str, str]) -> str:
    body = ",\n".join("                  " + json.dumps(row, separators=(", ", ":")) for row in rows)
    return f'  {{\n      "report": [\n          {{\n              "lv": [\n{body}\n              ]\n          }}\n      ]\n  }}\n'


def lv_row(name: str, size: int, data_percent: str = "", tags: str = "cloudd", pool: str = "", vg: str = "vg0") -> dict[str, str]:
    path = "" if name == "pool0" else f"/dev/{vg}/{name}"
    return {"lv_name": name, "vg_name": vg, "lv_size": str(size), "data_percent": data_percent, "lv_tags": tags, "lv_path": path, "pool_lv": pool}


VGS_JSON = """  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vg0", "vg_size":"1000203091968", "vg_free":"600127258624"}
              ]
          }
      ]
  }
"""

QEMU_IMG_INFO_QCOW2 = """{
    "children": [],
    "virtual-size": 2361393152,
    "filename": "/var/lib/cloudd/images/debian-12.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 421978112,
    "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": false,
                        "refcount-bits": 16, "corrupt": false, "extended-l2": false}},
    "dirty-flag": false
}
"""


def missing(name: str) -> StorageError:
    """What run_command raises for lvs/lvremove on an LV that is not there (exit 5)."""
    return StorageError(f'lvs --reportformat json…: Failed to find logical volume "{name}"')


def lvs(name: str) -> str:
    return f"lvs {LV_OPTS} {name}"


def test_thick_create_runs_lvcreate_with_bytes_name_wipe_and_tag() -> None:
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol1"): [missing("vg0/cloudd-vol1"), lvs_json(lv_row("cloudd-vol1", 10 * GIB))],
        "lvcreate -y --wipesignatures y -n cloudd-vol1 -L 10737418240b --addtag cloudd vg0": '  Logical volume "cloudd-vol1" created.\n',
    })
    info = LvmVolumes("vg0", runner=runner).create("vol1", 10 * GIB)
    assert info == VolumeInfo("vol1", "/dev/vg0/cloudd-vol1", 10 * GIB, 10 * GIB)
    assert runner.lines == [
        lvs("vg0/cloudd-vol1"),
        "lvcreate -y --wipesignatures y -n cloudd-vol1 -L 10737418240b --addtag cloudd vg0",
        lvs("vg0/cloudd-vol1"),
    ]


def test_thin_create_uses_virtual_size_in_the_pool() -> None:
    created = lvs_json(lv_row("cloudd-vol2", 20 * GIB, data_percent="0.00", pool="pool0"))
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol2"): [missing("vg0/cloudd-vol2"), created],
        "lvcreate -y --wipesignatures y -n cloudd-vol2 -V 21474836480b --thinpool pool0 --addtag cloudd vg0": "",
    })
    volumes = LvmVolumes("vg0", thin_pool="pool0", runner=runner)
    assert volumes.cow_from_images
    info = volumes.create("vol2", 20 * GIB)
    assert (info.size_bytes, info.allocated_bytes) == (20 * GIB, 0)
    assert runner.calls[1] == ["lvcreate", "-y", "--wipesignatures", "y", "-n", "cloudd-vol2", "-V", "21474836480b",
                               "--thinpool", "pool0", "--addtag", "cloudd", "vg0"]


def test_thin_create_from_an_image_lv_of_the_pool_is_a_snapshot_then_grown() -> None:
    image = lvs_json(lv_row("image-debian12", 4 * GIB, data_percent="38.20", tags="cloudd_image", pool="pool0"))
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol3"): [missing("vg0/cloudd-vol3"), lvs_json(lv_row("cloudd-vol3", 10 * GIB, "15.00", pool="pool0"))],
        lvs("vg0/image-debian12"): image,
        "lvcreate -y -s --setactivationskip n -n cloudd-vol3 --addtag cloudd --addtag cloudd_incomplete vg0/image-debian12": "",
        "lvextend -L 10737418240b vg0/cloudd-vol3": "",
        "lvchange --deltag cloudd_incomplete vg0/cloudd-vol3": "",
    })
    info = LvmVolumes("vg0", thin_pool="pool0", runner=runner).create("vol3", 10 * GIB, source="/dev/vg0/image-debian12")
    assert runner.lines == [
        lvs("vg0/cloudd-vol3"),
        lvs("vg0/image-debian12"),
        "lvcreate -y -s --setactivationskip n -n cloudd-vol3 --addtag cloudd --addtag cloudd_incomplete vg0/image-debian12",
        "lvextend -L 10737418240b vg0/cloudd-vol3",
        "lvchange --deltag cloudd_incomplete vg0/cloudd-vol3",
        lvs("vg0/cloudd-vol3"),
    ]
    assert info.allocated_bytes == int(10 * GIB * 0.15)


def test_thick_create_from_a_qcow2_image_is_a_full_copy() -> None:
    source = "/var/lib/cloudd/images/debian-12.qcow2"
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol4"): [missing("vg0/cloudd-vol4"), lvs_json(lv_row("cloudd-vol4", 10 * GIB))],
        f"qemu-img info --output json {source}": QEMU_IMG_INFO_QCOW2,
        "lvcreate -y --wipesignatures y -n cloudd-vol4 -L 10737418240b --addtag cloudd --addtag cloudd_incomplete vg0": "",
        f"qemu-img convert -n -f qcow2 -O raw {source} /dev/vg0/cloudd-vol4": "",
        "lvchange --deltag cloudd_incomplete vg0/cloudd-vol4": "",
    })
    volumes = LvmVolumes("vg0", runner=runner)
    assert not volumes.cow_from_images
    volumes.create("vol4", 10 * GIB, source=source)
    assert runner.lines[1:5] == [
        f"qemu-img info --output json {source}",
        "lvcreate -y --wipesignatures y -n cloudd-vol4 -L 10737418240b --addtag cloudd --addtag cloudd_incomplete vg0",
        f"qemu-img convert -n -f qcow2 -O raw {source} /dev/vg0/cloudd-vol4",
        "lvchange --deltag cloudd_incomplete vg0/cloudd-vol4",
    ]


def test_thin_copy_of_a_file_image_keeps_holes_and_is_never_smaller_than_the_image() -> None:
    source = "/var/lib/cloudd/images/debian-12.qcow2"
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol5"): [missing("vg0/cloudd-vol5"), lvs_json(lv_row("cloudd-vol5", 2361393152, "17.80", pool="pool0"))],
        f"qemu-img info --output json {source}": QEMU_IMG_INFO_QCOW2,
        "lvcreate -y --wipesignatures y -n cloudd-vol5 -V 2361393152b --thinpool pool0 --addtag cloudd --addtag cloudd_incomplete vg0": "",
        f"qemu-img convert -n -f qcow2 -O raw --target-is-zero {source} /dev/vg0/cloudd-vol5": "",
        "lvchange --deltag cloudd_incomplete vg0/cloudd-vol5": "",
    })
    LvmVolumes("vg0", thin_pool="pool0", runner=runner).create("vol5", 1 * GIB, source=source)  # the image is 2.2 GiB
    assert f"qemu-img convert -n -f qcow2 -O raw --target-is-zero {source} /dev/vg0/cloudd-vol5" in runner.lines


def test_a_failed_copy_removes_the_half_made_volume() -> None:
    source = "/var/lib/cloudd/images/debian-12.qcow2"
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol6"): missing("vg0/cloudd-vol6"),
        f"qemu-img info --output json {source}": QEMU_IMG_INFO_QCOW2,
        "lvcreate -y --wipesignatures y -n cloudd-vol6 -L 10737418240b --addtag cloudd --addtag cloudd_incomplete vg0": "",
        f"qemu-img convert -n -f qcow2 -O raw {source} /dev/vg0/cloudd-vol6": StorageError("qemu-img convert -n…: Input/output error"),
        "lvremove -f vg0/cloudd-vol6": "",
    })
    with pytest.raises(StorageError, match="Input/output error"):
        LvmVolumes("vg0", runner=runner).create("vol6", 10 * GIB, source=source)
    assert runner.lines[-1] == "lvremove -f vg0/cloudd-vol6"


def test_create_returns_an_existing_volume_and_redoes_an_incomplete_one() -> None:
    done = RecordingRunner({lvs("vg0/cloudd-vol1"): lvs_json(lv_row("cloudd-vol1", 10 * GIB))})
    assert LvmVolumes("vg0", runner=done).create("vol1", 20 * GIB).size_bytes == 10 * GIB
    assert done.lines == [lvs("vg0/cloudd-vol1")]

    leftover = lvs_json(lv_row("cloudd-vol1", 10 * GIB, tags="cloudd,cloudd_incomplete"))
    redo = RecordingRunner({
        lvs("vg0/cloudd-vol1"): [leftover, lvs_json(lv_row("cloudd-vol1", 10 * GIB))],
        "lvremove -f vg0/cloudd-vol1": '  Logical volume "cloudd-vol1" successfully removed.\n',
        "lvcreate -y --wipesignatures y -n cloudd-vol1 -L 10737418240b --addtag cloudd vg0": "",
    })
    LvmVolumes("vg0", runner=redo).create("vol1", 10 * GIB)
    assert redo.lines[1:3] == ["lvremove -f vg0/cloudd-vol1", "lvcreate -y --wipesignatures y -n cloudd-vol1 -L 10737418240b --addtag cloudd vg0"]


def test_tool_errors_carry_the_tool_message() -> None:
    runner = RecordingRunner({
        lvs("vg0/cloudd-big"): missing("vg0/cloudd-big"),
        "lvcreate -y --wipesignatures y -n cloudd-big -L 2199023255552b --addtag cloudd vg0": StorageError(
            'lvcreate -y --wipesignatures…: Volume group "vg0" has insufficient free space (143086 extents): 524288 required.'),
    })
    with pytest.raises(StorageError, match="insufficient free space"):
        LvmVolumes("vg0", runner=runner).create("big", 2048 * GIB)


def test_delete_of_a_missing_volume_is_quiet_other_errors_are_not() -> None:
    runner = RecordingRunner({
        "lvremove -f vg0/cloudd-gone": StorageError('lvremove -f vg0/cloudd-gone…: Failed to find logical volume "vg0/cloudd-gone"'),
        "lvremove -f vg0/cloudd-busy": StorageError("lvremove -f vg0/cloudd-busy…: Logical volume vg0/cloudd-busy in use."),
    })
    volumes = LvmVolumes("vg0", runner=runner)
    volumes.delete("gone")
    with pytest.raises(StorageError, match="in use"):
        volumes.delete("busy")
    assert runner.lines == ["lvremove -f vg0/cloudd-gone", "lvremove -f vg0/cloudd-busy"]


def test_resize_grows_and_never_shrinks() -> None:
    runner = RecordingRunner({
        lvs("vg0/cloudd-vol1"): [lvs_json(lv_row("cloudd-vol1", 10 * GIB)), lvs_json(lv_row("cloudd-vol1", 12 * GIB))],
        "lvextend -L 12884901888b vg0/cloudd-vol1": '  Logical volume vg0/cloudd-vol1 successfully resized.\n',
    })
    volumes = LvmVolumes("vg0", runner=runner)
    assert volumes.resize("vol1", 12 * GIB).size_bytes == 12 * GIB
    assert runner.lines == [lvs("vg0/cloudd-vol1"), "lvextend -L 12884901888b vg0/cloudd-vol1", lvs("vg0/cloudd-vol1")]

    same = RecordingRunner({lvs("vg0/cloudd-vol1"): lvs_json(lv_row("cloudd-vol1", 12 * GIB))})
    assert LvmVolumes("vg0", runner=same).resize("vol1", 8 * GIB).size_bytes == 12 * GIB
    assert same.lines == [lvs("vg0/cloudd-vol1")]


def test_info_volumes_and_capacity_parse_recorded_reports() -> None:
    listing = lvs_json(
        lv_row("pool0", 500 * GIB, data_percent="37.12", tags=""),
        lv_row("image-debian12", 4 * GIB, data_percent="38.20", tags="cloudd_image", pool="pool0"),
        lv_row("cloudd-a", 10 * GIB, data_percent="12.50", pool="pool0"),
        lv_row("cloudd-b", 20 * GIB, data_percent="0.00", tags="cloudd,owner=p1", pool="pool0"),
        lv_row("cloudd-stray", GIB, data_percent="1.00", tags="", pool="pool0"),
    )
    runner = RecordingRunner({
        f"lvs {LV_OPTS} vg0": listing,
        lvs("vg0/cloudd-a"): lvs_json(lv_row("cloudd-a", 10 * GIB, data_percent="12.50", pool="pool0")),
        lvs("vg0/cloudd-nope"): missing("vg0/cloudd-nope"),
        lvs("vg0/pool0"): lvs_json(lv_row("pool0", 500 * GIB, data_percent="37.12", tags="")),
        "vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free vg0": VGS_JSON,
    })
    thin = LvmVolumes("vg0", thin_pool="pool0", runner=runner)
    assert thin.volumes() == ["a", "b"]
    assert thin.info("a") == VolumeInfo("a", "/dev/vg0/cloudd-a", 10 * GIB, 10 * GIB // 8)
    assert thin.info("nope") is None
    used = int(500 * GIB * 37.12 / 100)
    assert thin.capacity() == PoolCapacity(total_bytes=500 * GIB, free_bytes=500 * GIB - used)
    assert LvmVolumes("vg0", runner=runner).capacity() == PoolCapacity(1000203091968, 600127258624)


def test_json_std_reports_with_numbers_and_tag_lists_parse_too() -> None:
    std = json.dumps({"report": [{"lv": [{"lv_name": "cloudd-a", "vg_name": "vg0", "lv_size": 1073741824, "data_percent": 50.0,
                                          "lv_tags": ["cloudd"], "lv_path": "/dev/vg0/cloudd-a", "pool_lv": "pool0"}]}]})
    runner = RecordingRunner({lvs("vg0/cloudd-a"): std})
    assert LvmVolumes("vg0", thin_pool="pool0", runner=runner).info("a") == VolumeInfo("a", "/dev/vg0/cloudd-a", GIB, GIB // 2)


@pytest.mark.parametrize("volume_id", ["a/b", "a b", "../etc", "x;rm", "vol\n1", "", "a" * 65])
def test_bad_volume_ids_are_refused_before_any_command(volume_id: str) -> None:
    runner = RecordingRunner()
    volumes = LvmVolumes("vg0", thin_pool="pool0", runner=runner)
    actions: list[Callable[[], object]] = [
        lambda: volumes.create(volume_id, GIB), lambda: volumes.delete(volume_id),
        lambda: volumes.resize(volume_id, GIB), lambda: volumes.info(volume_id),
    ]
    for action in actions:
        with pytest.raises(StorageError, match="invalid volume id"):
            action()
    assert runner.calls == []


@pytest.mark.parametrize("vg", ["-vg0", "--force", "vg0/lv", "vg 0", "", "..", "vg0;x", "vg--0", "-"])
def test_bad_vg_and_pool_names_are_refused(vg: str) -> None:
    runner = RecordingRunner()
    with pytest.raises(StorageError, match="invalid volume group"):
        LvmVolumes(vg, runner=runner)
    with pytest.raises(StorageError, match="invalid thin pool"):
        LvmVolumes("vg0", thin_pool=vg, runner=runner)
    assert runner.calls == []


@pytest.mark.parametrize("source", ["-o", "--help", "json:{\"file.filename\":\"/etc/shadow\"}", "nbd://evil/x", "images/x.qcow2", "/x\n-y"])
def test_bad_image_sources_are_refused(source: str) -> None:
    runner = RecordingRunner({lvs("vg0/cloudd-vol1"): missing("vg0/cloudd-vol1")})
    with pytest.raises(StorageError, match="invalid image path"):
        LvmVolumes("vg0", runner=runner).create("vol1", GIB, source=source)
    assert all(call[0] == "lvs" for call in runner.calls)


def test_sizes_must_be_positive_whole_bytes() -> None:
    volumes = LvmVolumes("vg0", runner=RecordingRunner())
    for size in (0, -1, 1.5):
        with pytest.raises(StorageError, match="invalid size"):
            volumes.create("vol1", size)  # type: ignore[arg-type]


def executable(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_lvm_unavailable_reason_here_and_on_a_simulated_host(tmp_path: Path) -> None:
    reason = lvm_unavailable_reason()
    assert isinstance(reason, str) and reason  # this kernel has no device-mapper (and may lack lvm2)
    executable(tmp_path / "bin", "lvm")
    (tmp_path / "misc").write_text(" 62 vfio\n236 device-mapper\n 57 memory_bandwidth\n")
    (tmp_path / "control").write_text("")
    host = {"search_path": str(tmp_path / "bin"), "proc_misc": str(tmp_path / "misc")}
    assert lvm_unavailable_reason(dm_control=str(tmp_path / "control"), **host) is None
    assert "device-mapper" in str(lvm_unavailable_reason(dm_control=str(tmp_path / "none"), **host))
    assert "lvm" in str(lvm_unavailable_reason(search_path=str(tmp_path / "empty")))


# -- DRBD


def resource(**changes: Any) -> DrbdResource:
    a = DrbdPeer(node="store-a", host="10.0.0.11", node_id=0, disk="/dev/vg0/cloudd-vol1")
    b = DrbdPeer(node="store-b", host="10.0.0.12", node_id=1, disk="/dev/vg1/cloudd-vol1")
    values: dict[str, Any] = {"volume_id": "vol1", "minor": 100, "port": 7789, "peers": (a, b)}
    values.update(changes)
    return DrbdResource(**values)


EXPECTED_RES = """# managed by cloudd: changes are overwritten
resource cloudd-vol1 {
    options {
        auto-promote no;
    }
    net {
        protocol C;
    }
    on store-a {
        node-id 0;
        address 10.0.0.11:7789;
        device /dev/drbd100;
        disk /dev/vg0/cloudd-vol1;
        meta-disk internal;
    }
    on store-b {
        node-id 1;
        address 10.0.0.12:7789;
        device /dev/drbd100;
        disk /dev/vg1/cloudd-vol1;
        meta-disk internal;
    }
    connection-mesh {
        hosts store-a store-b;
    }
}
"""


def test_render_config_for_two_peers() -> None:
    assert render_config(resource()) == EXPECTED_RES
    assert resource().name == "cloudd-vol1" and resource().device == "/dev/drbd100"


def test_render_config_ipv6_addresses() -> None:
    a = DrbdPeer("store-a", "fd00::11", 0, "/dev/vg0/cloudd-vol1")
    b = DrbdPeer("store-b", "fd00:0::12", 1, "/dev/vg0/cloudd-vol1")
    text = render_config(resource(peers=(a, b), port=7790))
    assert "address ipv6 [fd00::11]:7790;" in text and "address ipv6 [fd00::12]:7790;" in text


def peer(**changes: Any) -> DrbdPeer:
    values: dict[str, Any] = {"node": "store-b", "host": "10.0.0.12", "node_id": 1, "disk": "/dev/vg1/cloudd-vol1"}
    values.update(changes)
    return DrbdPeer(**values)


BAD_RESOURCES: dict[str, dict[str, Any]] = {
    "node with a brace": {"peers": (peer(node="store-a {"), peer())},
    "node with a newline": {"peers": (peer(node="a\n}\nresource x"), peer(node="b", node_id=2))},
    "node starting with a dash": {"peers": (peer(node="-a", node_id=0), peer())},
    "host that is not an IP": {"peers": (peer(node="a", node_id=0, host="store-a.example"), peer())},
    "host with config after it": {"peers": (peer(node="a", node_id=0, host="10.0.0.1:1; disk /etc/shadow"), peer())},
    "scoped IPv6 host": {"peers": (peer(node="a", node_id=0, host="fe80::1%eth0"), peer())},
    "disk outside /dev": {"peers": (peer(node="a", node_id=0, disk="/etc/shadow"), peer())},
    "disk with a semicolon": {"peers": (peer(node="a", node_id=0, disk="/dev/vg0/x;"), peer())},
    "disk climbing up": {"peers": (peer(node="a", node_id=0, disk="/dev/../etc/shadow"), peer())},
    "same node twice": {"peers": (peer(node_id=0), peer())},
    "same node id twice": {"peers": (peer(node="a"), peer())},
    "node id too big": {"peers": (peer(node="a", node_id=32, host="10.0.0.1"), peer())},
    "minor negative": {"minor": -1},
    "minor too big": {"minor": 1 << 20},
    "privileged port": {"port": 80},
    "port as text": {"port": "7789; }"},
    "boolean minor": {"minor": True},
    "bad volume id": {"volume_id": "vol1 {"},
}


@pytest.mark.parametrize("case", sorted(BAD_RESOURCES))
def test_render_config_refuses_values_that_could_inject_config(case: str) -> None:
    with pytest.raises(StorageError):
        render_config(resource(**BAD_RESOURCES[case]))


def test_write_config_is_atomic_and_idempotent(tmp_path: Path) -> None:
    drbd = DrbdVolumes(runner=RecordingRunner(), config_dir=tmp_path / "drbd.d")
    assert drbd.write_config(resource()) is True
    path = tmp_path / "drbd.d" / "cloudd-vol1.res"
    assert path.read_text() == EXPECTED_RES and oct(path.stat().st_mode & 0o777) == "0o644"
    assert drbd.write_config(resource()) is False
    assert drbd.write_config(resource(port=7790)) is True
    assert sorted(os.listdir(tmp_path / "drbd.d")) == ["cloudd-vol1.res"]
    drbd.remove_config("vol1")
    drbd.remove_config("vol1")
    assert not path.exists()


def test_drbdadm_command_lines() -> None:
    runner = RecordingRunner({
        "drbdadm create-md --force cloudd-vol1": (
            "initializing activity log\ninitializing bitmap (320 KB) to all zero\nNew drbd meta data block successfully created.\n"
        ),
        "drbdadm adjust cloudd-vol1": "",
        "drbdadm primary cloudd-vol1": "",
        "drbdadm primary --force cloudd-vol1": "",
        "drbdadm secondary cloudd-vol1": "",
        "drbdadm down cloudd-vol1": "",
    })
    drbd = DrbdVolumes(runner=runner)
    drbd.create_metadata("vol1")
    drbd.up("vol1")
    drbd.primary("vol1", force=True)
    drbd.primary("vol1")
    drbd.secondary("vol1")
    drbd.down("vol1")
    assert runner.lines == [
        "drbdadm create-md --force cloudd-vol1",
        "drbdadm adjust cloudd-vol1",
        "drbdadm primary --force cloudd-vol1",
        "drbdadm primary cloudd-vol1",
        "drbdadm secondary cloudd-vol1",
        "drbdadm down cloudd-vol1",
    ]
    with pytest.raises(StorageError, match="invalid volume id"):
        drbd.primary("vol1 --force")


def test_down_without_config_falls_back_to_drbdsetup_and_is_quiet_when_down() -> None:
    runner = RecordingRunner({
        "drbdadm down cloudd-vol1": StorageError("drbdadm down cloudd-vol1…: 'cloudd-vol1' not defined in your config (for this host)."),
        "drbdsetup down cloudd-vol1": StorageError("drbdsetup down cloudd-vol1…: cloudd-vol1: No such resource"),
    })
    DrbdVolumes(runner=runner).down("vol1")
    assert runner.lines == ["drbdadm down cloudd-vol1", "drbdsetup down cloudd-vol1"]


def drbd_status_json(role: str, disk: str, peer_role: str, peer_disk: str, connection: str, replication: str) -> str:
    """``drbdsetup status --json cloudd-vol1`` as drbd-utils 9.2x prints it (DRBD 9.2 module)."""
    return f"""[
{{
  "name": "cloudd-vol1",
  "node-id": 1,
  "role": "{role}",
  "suspended": false,
  "suspended-user": false,
  "suspended-no-data": false,
  "suspended-fencing": false,
  "suspended-quorum": false,
  "force-io-failures": false,
  "write-ordering": "flush",
  "devices": [
    {{
      "volume": 0,
      "minor": 100,
      "disk-state": "{disk}",
      "client": false,
      "open": false,
      "quorum": true,
      "size": 10485404,
      "read": 2112,
      "written": 5242880,
      "al-writes": 12,
      "bm-writes": 3,
      "upper-pending": 0,
      "lower-pending": 0
    }} ],
  "connections": [
    {{
      "peer-node-id": 0,
      "name": "store-a",
      "connection-state": "{connection}",
      "congested": false,
      "peer-role": "{peer_role}",
      "tls": false,
      "ap-in-flight": 0,
      "rs-in-flight": 0,
      "peer_devices": [
        {{
          "volume": 0,
          "replication-state": "{replication}",
          "peer-disk-state": "{peer_disk}",
          "peer-client": false,
          "resync-suspended": "no",
          "received": 5242880,
          "sent": 0,
          "out-of-sync": 0,
          "pending": 0,
          "unacked": 0,
          "has-sync-details": false,
          "has-online-verify-details": false,
          "percent-in-sync": 100.00
        }} ]
    }} ]
}}
]
"""


CONNECTED = drbd_status_json("Secondary", "UpToDate", "Primary", "UpToDate", "Connected", "Established")
PEER_LOST = drbd_status_json("Secondary", "UpToDate", "Unknown", "DUnknown", "Connecting", "Off")
STANDALONE = drbd_status_json("Secondary", "UpToDate", "Unknown", "DUnknown", "StandAlone", "Off")
PROMOTED = drbd_status_json("Primary", "UpToDate", "Unknown", "DUnknown", "Connecting", "Off")
SYNCING = drbd_status_json("Secondary", "Inconsistent", "Unknown", "DUnknown", "Connecting", "Off")
STATUS = "drbdsetup status --json cloudd-vol1"


def test_status_parsing_connected_and_peer_lost() -> None:
    both = parse_status(CONNECTED, "cloudd-vol1")
    assert (both.role, both.disk_state, both.peer_role, both.peer_disk_state) == ("Secondary", "UpToDate", "Primary", "UpToDate")
    assert (both.connection_state, both.replication_state, both.peer_connected) == ("Connected", "Established", True)
    lost = parse_status(PEER_LOST, "cloudd-vol1")
    assert (lost.peer_role, lost.peer_disk_state, lost.connection_state, lost.replication_state) == ("Unknown", "DUnknown", "Connecting", "Off")
    syncing = parse_status(drbd_status_json("Secondary", "Inconsistent", "Primary", "UpToDate", "Connected", "SyncTarget"), "cloudd-vol1")
    assert (syncing.disk_state, syncing.replication_state) == ("Inconsistent", "SyncTarget")
    with pytest.raises(StorageError):
        parse_status("Secondary UpToDate", "cloudd-vol1")


def test_status_without_connections_and_when_not_up() -> None:
    lone = json.loads(STANDALONE)
    lone[0]["connections"] = []
    parsed = parse_status(json.dumps(lone), "cloudd-vol1")
    assert (parsed.peer_role, parsed.peer_disk_state, parsed.connection_state) == ("Unknown", "DUnknown", "StandAlone")
    runner = RecordingRunner({STATUS: StorageError("drbdsetup status --json…: cloudd-vol1: No such resource")})
    assert DrbdVolumes(runner=runner).status("vol1") is None


@pytest.mark.parametrize("lost", [PEER_LOST, STANDALONE])
def test_promote_after_peer_loss_promotes_an_uptodate_secondary_without_force(lost: str) -> None:
    runner = RecordingRunner({STATUS: [lost, PROMOTED], "drbdadm primary cloudd-vol1": ""})
    after = DrbdVolumes(runner=runner).promote_after_peer_loss("vol1")
    assert after.role == "Primary"
    assert runner.lines == [STATUS, "drbdadm primary cloudd-vol1", STATUS]


def test_promote_refuses_a_disk_that_is_not_uptodate() -> None:
    runner = RecordingRunner({STATUS: SYNCING})
    with pytest.raises(StorageError, match="Inconsistent, not UpToDate"):
        DrbdVolumes(runner=runner).promote_after_peer_loss("vol1")
    assert runner.lines == [STATUS]


def test_promote_refuses_while_the_peer_is_connected_primary_and_is_a_noop_when_primary() -> None:
    runner = RecordingRunner({STATUS: CONNECTED})
    with pytest.raises(StorageError, match="still Primary"):
        DrbdVolumes(runner=runner).promote_after_peer_loss("vol1")
    already = RecordingRunner({STATUS: PROMOTED})
    assert DrbdVolumes(runner=already).promote_after_peer_loss("vol1").role == "Primary"
    assert already.lines == [STATUS]


def test_allocate_minor_port_takes_the_lowest_free() -> None:
    assert allocate_minor_port([], []) == (100, 7789)
    assert allocate_minor_port([100, 101, 103], [7789, 7791]) == (102, 7790)
    with pytest.raises(StorageError, match="no free DRBD port"):
        allocate_minor_port([], [7000, 7001], ports=(7000, 7001))


def test_drbd_unavailable_reason_here_and_on_a_simulated_host(tmp_path: Path) -> None:
    reason = drbd_unavailable_reason()
    assert isinstance(reason, str) and reason  # no drbd-utils / no DRBD module on this kernel
    executable(tmp_path / "bin", "drbdadm")
    proc = tmp_path / "drbd"
    proc.write_text("version: 9.2.8 (api:2/proto:86-122)\nGIT-hash: e163b05a76254c0f51f999970e861d72bb16409a\n")
    assert drbd_unavailable_reason(search_path=str(tmp_path / "bin"), proc_drbd=str(proc)) is None
    proc.write_text("version: 8.4.11 (api:1/proto:86-101)\nsrcversion: 211FB288A383ED945B83420\n")
    assert "DRBD 9" in str(drbd_unavailable_reason(search_path=str(tmp_path / "bin"), proc_drbd=str(proc)))
    assert "/proc/drbd" in str(drbd_unavailable_reason(search_path=str(tmp_path / "bin"), proc_drbd=str(tmp_path / "none")))


# -- LIO through a fake rtslib module


class FakeRTSLibError(Exception):
    pass


class FakeNode:
    """What the fake objects share: the module's log, configfs-like attributes, a path."""

    def __init__(self, lio: FakeRtslib, kind: str, key: str) -> None:
        self.lio, self.kind, self.key = lio, kind, key
        self.attributes: dict[str, str] = {}
        self.chap_userid = ""
        self.chap_password = ""
        lio.log.append(("create", kind, key))

    def get_attribute(self, name: str) -> str:
        return self.attributes.get(name, "0")

    def set_attribute(self, name: str, value: str) -> None:
        self.attributes[name] = value


class FakeStorageObject(FakeNode):
    def __init__(self, lio: FakeRtslib, plugin: str, name: str, dev: str, size: int | None) -> None:
        super().__init__(lio, f"{plugin}StorageObject", name)
        self.name, self.plugin, self.udev_path, self.size = name, plugin, dev, size
        lio.storage_objects.append(self)

    def delete(self) -> None:
        self.lio.log.append(("delete", self.kind, self.name))
        self.lio.storage_objects.remove(self)


class FakeTarget(FakeNode):
    def __init__(self, lio: FakeRtslib, wwn: str) -> None:
        wwn = wwn.lower()  # rtslib normalises IQNs
        super().__init__(lio, "Target", wwn)
        self.wwn = wwn
        self.tpgs: list[FakeTPG] = []
        lio.targets.append(self)

    def delete(self) -> None:
        self.lio.log.append(("delete", "Target", self.wwn))
        self.lio.targets.remove(self)


class FakeTPG(FakeNode):
    def __init__(self, lio: FakeRtslib, target: FakeTarget, tag: int) -> None:
        super().__init__(lio, "TPG", f"{target.wwn}/{tag}")
        self.tag, self.enable = tag, False
        self.attributes = {"authentication": "0", "generate_node_acls": "0"}
        self.network_portals: list[Any] = []
        self.luns: list[FakeLUN] = []
        self.node_acls: list[FakeNodeACL] = []
        target.tpgs.append(self)


class FakeLUN(FakeNode):
    def __init__(self, lio: FakeRtslib, tpg: FakeTPG, lun: int, storage_object: FakeStorageObject) -> None:
        super().__init__(lio, "LUN", f"{lun}->{storage_object.name}")
        self.tpg, self.lun, self.storage_object = tpg, lun, storage_object
        self.path = ""
        tpg.luns.append(self)

    def delete(self) -> None:
        self.lio.log.append(("delete", "LUN", self.key))
        for acl in self.tpg.node_acls:
            acl.mapped_luns = [m for m in acl.mapped_luns if m.tpg_lun is not self]
        self.tpg.luns.remove(self)


class FakeNodeACL(FakeNode):
    def __init__(self, lio: FakeRtslib, tpg: FakeTPG, node_wwn: str) -> None:
        node_wwn = node_wwn.lower()
        super().__init__(lio, "NodeACL", node_wwn)
        self.tpg, self.node_wwn = tpg, node_wwn
        self.mapped_luns: list[FakeMappedLUN] = []
        self.session: dict[str, Any] | None = None
        tpg.node_acls.append(self)

    def delete(self) -> None:
        self.lio.log.append(("delete", "NodeACL", self.node_wwn))
        self.tpg.node_acls.remove(self)


class FakeMappedLUN(FakeNode):
    def __init__(self, lio: FakeRtslib, acl: FakeNodeACL, mapped_lun: int, tpg_lun: FakeLUN) -> None:
        super().__init__(lio, "MappedLUN", f"{acl.node_wwn}/{mapped_lun}")
        self.mapped_lun, self.tpg_lun = mapped_lun, tpg_lun
        self.path = ""
        acl.mapped_luns.append(self)


class FakeRtslib:
    """Stands in for the ``rtslib_fb`` module: the same names, called the same way."""

    RTSLibError = FakeRTSLibError

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.storage_objects: list[FakeStorageObject] = []
        self.targets: list[FakeTarget] = []

    def RTSRoot(self) -> Any:
        return type("Root", (), {"storage_objects": list(self.storage_objects)})()

    def FabricModule(self, name: str) -> Any:
        assert name == "iscsi"
        return type("Fabric", (), {"targets": list(self.targets)})()

    def BlockStorageObject(self, name: str, dev: str) -> FakeStorageObject:
        return FakeStorageObject(self, "block", name, dev, None)

    def FileIOStorageObject(self, name: str, dev: str, size: int) -> FakeStorageObject:
        return FakeStorageObject(self, "fileio", name, dev, size)

    def Target(self, fabric: Any, wwn: str, mode: str = "any") -> FakeTarget:
        assert mode == "create" and all(t.wwn != wwn.lower() for t in self.targets)
        return FakeTarget(self, wwn)

    def TPG(self, target: FakeTarget, tag: int, mode: str = "any") -> FakeTPG:
        assert mode == "create"
        return FakeTPG(self, target, tag)

    def NetworkPortal(self, tpg: FakeTPG, ip_address: str, port: int, mode: str = "any") -> Any:
        assert mode == "create"
        portal = FakeNode(self, "NetworkPortal", f"{ip_address}:{port}")
        portal.ip_address, portal.port = ip_address, port  # type: ignore[attr-defined]
        tpg.network_portals.append(portal)
        return portal

    def LUN(self, tpg: FakeTPG, lun: int, storage_object: FakeStorageObject) -> FakeLUN:
        return FakeLUN(self, tpg, lun, storage_object)

    def NodeACL(self, tpg: FakeTPG, node_wwn: str, mode: str = "any") -> FakeNodeACL:
        assert mode == "create" and all(acl.node_wwn != node_wwn.lower() for acl in tpg.node_acls)
        return FakeNodeACL(self, tpg, node_wwn)

    def MappedLUN(self, acl: FakeNodeACL, mapped_lun: int, tpg_lun: FakeLUN) -> FakeMappedLUN:
        return FakeMappedLUN(self, acl, mapped_lun, tpg_lun)

    def created(self) -> list[tuple[str, str]]:
        return [(kind, key) for verb, kind, key in self.log if verb == "create"]


TARGET = volume_target("vol1")
NODE1, NODE2 = node_initiator("hv1"), node_initiator("hv2")


def export_spec(path: str = "/dev/drbd100", initiators: tuple[str, ...] = (NODE1,)) -> ExportSpec:
    return ExportSpec(target=TARGET, path=path, initiators=initiators, chap_user="cloudd-vol1", chap_password="s3cret-Passw0rd")


def test_ensure_builds_a_block_export_with_chap_acls() -> None:
    lio = FakeRtslib()
    LioExports("10.0.0.11:3260", rtslib=lio).ensure(export_spec())
    assert lio.created() == [
        ("blockStorageObject", "cloudd-volume-vol1"),
        ("Target", TARGET),
        ("TPG", f"{TARGET}/1"),
        ("NetworkPortal", "10.0.0.11:3260"),
        ("LUN", "1->cloudd-volume-vol1"),
        ("NodeACL", NODE1),
        ("MappedLUN", f"{NODE1}/1"),
    ]
    tpg = lio.targets[0].tpgs[0]
    assert tpg.enable and tpg.attributes == {"authentication": "1", "generate_node_acls": "0"}
    acl = tpg.node_acls[0]
    assert (acl.chap_userid, acl.chap_password) == ("cloudd-vol1", "s3cret-Passw0rd")
    assert acl.mapped_luns[0].tpg_lun is tpg.luns[0] and tpg.luns[0].lun == 1


def test_ensure_uses_fileio_for_a_regular_file_and_is_idempotent(tmp_path: Path) -> None:
    image = tmp_path / "vol1.raw"
    image.write_bytes(b"\0" * 4096)
    lio = FakeRtslib()
    exports = LioExports("[fd00::11]:3260", rtslib=lio)
    exports.ensure(export_spec(path=str(image)))
    assert lio.storage_objects[0].plugin == "fileio" and lio.storage_objects[0].size == 4096
    assert ("NetworkPortal", "[fd00::11]:3260") in lio.created()
    before = len(lio.log)
    exports.ensure(export_spec(path=str(image)))
    assert lio.log[before:] == []
    state = exports.exports()[TARGET]
    assert (state.path, state.initiators, state.chap_users, state.sessions) == (str(image), (NODE1,), ("cloudd-vol1",), 0)


def test_ensure_removes_extra_acls_and_follows_a_new_path() -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    exports.ensure(export_spec(initiators=(NODE1, NODE2)))
    start = len(lio.log)
    exports.ensure(export_spec(initiators=(NODE2,)))
    assert lio.log[start:] == [("delete", "NodeACL", NODE1)]
    start = len(lio.log)
    exports.ensure(export_spec(path="/dev/drbd101", initiators=(NODE2,)))
    assert lio.log[start:start + 3] == [
        ("delete", "Target", TARGET), ("delete", "blockStorageObject", "cloudd-volume-vol1"), ("create", "blockStorageObject", "cloudd-volume-vol1"),
    ]
    assert exports.exports()[TARGET].path == "/dev/drbd101"


def test_set_initiators_adds_the_new_acl_before_deleting_the_old() -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    exports.ensure(export_spec(initiators=(NODE1,)))
    start = len(lio.log)
    exports.set_initiators(TARGET, (NODE2,))
    assert lio.log[start:] == [("create", "NodeACL", NODE2), ("create", "MappedLUN", f"{NODE2}/1"), ("delete", "NodeACL", NODE1)]
    acl = lio.targets[0].tpgs[0].node_acls[0]
    assert (acl.node_wwn, acl.chap_userid, acl.chap_password) == (NODE2, "cloudd-vol1", "s3cret-Passw0rd")
    with pytest.raises(StorageError, match="not exported"):
        exports.set_initiators(volume_target("other"), (NODE1,))


def test_remove_deletes_target_then_storage_object_and_is_quiet_when_gone() -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    exports.ensure(export_spec())
    start = len(lio.log)
    exports.remove(TARGET)
    assert lio.log[start:] == [("delete", "Target", TARGET), ("delete", "blockStorageObject", "cloudd-volume-vol1")]
    exports.remove(TARGET)
    assert exports.exports() == {}


def test_exports_only_lists_our_targets_and_counts_sessions() -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    exports.ensure(export_spec(initiators=(NODE1, NODE2)))
    FakeTarget(lio, "iqn.2003-01.org.linux-iscsi.host:sn.1234")
    lio.targets[0].tpgs[0].node_acls[0].session = {"id": 7, "state": "LOGGED_IN"}
    listed = exports.exports()
    assert list(listed) == [TARGET] and listed[TARGET].sessions == 1


def write_counters(directory: Path, group: str, commands: str, values: tuple[int, int, int]) -> str:
    stats = directory / "statistics" / group
    stats.mkdir(parents=True)
    for name, value in zip(("read_mbytes", commands, "write_mbytes"), values):
        (stats / name).write_text(f"{value}\n")
    return str(directory)


def test_stats_read_configfs_counters_when_the_objects_have_a_path(tmp_path: Path) -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    exports.ensure(export_spec(initiators=(NODE1, NODE2)))
    assert exports.stats(TARGET).read_bytes == 0  # fake objects without configfs files: zeros
    tpg = lio.targets[0].tpgs[0]
    tpg.luns[0].path = write_counters(tmp_path / "lun_1", "scsi_tgt_port", "in_cmds", (3, 1200, 5))
    acl = tpg.node_acls[0]
    acl.session = {"id": 7, "state": "LOGGED_IN"}
    acl.mapped_luns[0].path = write_counters(tmp_path / "acl_lun_1", "scsi_auth_intr", "num_cmds", (2, 800, 1))
    stats = exports.stats(TARGET)
    assert (stats.read_bytes, stats.read_ops, stats.write_bytes, stats.write_ops) == (3 << 20, 1200, 5 << 20, 0)
    assert stats.per_session == {"7": (2 << 20, 800, 1 << 20, 0)}
    assert exports.stats(volume_target("other")).per_session == {}


def test_lio_refuses_bad_specs_before_touching_rtslib() -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    bad = [
        ExportSpec("iqn.2003-01.org.other:x", "/dev/drbd100", (NODE1,), "u", "password1234"),
        ExportSpec(TARGET, "relative/path", (NODE1,), "u", "password1234"),
        ExportSpec(TARGET, "/dev/drbd100", ("not an iqn",), "u", "password1234"),
        ExportSpec(TARGET, "/dev/drbd100", (NODE1,), "user name", "password1234"),
        ExportSpec(TARGET, "/dev/drbd100", (NODE1,), "u", "pass word\n"),
    ]
    for spec in bad:
        with pytest.raises(StorageError):
            exports.ensure(spec)
    assert lio.log == []
    for portal in ("10.0.0.11", "host:3260", "fd00::1:3260", "10.0.0.11:99999"):
        with pytest.raises(StorageError, match="invalid portal"):
            parse_portal(portal)


def test_names_are_matched_as_lio_stores_them_lowercased() -> None:
    lio = FakeRtslib()
    exports = LioExports("10.0.0.11:3260", rtslib=lio)
    # volume ids are lowercase now; a target made by hand (or an older cloudd) may not be
    mixed = ExportSpec(volume_target("vol7").replace("vol7", "Vol7"), "/dev/drbd107", (node_initiator("HV1"),), "cloudd-vol7", "s3cret-Passw0rd")
    exports.ensure(mixed)
    start = len(lio.log)
    exports.ensure(mixed)
    assert lio.log[start:] == []
    assert list(exports.exports()) == [volume_target("vol7")]
    exports.remove(volume_target("vol7"))
    assert lio.storage_objects == [] and lio.targets == []


def test_underscores_are_refused_because_lio_refuses_them() -> None:
    exports = LioExports("10.0.0.11:3260", rtslib=FakeRtslib())
    with pytest.raises(StorageError, match="invalid volume id"):
        volume_target("my_vol")  # refused before any target is named after it
    with pytest.raises(StorageError, match="'_' is not allowed"):
        exports.ensure(ExportSpec("iqn.2026-11.io.cloudd:volume:my_vol", "/dev/drbd100", (NODE1,), "u", "password1234"))
    with pytest.raises(StorageError, match="'_' is not allowed"):
        exports.ensure(ExportSpec(TARGET, "/dev/drbd100", (node_initiator("hv_1"),), "u", "password1234"))


def test_rtslib_errors_become_storage_errors() -> None:
    lio = FakeRtslib()

    def refuse(name: str, dev: str) -> None:
        raise FakeRTSLibError(f"Device {dev} is already in use")

    lio.BlockStorageObject = refuse  # type: ignore[method-assign,assignment]
    with pytest.raises(StorageError, match="already in use"):
        LioExports("10.0.0.11:3260", rtslib=lio).ensure(export_spec())


def test_lio_unavailable_reason_here_and_on_a_simulated_host(tmp_path: Path) -> None:
    reason = lio_unavailable_reason()
    assert isinstance(reason, str) and reason  # no rtslib-fb in the venv, no LIO/configfs on this kernel
    assert lio_unavailable_reason(configfs_dir=str(tmp_path), module="json") is None
    assert "LIO/configfs" in str(lio_unavailable_reason(configfs_dir=str(tmp_path / "none"), module="json"))
    assert "rtslib-fb" in str(lio_unavailable_reason(configfs_dir=str(tmp_path), module="no_such_module_here"))
