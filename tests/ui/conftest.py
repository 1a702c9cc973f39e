"""Browser tests: Playwright for Python driving Debian's chromium (never a downloaded browser)
against a real cluster on 127.0.0.203-205. Screenshots go to tests/ui/artifacts/."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster.harness import LocalCluster, add_ui_catalog

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def browser_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 3-node cluster (libvirt's test driver) with a flavor, an OS image and an ISO."""
    c = LocalCluster(tmp_path_factory.mktemp("browser"), first_host=203)
    try:
        c.init(3)
        with c.api("node1") as admin:
            add_ui_catalog(admin)
            admin.post("/api/v1/pools", json={"name": "team", "limits": {"vcpus": 4, "ram_mb": 2048, "vms": 3}}).raise_for_status()
            admin.post("/api/v1/users", json={"name": "dana", "password": "dana-pass-1"}).raise_for_status()
            admin.patch("/api/v1/users/dana", json={"pool": "team"}).raise_for_status()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/install.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """Where this test's screenshots go (printed, so a CI log says where to look)."""
    path = ARTIFACTS / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {path}")
    return path
