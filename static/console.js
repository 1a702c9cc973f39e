// The VM console page: noVNC's RFB client on the page's one-time token.
// The proxy behind /console/ws logs in to the VM's VNC server itself: noVNC is offered
// no authentication and never sees the VNC password.
import RFB from "/static/novnc/core/rfb.js";

const screen = document.getElementById("console-screen");
const status = document.getElementById("console-status");
const cad = document.getElementById("console-cad");
const fit = document.getElementById("console-fit");

function show(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

const params = new URLSearchParams({ vm: screen.dataset.vm, token: screen.dataset.token });
delete screen.dataset.token; // single use: nothing to gain from keeping it in the page
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const rfb = new RFB(screen, `${scheme}//${location.host}/console/ws?${params}`, { shared: true });
rfb.scaleViewport = true;
rfb.focusOnClick = true;

rfb.addEventListener("connect", () => {
  show("connected", "Connected");
  cad.disabled = false;
  rfb.focus();
});
rfb.addEventListener("disconnect", (event) => {
  show("disconnected", event.detail.clean ? "Disconnected" : "Connection refused or lost: reconnect to try again");
  cad.disabled = true;
});
rfb.addEventListener("securityfailure", (event) => {
  show("disconnected", `Refused: ${event.detail.reason || "security failure"}`);
});
rfb.addEventListener("desktopname", (event) => {
  screen.title = event.detail.name;
});
cad.addEventListener("click", () => rfb.sendCtrlAltDel());
fit.addEventListener("click", () => {
  rfb.scaleViewport = !rfb.scaleViewport;
  fit.setAttribute("aria-pressed", String(rfb.scaleViewport));
});
window.addEventListener("pagehide", () => rfb.disconnect());
