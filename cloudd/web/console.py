"""The in-browser VNC console: one-time tokens, the page, the websocket proxy.

POST /api/v1/vms/{ref}/console  → ``{"url", "token", "expires_at"}``: the VM's owner or an
                                  admin; someone else's VM is a 404, a VM that does not run
                                  a 409
GET  /ui/vms/{id}/console       the page (session cookie): noVNC on a canvas, with a token
WS   /console/ws?token=…        the proxy: uses the token up, logs in to the VM's VNC
                                  server with the VM's password and offers the browser a
                                  session without authentication (``console_rfb``)
WS   /internal/v1/vms/{id}/vnc  node to node, ``X-Cloudd-Node`` signed: this node logs in to
                                  the VNC server of a VM that runs here, says ``ready`` and
                                  relays the RFB stream from ClientInit on, for the proxy
                                  of another node
GET  /static/novnc/…            noVNC

Tokens live in the memory of the node that minted them (``console_tokens``): the browser
opens the websocket on the node that gave it the page or the URL, so nothing about a
console opening is replicated. A token is good for ``TOKEN_TTL_S`` seconds, once, for one
VM and one user; when it is used the user's right to the VM is checked again.

VNC listens on each node's own address (``compute.vnc_listen``, loopback by default) and
is never published: when the VM runs on another node the proxy opens a websocket to that
node's cloudd, signed like every node-to-node call, and that node connects to its local
VNC port. The VNC login always happens on the node that runs the VM, so its challenge and
answer never cross the network, and the password never reaches the browser.

The websocket is authenticated by the token alone, never by the session cookie, so a page
of another site that opens it gains nothing. An open session ends within ``RECHECK_S``
seconds once its user is disabled or deleted, loses the VM, or the VM stops or moves.

noVNC comes from Debian's ``novnc`` package (``scripts/install.sh``), served as it is from
``/usr/share/novnc``: apt keeps it patched and nothing of it is copied into the tree. Where
that directory is missing, ``static/novnc`` (git-ignored; e.g. the npm package
``@novnc/novnc`` unpacked there) is served instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from cloudd.errors import CloudError
from cloudd.runtime import NodeRuntime
from cloudd.security import parse_node_signature, sign_node_request, verify_node_request
from cloudd.web.api import Api, find_owned
from cloudd.web.auth import NODE_HEADER, REPLAY_GUARD, Principal
from cloudd.web.console_rfb import (
    HANDSHAKE_TIMEOUT_S,
    BrowserStream,
    ByteStream,
    PeerStream,
    RfbError,
    TcpStream,
    greet_within,
    login_within,
    relay,
)
from cloudd.web.console_tokens import ConsoleTokens, Grant, TokenRefused
from cloudd.web.http import guarded, json_response
from cloudd.web.openapi import PATH_PARAM, ApiRoute, Doc, Param
from cloudd.web.ui import page, session_of

log = logging.getLogger(__name__)
audit = logging.getLogger("cloudd.audit")  # the node-local trail (cloudd.web.audit): who opened which console

DEBIAN_NOVNC = Path("/usr/share/novnc")
LOCAL_NOVNC = Path(__file__).resolve().parent.parent.parent / "static" / "novnc"
CONSOLE_WS = "/console/ws"
# websocket close codes: the token or the user's right is refused; the console cannot be reached
CLOSE_REFUSED, CLOSE_UNAVAILABLE, CLOSE_NORMAL = 1008, 1011, 1000
PEER_OPEN_TIMEOUT_S = 10.0
PEER_READY = "ready"  # the node that runs the VM logged in to its VNC server: raw RFB follows
RECHECK_S = 5.0  # an open session ends this soon after the user loses the VM or the VM moves
CONSOLE_ANSWER = {
    "type": "object",
    "required": ["url", "token", "expires_at"],
    "properties": {
        "url": {"type": "string", "description": "the websocket to open, token included (ws:// or wss://)"},
        "token": {"type": "string", "description": "the one-time token (also in url)"},
        "expires_at": {"type": "number", "description": "Unix time after which the token is refused"},
    },
}


def novnc_dir(debian: Path = DEBIAN_NOVNC, local: Path = LOCAL_NOVNC) -> Path:
    """Where noVNC's files are: Debian's package, else the tree's own ``static/novnc``."""
    return debian if (debian / "core" / "rfb.js").is_file() else local


