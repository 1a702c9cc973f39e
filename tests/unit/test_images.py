"""Image commands: registering by path, uploads (create → done/failed), copies, deletion."""

from __future__ import annotations


import pytest

from cloudd.commands.images import MAX_IMAGES_PER_USER
from tests.factories import PW_HASH, Replica, admit, initialized
from tests.unit.test_compute_commands import unchanged

SHA = "ab" * 32


def cluster() -> Replica:
    replica = initialized()
    admit(replica, "n2", 2)
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    replica.ok("user.create", {"name": "carol", "role": "user", "password_hash": PW_HASH})
    return replica


def create(replica: Replica, image_id: str = "img1", **extra: object) -> dict:
    args = {"id": image_id, "name": f"cloud-{image_id}", "owner": "bob", "public": False, "format": "qcow2", **extra}
    return replica.ok("image.create", args)


def done(replica: Replica, image_id: str = "img1", node: str = "n1", **extra: object) -> dict:
    args = {"id": image_id, "node": node, "size_bytes": 1234, "virtual_size_gb": 2.5, "sha256": SHA, **extra}
    return replica.ok("image.upload_done", args)


def test_an_upload_goes_from_uploading_to_ready_with_its_first_copy() -> None:
    replica = cluster()
    image = create(replica)
    assert image["state"] == "uploading" and image["copies"] == [] and image["size_gb"] == 0
    ready = done(replica)
    assert ready["state"] == "ready" and ready["copies"] == ["n1"]
    assert (ready["size_gb"], ready["size_bytes"], ready["sha256"]) == (2.5, 1234, SHA)


def test_a_refused_upload_leaves_the_image_in_error_with_the_reason() -> None:
    replica = cluster()
    create(replica)
    failed = replica.ok("image.upload_failed", {"id": "img1", "reason": "a qcow2 image with a backing file is not accepted"})
    assert failed["state"] == "error" and "backing file" in failed["error"]
    error = unchanged(replica, "image.upload_done", {"id": "img1", "node": "n1", "size_bytes": 1, "virtual_size_gb": 1, "sha256": SHA}, "conflict")
    assert error["details"] == {"state": "error"}


def test_upload_results_only_apply_while_uploading() -> None:
    replica = cluster()
    create(replica)
    done(replica)
    unchanged(replica, "image.upload_done", {"id": "img1", "node": "n2", "size_bytes": 1, "virtual_size_gb": 1, "sha256": SHA}, "conflict")
    unchanged(replica, "image.upload_failed", {"id": "img1", "reason": "late"}, "conflict")
    unchanged(replica, "image.upload_done", {"id": "nope", "node": "n1", "size_bytes": 1, "virtual_size_gb": 1, "sha256": SHA}, "not_found")


@pytest.mark.parametrize(
    "extra, code, words",
    [
        ({"format": "kernel"}, "invalid", "format"),
        ({"format": "vmdk"}, "invalid", "format"),
        ({"public": True}, "forbidden", "only admins"),
        ({"owner": "ghost"}, "not_found", "user ghost"),
        ({"name": ""}, "invalid", "name"),
        ({"path": "/x.qcow2"}, "invalid", "unknown field path"),
    ],
)
def test_create_refuses_bad_requests_and_changes_nothing(extra: dict, code: str, words: str) -> None:
    replica = cluster()
    args = {"id": "img1", "name": "cloud", "owner": "bob", "public": False, "format": "qcow2", **extra}
    assert words in unchanged(replica, "image.create", args, code)["message"]


def test_admins_create_public_images_and_names_are_unique_per_owner() -> None:
    replica = cluster()
    assert create(replica, "img1", owner="admin", name="debian", public=True)["public"] is True
    create(replica, "img2", name="debian")  # bob's own name space
    unchanged(replica, "image.create", {"id": "img3", "name": "debian", "owner": "bob", "public": False, "format": "iso"}, "conflict")
    unchanged(replica, "image.register", {"id": "img1", "name": "other", "owner": "admin", "public": True, "format": "raw", "path": "/x", "size_gb": 1}, "conflict")


def test_a_user_has_at_most_so_many_images() -> None:
    replica = cluster()
    for i in range(MAX_IMAGES_PER_USER):
        create(replica, f"i{i}")
    error = unchanged(replica, "image.create", {"id": "extra", "name": "extra", "owner": "bob", "public": False, "format": "raw"}, "conflict")
    assert str(MAX_IMAGES_PER_USER) in error["message"]
    create(replica, "carols", owner="carol")


def test_copies_are_recorded_once_and_only_for_ready_uploads() -> None:
    replica = cluster()
    create(replica)
    unchanged(replica, "image.copied", {"id": "img1", "node": "n2"}, "conflict")
    done(replica)
    assert replica.ok("image.copied", {"id": "img1", "node": "n2"})["copies"] == ["n1", "n2"]
    assert replica.ok("image.copied", {"id": "img1", "node": "n2"})["copies"] == ["n1", "n2"]
    unchanged(replica, "image.copied", {"id": "img1", "node": "ghost"}, "not_found")
    replica.ok("image.register", {"id": "byp", "name": "p", "owner": "admin", "public": True, "format": "qcow2", "path": "/p.qcow2", "size_gb": 1})
    unchanged(replica, "image.copied", {"id": "byp", "node": "n2"}, "invalid")


def test_register_by_path_is_ready_at_once_without_copies_and_takes_isos() -> None:
    replica = cluster()
    image = replica.ok("image.register", {"id": "iso1", "name": "installer", "owner": "admin", "public": True, "format": "iso", "path": "/srv/d.iso", "size_gb": 0.6})
    assert image["state"] == "ready" and "copies" not in image


def test_delete_is_refused_while_a_vm_uses_the_image_as_disk_or_cdrom() -> None:
    replica = cluster()
    create(replica, "img1")
    create(replica, "iso1", format="iso")
    replica.state.vms["v1"] = {"id": "v1", "name": "web", "image": "img1", "iso": None}
    replica.state.vms["v2"] = {"id": "v2", "name": "inst", "image": None, "iso": "iso1"}
    assert unchanged(replica, "image.delete", {"id": "img1"}, "conflict")["details"] == {"vms": ["web"]}
    assert unchanged(replica, "image.delete", {"id": "iso1"}, "conflict")["details"] == {"vms": ["inst"]}
    del replica.state.vms["v2"]
    assert replica.ok("image.delete", {"id": "iso1"}) == {"id": "iso1"}
    assert "iso1" not in replica.state.images
    unchanged(replica, "image.delete", {"id": "iso1"}, "not_found")


def test_a_retried_upload_done_returns_the_first_result() -> None:
    replica = cluster()
    create(replica)
    args = {"id": "img1", "node": "n1", "size_bytes": 1234, "virtual_size_gb": 2.5, "sha256": SHA}
    first = replica.do("image.upload_done", args, rid="up1")
    again = replica.do("image.upload_done", args, rid="up1")
    assert again["duplicate"] and again["result"] == first["result"]
