"""The catalog's admin pages over HTTP against a real cluster: flavors and images made and
deleted through the forms, field errors that change nothing, the API's refusals shown,
403 for users, CSRF refusal, escaping."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.cluster.harness import LocalCluster, add_ui_catalog
from tests.cluster.test_ui import Browser, field_error, logged_in

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def catalog_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 1-node cluster on 127.0.0.245 with the UI catalog (flavor tiny, images busybox and
    rescue-cd), the user alice, and her VM web1 made from tiny and busybox."""
    c = LocalCluster(tmp_path_factory.mktemp("ui-catalog"), first_host=245)
    try:
        c.init(1)
        with c.api("node1") as admin:
            add_ui_catalog(admin)
            admin.post("/api/v1/users", json={"name": "alice", "password": "alice-pass-1"}).raise_for_status()
            vm = admin.post("/api/v1/vms", json={"name": "web1", "flavor": "tiny", "image": "busybox", "owner": "alice", "power": "stopped"})
            assert vm.status_code == 202, vm.text
        yield c
    finally:
        c.close()


@pytest.fixture
def admin(catalog_cluster: LocalCluster) -> Iterator[Browser]:
    with logged_in(catalog_cluster, "node1", "admin", catalog_cluster.password) as browser:
        yield browser


def api_list(cluster: LocalCluster, kind: str) -> list[dict[str, Any]]:
    with cluster.api("node1") as client:
        reply = client.get(f"/api/v1/{kind}", params={"limit": 1000})
        reply.raise_for_status()
        return list(reply.json()["items"])