def console_target(state: Any, grant: Grant, node: str | None = None) -> dict[str, Any]:
    """The VM a consumed token opens, checked again against the replica: the user still
    exists, is enabled and may see the VM, which runs (on ``node``, when given) and has a
    VNC port. Raises ``TokenRefused``. Call under the replica's lock."""
    user = state.users.get(grant.user)
    if user is None or user.get("disabled"):
        raise TokenRefused("the user of this console token is disabled or gone")
    vm = state.vms.get(grant.vm_id)
    if vm is None or (user["role"] != "admin" and vm["owner"] != grant.user):
        raise TokenRefused("the VM of this console token is gone")
    if vm["state"] != "running" or not vm.get("node") or not (vm.get("observed") or {}).get("vnc_port"):
        raise TokenRefused(f"VM {vm['name']} is {vm['state']}: its console opens when it runs")
    if node is not None and vm["node"] != node:
        raise TokenRefused(f"VM {vm['name']} moved to {vm['node']}")
    return dict(vm)


def runnable_console(vm: dict[str, Any]) -> None:
    """409 unless the VM runs and its node reported its VNC port."""
    if vm["state"] != "running" or not vm.get("node"):
        raise CloudError("conflict", f"VM {vm['name']} is {vm['state']}: its console opens when it runs", {"state": vm["state"]})
    if not (vm.get("observed") or {}).get("vnc_port"):
        raise CloudError("conflict", f"VM {vm['name']} runs but its node has not reported its console yet; try again", {"state": vm["state"]})


