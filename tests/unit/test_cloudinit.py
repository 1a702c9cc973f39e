"""The NoCloud seed image: read back with pycdlib and with the host's own ISO tools."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cloudd.ops.cloudinit import MAX_SEED_BYTES, SeedData, meta_data, user_data, write_seed
from cloudd.ops.compute import ComputeError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
INJECTION = "x\nlocal-hostname: evil"


def read_iso(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """The volume identifier and the files by Rock Ridge name."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    files = {}
    for record in iso.list_children(rr_path="/"):
        if record.is_file():
            name = record.rock_ridge.name().decode()
            content = io.BytesIO()
            iso.get_file_from_iso_fp(content, rr_path=f"/{name}")
            files[name] = content.getvalue()
    label = iso.pvd.volume_identifier.rstrip()
    iso.close()
    return label, files


def test_image_holds_the_files_under_their_names(tmp_path: Path) -> None:
    seed = SeedData("i-1", "web-1", (KEY,))
    assert write_seed(tmp_path / "seed.iso", seed)
    label, files = read_iso(tmp_path / "seed.iso")
    assert label == b"cidata"
    assert files == {"meta-data": meta_data(seed).encode(), "user-data": user_data(seed).encode()}
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


def test_network_config_only_when_given(tmp_path: Path) -> None:
    network = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
    write_seed(tmp_path / "seed.iso", SeedData("i-1", "web-1", network_config=network))
    assert read_iso(tmp_path / "seed.iso")[1]["network-config"] == network.encode()


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo missing (apt-get install genisoimage)")
def test_isoinfo_sees_label_and_names(tmp_path: Path) -> None:
    iso = str(tmp_path / "seed.iso")
    write_seed(Path(iso), SeedData("i-1", "web-1", user_data="#!/bin/sh\necho hi\n"))
    info = subprocess.run(["isoinfo", "-d", "-i", iso], capture_output=True, text=True, check=True).stdout
    assert "Volume id: cidata" in info
    for option in ("-R", "-J"):  # Rock Ridge (Linux), Joliet (Windows)
        listing = subprocess.run(["isoinfo", option, "-f", "-i", iso], capture_output=True, text=True, check=True)
        assert listing.stdout.split() == ["/meta-data", "/user-data"]
    script = subprocess.run(["isoinfo", "-R", "-x", "/user-data", "-i", iso], capture_output=True, check=True)
    assert script.stdout == b"#!/bin/sh\necho hi\n"


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid missing (util-linux)")
def test_blkid_sees_label(tmp_path: Path) -> None:
    write_seed(tmp_path / "seed.iso", SeedData("i-1", "web-1"))
    blkid = ["blkid", "-p", "-o", "value", "-s", "LABEL", str(tmp_path / "seed.iso")]
    assert subprocess.run(blkid, capture_output=True, text=True, check=True).stdout.strip() == "cidata"


def test_same_seed_is_kept_and_a_changed_one_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    assert write_seed(path, SeedData("i-1", "web-1", (KEY,)))
    mtime = path.stat().st_mtime_ns
    assert not write_seed(path, SeedData("i-1", "web-1", (KEY,)))
    assert path.stat().st_mtime_ns == mtime
    assert write_seed(path, SeedData("i-1", "web-2", (KEY,)))
    assert yaml.safe_load(read_iso(path)[1]["meta-data"])["local-hostname"] == "web-2"


def test_dropped_network_config_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    write_seed(path, SeedData("i-1", "web-1", network_config="version: 2\n"))
    assert write_seed(path, SeedData("i-1", "web-1"))
    assert "network-config" not in read_iso(path)[1]


def test_garbage_at_the_path_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "seed.iso").write_bytes(b"not an iso")
    assert write_seed(tmp_path / "seed.iso", SeedData("i-1", "web-1"))
    assert read_iso(tmp_path / "seed.iso")[0] == b"cidata"


def test_default_user_data_is_cloud_config(tmp_path: Path) -> None:
    text = user_data(SeedData("i-1", "web-1", (KEY,)))
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"hostname": "web-1", "ssh_authorized_keys": [KEY]}
    assert yaml.safe_load(user_data(SeedData("i-1", "web-1"))) == {"hostname": "web-1"}


def test_user_data_is_verbatim_and_keys_still_reach_meta_data(tmp_path: Path) -> None:
    mime = 'Content-Type: multipart/mixed; boundary="==b=="\nMIME-Version: 1.0\n\n--==b==--\n'
    seed = SeedData("i-1", "web-1", (KEY,), user_data=mime)
    write_seed(tmp_path / "seed.iso", seed)
    files = read_iso(tmp_path / "seed.iso")[1]
    assert files["user-data"] == mime.encode()
    assert yaml.safe_load(files["meta-data"])["public-keys"] == [KEY]


def test_values_cannot_inject_yaml_keys() -> None:
    parsed = yaml.safe_load(meta_data(SeedData(INJECTION, "web-1", (INJECTION, KEY))))
    assert parsed == {"instance-id": INJECTION, "local-hostname": "web-1", "public-keys": [INJECTION, KEY]}
    lines = meta_data(SeedData(INJECTION, "web-1", (INJECTION,))).splitlines()
    assert [line for line in lines if line.startswith("local-hostname")] == ['local-hostname: "web-1"']
    assert yaml.safe_load(user_data(SeedData("i-1", "web-1", (INJECTION,))))["ssh_authorized_keys"] == [INJECTION]


@given(st.text())
def test_any_value_survives_yaml(value: str) -> None:
    assert yaml.safe_load(meta_data(SeedData(value, "web-1", (value,)))) == {
        "instance-id": value,
        "local-hostname": "web-1",
        "public-keys": [value],
    }


def test_oversized_seed_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ComputeError, match="limit"):
        write_seed(tmp_path / "seed.iso", SeedData("i-1", "web-1", user_data="x" * MAX_SEED_BYTES))
    assert list(tmp_path.iterdir()) == []


def test_write_failure_is_a_compute_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    (tmp_path / "seed.iso").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(ComputeError, match="writing cloud-init seed"):
        write_seed(tmp_path / "seed.iso", SeedData("i-1", "web-1"))
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


def test_the_seed_is_padded_for_probers_that_read_68_kib_at_once(tmp_path: Path) -> None:
    from cloudd.ops.cloudinit import MIN_SEED_BYTES

    path = tmp_path / "seed.iso"
    write_seed(path, SeedData("i-1", "small"))
    assert path.stat().st_size >= MIN_SEED_BYTES >= 0x11000


def test_a_swap_disk_is_formatted_once_and_mounted_by_the_generated_user_data() -> None:
    doc = yaml.safe_load(user_data(SeedData("i-1", "web", swap_device="/dev/disk/by-id/virtio-swap")))
    assert doc["mounts"] == [["/dev/disk/by-id/virtio-swap", "none", "swap", "sw", "0", "0"]]
    sh, dash_c, script, arg0, device = doc["bootcmd"][0]
    assert (sh, dash_c, arg0, device) == ("sh", "-c", "swap", "/dev/disk/by-id/virtio-swap")
    assert "mkswap" in script and "blkid" in script  # never reformats a disk that holds data
    assert "bootcmd" not in yaml.safe_load(user_data(SeedData("i-1", "web")))