def image_named(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return next(i for i in api_list(cluster, "images") if i["name"] == name)


def test_an_admin_creates_and_deletes_a_flavor(catalog_cluster: LocalCluster, admin: Browser) -> None:
    listing = admin.get("/ui/admin/flavors")
    assert listing.status_code == 200 and 'data-flavor="tiny"' in listing.text
    assert '<a href="/ui/admin/flavors" class="active">Flavors</a>' in listing.text and 'href="/ui/admin/images"' in listing.text
    made = admin.post("/ui/admin/flavors", {"name": "medium", "vcpus": "2", "ram_mb": "2048", "disk_gb": "12.5"})
    assert made.status_code == 303 and made.headers["location"] == "/ui/admin/flavors?done=flavor-created&name=medium"
    shown = admin.get(made.headers["location"])
    assert "flavor medium created" in shown.text and 'data-flavor="medium"' in shown.text and "2.0 GiB" in shown.text
    medium = next(f for f in api_list(catalog_cluster, "flavors") if f["name"] == "medium")
    assert (medium["vcpus"], medium["ram_mb"], medium["disk_gb"]) == (2, 2048, 12.5)
    gone = admin.post("/ui/admin/flavors/medium/delete")
    assert gone.status_code == 303 and "flavor-deleted" in gone.headers["location"]
    assert "medium" not in [f["name"] for f in api_list(catalog_cluster, "flavors")]
    assert admin.post("/ui/admin/flavors/medium/delete").status_code == 404


def test_bad_flavor_fields_show_next_to_the_field_and_create_nothing(catalog_cluster: LocalCluster, admin: Browser) -> None:
    admin.get("/ui/admin/flavors")
    before = api_list(catalog_cluster, "flavors")
    zero = admin.post("/ui/admin/flavors", {"name": "zero", "vcpus": "0", "ram_mb": "512", "disk_gb": "1"})
    assert zero.status_code == 400 and field_error(zero.text, "vcpus") == "vcpus must be at least 1"
    assert 'value="zero"' in zero.text  # the form keeps what was typed
    words = admin.post("/ui/admin/flavors", {"name": "words", "vcpus": "two", "ram_mb": "512", "disk_gb": "1"})
    assert words.status_code == 400 and field_error(words.text, "vcpus") == "must be a whole number"
    dup = admin.post("/ui/admin/flavors", {"name": "tiny", "vcpus": "4", "ram_mb": "512", "disk_gb": "1"})
    assert dup.status_code == 409 and field_error(dup.text, "name") == "flavor tiny already exists"
    html = admin.post("/ui/admin/flavors", {"name": "<b>big</b>", "vcpus": "1", "ram_mb": "512", "disk_gb": "1"})
    assert html.status_code == 400 and field_error(html.text, "name") == "name has an invalid format"
    assert 'value="&lt;b&gt;big&lt;/b&gt;"' in html.text and "<b>big</b>" not in html.text
    assert api_list(catalog_cluster, "flavors") == before


def test_deleting_a_flavor_in_use_leaves_its_vms_their_sizes(catalog_cluster: LocalCluster, admin: Browser) -> None:
    """The API does not refuse this one (flavor.delete: VMs keep their sizes); the page says so."""
    with catalog_cluster.api("node1") as client:
        client.post("/api/v1/flavors", json={"name": "used", "vcpus": 1, "ram_mb": 256, "disk_gb": 2}).raise_for_status()
        vm = client.post("/api/v1/vms", json={"name": "web2", "flavor": "used", "image": None, "owner": "alice", "power": "stopped"})
        assert vm.status_code == 202, vm.text
    assert "keep their sizes" in admin.get("/ui/admin/flavors").text
    assert admin.post("/ui/admin/flavors/used/delete").status_code == 303
    assert "used" not in [f["name"] for f in api_list(catalog_cluster, "flavors")]
    with catalog_cluster.api("node1") as client:
        web2 = client.get("/api/v1/vms/web2").json()
    assert (web2["vcpus"], web2["ram_mb"], web2["disk_gb"]) == (1, 256, 2)


def test_an_admin_registers_and_deletes_an_image(catalog_cluster: LocalCluster, admin: Browser) -> None:
    listing = admin.get("/ui/admin/images")
    assert listing.status_code == 200 and "/var/lib/cloudd/images/busybox.qcow2" in listing.text and "rescue-cd" in listing.text
    made = admin.post("/ui/admin/images", {
        "name": "debian-12", "format": "raw", "path": "/srv/images/debian-12.raw", "size_gb": "8",
        "os": "debian", "min_ram_mb": "256", "min_disk_gb": "", "public": "true",
    })
    assert made.status_code == 303 and made.headers["location"] == "/ui/admin/images?done=image-registered&name=debian-12", made.text
    image = image_named(catalog_cluster, "debian-12")
    assert (image["format"], image["path"], image["size_gb"], image["os"], image["min_ram_mb"], image["public"]) == (
        "raw", "/srv/images/debian-12.raw", 8, "debian", 256, True)
    shown = admin.get(made.headers["location"])
    assert "image debian-12 registered" in shown.text and "/srv/images/debian-12.raw" in shown.text
    private = admin.post("/ui/admin/images", {"name": "private-one", "format": "qcow2", "path": "/srv/p.qcow2", "size_gb": "1"})
    assert private.status_code == 303 and image_named(catalog_cluster, "private-one")["public"] is False
    for name in ("debian-12", "private-one"):
        gone = admin.post(f"/ui/admin/images/{image_named(catalog_cluster, name)['id']}/delete")
        assert gone.status_code == 303 and gone.headers["location"] == f"/ui/admin/images?done=image-deleted&name={name}"
    assert not {"debian-12", "private-one"} & {i["name"] for i in api_list(catalog_cluster, "images")}
    assert admin.post(f"/ui/admin/images/{image['id']}/delete").status_code == 404


def test_bad_image_fields_show_next_to_the_field_and_register_nothing(catalog_cluster: LocalCluster, admin: Browser) -> None:
    admin.get("/ui/admin/images")
    before = api_list(catalog_cluster, "images")
    good = {"name": "new-image", "format": "qcow2", "path": "/srv/new.qcow2", "size_gb": "1", "public": "true"}
    fmt = admin.post("/ui/admin/images", {**good, "format": "vmdk"})
    assert fmt.status_code == 400 and field_error(fmt.text, "format") == "format must be one of: qcow2, raw, kernel, iso"
    path = admin.post("/ui/admin/images", {**good, "path": "relative/new.qcow2"})
    assert path.status_code == 400 and field_error(path.text, "path") == "path must be an absolute path"
    assert 'value="relative/new.qcow2"' in path.text
    size = admin.post("/ui/admin/images", {**good, "size_gb": ""})
    assert size.status_code == 400 and field_error(size.text, "size_gb") == "required"
    ram = admin.post("/ui/admin/images", {**good, "min_ram_mb": "lots"})
    assert ram.status_code == 400 and field_error(ram.text, "min_ram_mb") == "must be a whole number"
    dup = admin.post("/ui/admin/images", {**good, "name": "busybox"})
    assert dup.status_code == 409 and field_error(dup.text, "name") == "an image named busybox already exists"
    assert api_list(catalog_cluster, "images") == before


def test_deleting_an_image_in_use_shows_the_apis_refusal(catalog_cluster: LocalCluster, admin: Browser) -> None:
    busybox = image_named(catalog_cluster, "busybox")
    admin.get("/ui/admin/images")
    refused = admin.post(f"/ui/admin/images/{busybox['id']}/delete")
    assert refused.status_code == 409
    assert field_error(refused.text, f"image:{busybox['id']}") == f"image {busybox['id']} is used by VMs: web1"
    assert image_named(catalog_cluster, "busybox") == busybox


def test_html_in_an_image_name_is_escaped(catalog_cluster: LocalCluster, admin: Browser) -> None:
    admin.get("/ui/admin/images")
    name = '<script>alert("x")</script>'
    made = admin.post("/ui/admin/images", {"name": name, "format": "iso", "path": "/srv/<i>x</i>.iso", "size_gb": "1", "public": "true"})
    image = image_named(catalog_cluster, name)
    # the notice names it by id: a notice only ever shows plain names
    assert made.status_code == 303 and made.headers["location"] == f"/ui/admin/images?done=image-registered&name={image['id']}"
    shown = admin.get(made.headers["location"])
    assert f"image {image['id']} registered" in shown.text
    assert "<script>alert" not in shown.text and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in shown.text
    assert "<i>x</i>" not in shown.text and "/srv/&lt;i&gt;x&lt;/i&gt;.iso" in shown.text
    assert admin.post(f"/ui/admin/images/{image['id']}/delete").status_code == 303


def test_users_get_403_on_the_pages_and_their_posts(catalog_cluster: LocalCluster) -> None:
    flavors, images = api_list(catalog_cluster, "flavors"), api_list(catalog_cluster, "images")
    with logged_in(catalog_cluster, "node1", "alice", "alice-pass-1") as alice:
        own = alice.get("/ui/vms")
        assert own.status_code == 200 and "/ui/admin/flavors" not in own.text and "/ui/admin/images" not in own.text
        for path in ("/ui/admin/flavors", "/ui/admin/images"):
            assert alice.get(path).status_code == 403, path
        assert alice.post("/ui/admin/flavors", {"name": "mine", "vcpus": "1", "ram_mb": "512", "disk_gb": "1"}).status_code == 403
        assert alice.post("/ui/admin/flavors/tiny/delete").status_code == 403
        assert alice.post("/ui/admin/images", {"name": "mine", "format": "qcow2", "path": "/srv/m.qcow2", "size_gb": "1"}).status_code == 403
        assert alice.post(f"/ui/admin/images/{images[0]['id']}/delete").status_code == 403
    assert api_list(catalog_cluster, "flavors") == flavors and api_list(catalog_cluster, "images") == images


def test_a_post_without_the_right_csrf_token_is_refused(catalog_cluster: LocalCluster, admin: Browser) -> None:
    admin.get("/ui/admin/flavors")
    flavors, images = api_list(catalog_cluster, "flavors"), api_list(catalog_cluster, "images")
    flavor = {"name": "forged", "vcpus": "1", "ram_mb": "512", "disk_gb": "1"}
    missing = admin.post("/ui/admin/flavors", flavor, csrf=False)
    assert missing.status_code == 403 and "CSRF" in missing.text
    assert admin.client.post("/ui/admin/flavors", data={**flavor, "csrf": "0" * 40}).status_code == 403
    assert admin.post("/ui/admin/flavors/tiny/delete", csrf=False).status_code == 403
    image = {"name": "forged", "format": "qcow2", "path": "/srv/f.qcow2", "size_gb": "1"}
    assert admin.post("/ui/admin/images", image, csrf=False).status_code == 403
    rescue = image_named(catalog_cluster, "rescue-cd")
    assert admin.client.post(f"/ui/admin/images/{rescue['id']}/delete", data={"csrf": "0" * 40}).status_code == 403
    assert api_list(catalog_cluster, "flavors") == flavors and api_list(catalog_cluster, "images") == images