def local_vnc_host(listen: str) -> str:
    """Where to connect to a VNC server listening on ``listen`` (a wildcard: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(listen, listen)


class ConsoleService:
    """One node's console: its tokens, and the connections to VNC servers."""

    def __init__(self, runtime: NodeRuntime, tokens: ConsoleTokens | None = None, recheck_s: float = RECHECK_S) -> None:
        self.runtime = runtime
        self.recheck_s = recheck_s
        self.tokens = tokens if tokens is not None else ConsoleTokens()

    def issue(self, principal: Principal, ref: str) -> tuple[dict[str, Any], str, Grant]:
        """(the VM, a token, its grant) for a user who may see the VM and whose VM runs."""
        if principal.kind != "user":
            raise CloudError("forbidden", "consoles are opened by users")
        with self.runtime.raft.lock:
            vm = find_owned(self.runtime.raft.state.vms, principal, ref, "VM")
        runnable_console(vm)
        try:
            token, grant = self.tokens.issue(principal.name, vm["id"], time.time())
        except TokenRefused as exc:
            raise CloudError("rate_limited", str(exc)) from None
        log.info("console: token issued to %s for VM %s (%s)", principal.name, vm["id"], vm["name"])
        return vm, token, grant

    async def open_vnc(self, vm: dict[str, Any]) -> ByteStream:
        """A byte stream to the VM's VNC server, logged in with the VM's password up to
        ClientInit: directly when the VM runs here, else through the cloudd of its node,
        which logs in itself (the VNC challenge never crosses the network). ``RfbError``
        when it cannot be reached or refuses."""
        if vm["node"] != self.runtime.config.name:
            return await self.open_peer(vm)
        host = local_vnc_host(self.runtime.config.compute.vnc_listen)
        try:
            upstream = await TcpStream.open(host, int(vm["observed"]["vnc_port"]))
        except (OSError, TimeoutError) as exc:
            raise RfbError(f"the VM's VNC server on {vm['node']} does not answer ({exc.__class__.__name__})") from None
        try:
            await login_within(upstream, vm.get("vnc_password"))
        except RfbError:
            await upstream.close()
            raise
        return upstream

    async def open_peer(self, vm: dict[str, Any]) -> ByteStream:
        """The websocket to the node that runs the VM, once that node says it logged in."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import (
            ConnectionClosed,
            InvalidHandshake,
            InvalidStatus,
        )

        node = vm["node"]
        addr = self.runtime.api_addr_of(node)
        if addr is None:
            raise RfbError(f"node {node} is not a member of the cluster")
        path = f"/internal/v1/vms/{vm['id']}/vnc"
        headers = {NODE_HEADER: sign_node_request(self.runtime.secret, self.runtime.config.name, "GET", path, b"")}
        try:
            connection = await connect(
                f"ws://{addr}{path}", additional_headers=headers, open_timeout=PEER_OPEN_TIMEOUT_S, proxy=None,
                compression=None, max_size=None, ping_interval=None,
            )
        except InvalidStatus as exc:
            raise RfbError(f"node {node} refused the console connection ({exc.response.status_code})") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise RfbError(f"node {node} could not be reached ({exc.__class__.__name__})") from None
        try:
            first = await asyncio.wait_for(connection.recv(), HANDSHAKE_TIMEOUT_S + PEER_OPEN_TIMEOUT_S)
        except ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.reason else "closed"
            raise RfbError(f"node {node}: {reason}") from None
        except TimeoutError:
            await connection.close()
            raise RfbError(f"node {node} did not reach the VM's console in time") from None
        if first != PEER_READY:
            await connection.close()
            raise RfbError(f"node {node} answered the console connection with something unexpected")
        return PeerStream(connection)

    async def proxy(self, websocket: WebSocket) -> None:
        """``/console/ws``: token → the VM → VNC login → relay until either side ends."""
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        browser = BrowserStream(websocket)
        try:
            grant = self.tokens.consume(websocket.query_params.get("token", ""), time.time(), websocket.query_params.get("vm"))
            with self.runtime.raft.lock:
                vm = console_target(self.runtime.raft.state, grant)
        except TokenRefused as exc:
            audit.warning("console: refused a websocket from %s: %s", websocket.client.host if websocket.client else "-", exc)
            await browser.close(CLOSE_REFUSED, str(exc))
            return
        upstream: ByteStream | None = None
        try:
            upstream = await self.open_vnc(vm)
            await greet_within(browser)
        except RfbError as exc:
            log.warning("console: VM %s for %s: %s", vm["id"], grant.user, exc)
            await browser.close(CLOSE_UNAVAILABLE, str(exc))
            if upstream is not None:
                await upstream.close()
            return
        audit.info(
            "console: %s opened the console of VM %s on %s from %s", grant.user, vm["id"], vm["node"], websocket.client.host if websocket.client else "-",
        )
        session = asyncio.create_task(relay(browser, upstream))
        ended = "the console session ended"
        try:
            while not session.done():
                await asyncio.wait([session], timeout=self.recheck_s)
                if not session.done():
                    try:
                        with self.runtime.raft.lock:
                            console_target(self.runtime.raft.state, grant, vm["node"])
                    except TokenRefused as exc:
                        ended = f"the console session ended: {exc}"
                        break
        finally:
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)
            await upstream.close()
            await browser.close(CLOSE_NORMAL, ended)

    def peer_node(self, websocket: WebSocket) -> str | None:
        """The cluster node that signed this websocket request, or None."""
        signature = websocket.headers.get(NODE_HEADER)
        if signature is None or parse_node_signature(signature) is None:
            return None
        query = websocket.url.query
        path = websocket.url.path + (f"?{query}" if query else "")
        node = verify_node_request(self.runtime.secret, signature, "GET", path, b"")
        if node is None or node == self.runtime.config.name:
            return None
        with self.runtime.raft.lock:
            if node not in self.runtime.raft.state.nodes:
                return None
        parsed = parse_node_signature(signature)
        return node if parsed is not None and REPLAY_GUARD.first_use(parsed[2], time.time()) else None

    async def serve_peer(self, websocket: WebSocket) -> None:
        """``/internal/v1/vms/{id}/vnc``: another node's proxy gets the raw VNC stream of a
        VM running here. Anyone else is refused before the websocket opens (403)."""
        caller = self.peer_node(websocket)
        if caller is None:
            audit.warning("console: refused a node-to-node VNC websocket from %s: no valid node signature", websocket.client.host if websocket.client else "-")
            await websocket.close(CLOSE_REFUSED)
            return
        vm_id = websocket.path_params["id"]
        with self.runtime.raft.lock:
            record = self.runtime.raft.state.vms.get(vm_id)
            vm = dict(record) if record is not None else None
        await websocket.accept()
        browser = BrowserStream(websocket)
        if vm is None or vm.get("node") != self.runtime.config.name or vm["state"] != "running" or not (vm.get("observed") or {}).get("vnc_port"):
            await browser.close(CLOSE_REFUSED, f"VM {vm_id} does not run on {self.runtime.config.name}")
            return
        try:
            upstream = await self.open_vnc(vm)
        except RfbError as exc:
            await browser.close(CLOSE_UNAVAILABLE, str(exc))
            return
        log.info("console: node %s relays the console of VM %s", caller, vm_id)
        try:
            await websocket.send_text(PEER_READY)
            await relay(browser, upstream)
        finally:
            await upstream.close()
            await browser.close()


def routes(api: Api, service: ConsoleService | None = None) -> list[BaseRoute]:
    runtime = api.runtime
    service = service or ConsoleService(runtime)
    novnc = novnc_dir()

    @guarded
    async def vm_console(request: Request) -> Response:
        principal = await api.principal(request)
        vm, token, grant = service.issue(principal, request.path_params["ref"])
        scheme = "wss" if request.url.scheme == "https" else "ws"
        url = f"{scheme}://{request.url.netloc}{CONSOLE_WS}?vm={vm['id']}&token={token}"
        return json_response({"url": url, "token": token, "expires_at": grant.expires_at}, headers={"Cache-Control": "no-store"})

    async def console_page(request: Request) -> Response:
        session = session_of(runtime, request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        context: dict[str, Any] = {"vm": None, "token": None, "error": None}
        status = 200
        try:
            if not (novnc / "core" / "rfb.js").is_file():
                raise CloudError("unavailable", f"the console client (noVNC) is not installed on {runtime.config.name}: scripts/install.sh installs Debian's novnc")
            vm, token, _ = service.issue(session.principal, request.path_params["id"])
            context.update(vm=vm, token=token)
        except CloudError as exc:
            status, context["error"] = exc.status, exc.message
            if exc.code == "conflict":
                with runtime.raft.lock:
                    context["vm"] = find_owned(runtime.raft.state.vms, session.principal, request.path_params["id"], "VM")
        response = page(request, session, "console.html", status=status, **context)
        response.headers.update({
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        })
        return response

    doc = Doc(
        "A one-time token to open the VM's VNC console in a browser (noVNC) or any websocket VNC client", "owner", "vms",
        response=CONSOLE_ANSWER, path_params={"ref": Param("the VM's id, or its name", PATH_PARAM)},
        description="`url` is the websocket of the node that answered (`/console/ws?vm=…&token=…`); open it within 30 s, once. "
        "The proxy logs in to the VM's VNC server itself and offers the client RFB security type None. "
        "409 when the VM does not run (or its node has not reported its console yet).",
    )
    return [
        ApiRoute("/api/v1/vms/{ref}/console", vm_console, "POST", doc),
        Route("/ui/vms/{id}/console", console_page, methods=["GET"]),
        WebSocketRoute(CONSOLE_WS, service.proxy),
        WebSocketRoute("/internal/v1/vms/{id}/vnc", service.serve_peer),
        Mount("/static/novnc", app=StaticFiles(directory=novnc, check_dir=False), name="novnc"),
    ]
