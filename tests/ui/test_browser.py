"""The web UI in a real browser: a user's VM from creation to an inserted ISO, their
password and logout; an admin's cluster overview and a node drain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.cluster, pytest.mark.slow]


def login(page: Any, url: str, user: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_a_user_creates_starts_and_equips_a_vm_then_changes_the_password(browser_cluster: LocalCluster, chromium: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    url = browser_cluster.nodes["node2"].url
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        login(page, url, "dana", "dana-pass-1")
        expect(page).to_have_url(re.compile(r"/ui/vms$"))
        expect(page.locator(".empty")).to_contain_text("no VMs yet")
        cookie = next(c for c in context.cookies() if c["name"] == "cloudd_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        page.screenshot(path=str(shots / "01-empty-vm-list.png"), full_page=True)

        page.click("text=Create VM")
        expect(page.locator("aside")).to_contain_text("Pool team")
        page.fill("input[name=name]", "web1")
        page.select_option("select[name=flavor]", "tiny")
        page.select_option("select[name=image]", label="busybox (qcow2)")
        page.uncheck("input[name=power]")  # created stopped: started below
        page.screenshot(path=str(shots / "02-create-form.png"), full_page=True)
        page.click("#vm-create button[type=submit]")
        expect(page.locator("h1")).to_contain_text("web1")
        # the page follows the create task by itself until the VM is stopped
        expect(page.locator("h1 .badge")).to_have_text("stopped", timeout=30_000)
        page.screenshot(path=str(shots / "03-vm-stopped.png"), full_page=True)

        page.click("button[data-action=start]")
        expect(page.locator("h1 .badge")).to_have_text("running", timeout=30_000)
        expect(page.locator("#tasks")).to_contain_text("succeeded")
        expect(page.locator("#console-link")).to_have_attribute("href", re.compile(r"^/ui/vms/[0-9a-f]+/console$"))
        page.screenshot(path=str(shots / "04-vm-running.png"), full_page=True)

        page.select_option("#iso-attach select[name=image]", label="rescue-cd")
        page.click("#iso-attach button[type=submit]")
        expect(page.locator("#iso-current")).to_contain_text("rescue-cd")
        vm_id = page.url.split("/ui/vms/")[1].split("?")[0]
        with browser_cluster.api("node1") as admin:
            vm = admin.get(f"/api/v1/vms/{vm_id}").json()
            iso = admin.get("/api/v1/images/rescue-cd").json()
        assert vm["state"] == "running" and vm["iso"] == iso["id"] and vm["owner"] == "dana"
        page.screenshot(path=str(shots / "05-iso-inserted.png"), full_page=True)

        page.click("nav >> text=My VMs")
        expect(page.locator("#vm-list")).to_contain_text("web1")
        expect(page.locator("#vm-list")).to_contain_text("running")

        # a refused form comes back with the message next to the field and creates nothing
        page.click("text=Create VM")
        page.fill("input[name=name]", "web1")
        page.select_option("select[name=flavor]", "tiny")
        page.click("#vm-create button[type=submit]")
        expect(page.locator('.field-error[data-field="name"]')).to_contain_text("already have a VM named web1")
        expect(page.locator("input[name=name]")).to_have_value("web1")
        page.screenshot(path=str(shots / "05b-field-error.png"), full_page=True)
        with browser_cluster.api("node1") as admin:
            assert [v["name"] for v in admin.get("/api/v1/vms", params={"owner": "dana"}).json()["items"]] == ["web1"]

        page.click("nav >> text=Account")
        page.fill("input[name=current_password]", "dana-pass-1")
        page.fill("#password-form input[name=password]", "dana-new-pass-2")
        page.fill("input[name=password_again]", "dana-new-pass-2")
        page.click("#password-form button[type=submit]")
        expect(page.locator(".banner.good")).to_contain_text("password was changed")
        page.screenshot(path=str(shots / "06-password-changed.png"), full_page=True)

        page.click("header >> text=Log out")
        expect(page).to_have_url(re.compile(r"/login$"))
        assert not any(c["name"] == "cloudd_session" for c in context.cookies())
        login(page, url, "dana", "dana-pass-1")
        expect(page.locator(".banner.bad")).to_contain_text("wrong username or password")
        login(page, url, "dana", "dana-new-pass-2")
        expect(page).to_have_url(re.compile(r"/ui/vms$"))
        page.screenshot(path=str(shots / "07-logged-in-again.png"), full_page=True)
    finally:
        context.close()


def test_an_admin_sees_the_cluster_and_drains_a_node(browser_cluster: LocalCluster, chromium: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    url = browser_cluster.nodes["node1"].url
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        login(page, url, "admin", browser_cluster.password)
        expect(page).to_have_url(re.compile(r"/ui/admin$"))
        leader = browser_cluster.wait_leader()
        expect(page.locator("#leader")).to_have_text(leader)
        for name in ("node1", "node2", "node3"):
            expect(page.locator(f'tr[data-node="{name}"]')).to_contain_text("up")
        expect(page.locator(f'tr[data-node="{leader}"] .badge.leader')).to_be_visible()
        assert page.locator(".meter").count() == 9  # CPU, RAM and disk of 3 nodes
        page.screenshot(path=str(shots / "01-overview.png"), full_page=True)

        target = next(n for n in ("node3", "node2") if n != leader)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click(f'button[data-drain="{target}"]')
        expect(page.locator(".banner.good[role=status]")).to_contain_text(f"{target} is in maintenance")
        with browser_cluster.api("node1") as admin:
            assert admin.get(f"/api/v1/nodes/{target}").json()["maintenance"] is True
        wait_for(lambda: _status(browser_cluster, target) == "maintenance", what=f"{target} in maintenance")
        page.reload()
        expect(page.locator(f'tr[data-node="{target}"]')).to_contain_text("maintenance")
        expect(page.locator(f'tr[data-node="{target}"] button')).to_have_text("End maintenance")
        page.screenshot(path=str(shots / "02-drained.png"), full_page=True)

        page.click("nav >> text=All VMs")
        expect(page.locator("#all-vms")).to_contain_text("web1")
        page.select_option("select[name=owner]", "dana")
        page.click("#vm-filters button[type=submit]")
        expect(page.locator("#all-vms tbody tr")).to_have_count(1)
        page.click("nav >> text=Audit log")
        expect(page.locator("#events")).to_contain_text("node.maintenance_set")
        page.screenshot(path=str(shots / "03-audit-log.png"), full_page=True)

        page.click("nav >> text=Users & pools")
        expect(page.locator("#users")).to_contain_text("dana")
        page.screenshot(path=str(shots / "04-users-and-pools.png"), full_page=True)
        page.click("nav >> text=Rebalance")
        page.click("#rebalance-preview button[type=submit]")
        expect(page.locator("#preview-result")).to_be_visible()
        page.screenshot(path=str(shots / "05-rebalance-preview.png"), full_page=True)
    finally:
        context.close()


def _status(cluster: LocalCluster, node: str) -> str:
    with cluster.api("node1") as admin:
        return str(admin.get(f"/api/v1/nodes/{node}").json()["status"])
