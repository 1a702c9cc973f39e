"""The VNC console in a real browser: noVNC shows a real TCG guest's screen.

Two real nodes with embedded libvirts (``tests.cluster.test_console``); the guest runs on
node2, the browser talks to node1 only. The user logs in, opens the console page, noVNC
connects through node1's proxy and node2's cloudd, and the canvas shows the guest's text
console (pixels of more than one colour); typing at its login prompt changes the screen. The websocket frames show the proxy offered
the browser security type None: the VNC password never reaches it. A token used once is
refused the second time with a clear reason, seen from the browser's own WebSocket.
Screenshots: ``tests/ui/artifacts/<test>/``.

Hosts 127.0.0.215-216, VNC ports 7750-7769.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import wait_for
from tests.cluster.test_console import ConsoleCluster, console_world
from tests.e2e.conftest import guest  # noqa: F401  (the fixture: the tiny guest, built once)

pytestmark = [pytest.mark.browser, pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

CANVAS_COLOURS = """() => {
  const canvas = document.querySelector("#console-screen canvas");
  if (!canvas || !canvas.width) return null;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < data.length; i += 4) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  return {width: canvas.width, height: canvas.height, colours: seen.size};
}"""
CANVAS_DIGEST = """() => {
  const canvas = document.querySelector("#console-screen canvas");
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let h = 0;
  for (let i = 0; i < data.length; i += 4) h = (Math.imul(h, 31) + data[i] + (data[i + 1] << 8) + (data[i + 2] << 16)) | 0;
  return h;
}"""
REUSE_TOKEN = """async (url) => {
  const attempt = () => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    let bytes = 0;
    ws.onmessage = (event) => { bytes += event.data.byteLength; ws.close(); };
    ws.onclose = (event) => resolve({code: event.code, reason: event.reason, bytes});
  });
  return [await attempt(), await attempt()];
}"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, guest: Path) -> Iterator[tuple[ConsoleCluster, dict[str, Any]]]:  # noqa: F811
    # a short name: libvirt refuses monitor socket paths past ~108 characters
    cluster = ConsoleCluster(tmp_path_factory.mktemp("uicon"), first_host=215, first_vnc=7750)
    try:
        yield cluster, console_world(cluster, guest)
    finally:
        cluster.close()


def vnc_password(cluster: ConsoleCluster, vm_id: str) -> str:
    """The guest's VNC password, from node2's libvirt (the API never shows it)."""
    xml = cluster.nodes["node2"].data_dir / "libvirt" / "etc" / "qemu" / f"cloudd-{vm_id}.xml"
    graphics = ET.fromstring(xml.read_text()).find("./devices/graphics[@type='vnc']")
    assert graphics is not None and graphics.get("passwd")
    return str(graphics.get("passwd"))


def test_the_console_page_shows_the_guests_screen(world: tuple[ConsoleCluster, dict[str, Any]], chromium: Any, shots: Path) -> None:
    from playwright.sync_api import expect

    cluster, w = world
    url = cluster.nodes["node1"].url
    password = vnc_password(cluster, w["vm"])
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    frames: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload if isinstance(payload, bytes) else payload.encode())))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # CSP violations are console errors; a missing file is a failed response (the favicon: none yet)
    page.on("console", lambda msg: msg.type == "error" and not msg.text.startswith("Failed to load resource") and errors.append(msg.text))
    page.on("response", lambda r: r.status >= 400 and not r.url.endswith("/favicon.ico") and errors.append(f"{r.status} {r.url}"))
    try:
        page.goto(url + "/login")
        page.fill("input[name=username]", "vera")
        page.fill("input[name=password]", "vera-pass-1")
        page.click("button[type=submit]")
        expect(page).to_have_url(re.compile(r"/ui/vms$"))

        response = page.goto(f"{url}/ui/vms/{w['vm']}/console")
        assert response is not None and response.status == 200
        assert password not in page.content()
        policy = response.headers["content-security-policy"]
        assert "no-referrer" == response.headers["referrer-policy"] and "connect-src 'self'" in policy and "object-src 'none'" in policy
        expect(page.locator("#console-status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#console-status")).to_have_text("Connected")
        shown = wait_for(lambda: (c := page.evaluate(CANVAS_COLOURS)) and c["colours"] > 1 and c, 60, interval=1, what="the guest's screen on the canvas")
        assert shown["width"] >= 640 and shown["height"] >= 400
        page.screenshot(path=str(shots / "console.png"), full_page=True)
        page.locator("#console-screen canvas").screenshot(path=str(shots / "console-canvas.png"))

        before = page.evaluate(CANVAS_DIGEST)  # the login prompt; typing reaches the guest
        page.locator("#console-screen canvas").click()
        page.keyboard.type("root")
        page.keyboard.press("Enter")
        wait_for(lambda: page.evaluate(CANVAS_DIGEST) != before, 30, interval=0.5, what="the guest's screen answering the keyboard")
        page.wait_for_timeout(2000)  # let the shell prompt settle for the screenshot
        page.screenshot(path=str(shots / "console-typed.png"), full_page=True)

        assert frames[0] == b"RFB 003.008\n" and frames[1] == b"\x01\x01"  # one security type: None
        assert not any(password.encode() in f for f in frames)
        assert not errors, errors
        assert f"console: node node1 relays the console of VM {w['vm']}" in cluster.nodes["node2"].log_text()

        token = w["vera"].post(f"/api/v1/vms/{w['vm']}/console").json()["token"]
        first, second = page.evaluate(REUSE_TOKEN, f"ws://{cluster.nodes['node1'].api_addr}/console/ws?token={token}")
        assert first["bytes"] > 0
        assert second == {"code": 1008, "reason": "the console token was already used; open the console again", "bytes": 0}
    finally:
        context.close()


def test_someone_elses_or_a_stopped_vm_has_no_console_page(world: tuple[ConsoleCluster, dict[str, Any]], chromium: Any) -> None:
    cluster, w = world
    url = cluster.nodes["node1"].url
    context = chromium.new_context()
    page = context.new_page()
    try:
        console_url = f"{url}/ui/vms/{w['vm']}/console"
        response = page.goto(console_url)
        assert response is not None and page.url == f"{url}/login?next=%2Fui%2Fvms%2F{w['vm']}%2Fconsole"  # no session: the login page
        page.fill("input[name=username]", "bob")
        page.fill("input[name=password]", "bob-pass-1")
        with page.expect_navigation(url=console_url) as back:  # and back to the console asked for
            page.click("button[type=submit]")
        response = back.value
        assert response is not None and response.status == 404
        assert page.locator("#console-screen").count() == 0 and "not found" in page.locator("#console-error").inner_text()
    finally:
        context.close()
    context = chromium.new_context()
    page = context.new_page()
    try:
        page.goto(url + "/login")
        page.fill("input[name=username]", "vera")
        page.fill("input[name=password]", "vera-pass-1")
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/ui/vms$"))
        response = page.goto(f"{url}/ui/vms/{w['stopped']}/console")
        assert response is not None and response.status == 409
        assert "its console opens when it runs" in page.locator("#console-error").inner_text()
        assert page.locator("#console-screen").count() == 0
    finally:
        context.close()
