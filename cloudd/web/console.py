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
GET  /static/novnc/{core,vendor}/…  noVNC's client modules (not its own vnc.html apps)

Tokens live in the memory of the node that minted them (``console_tokens``): the browser
opens the websocket on the node that gave it the page or the URL, so nothing about a
console opening is replicated. A token is good for ``TOKEN_TTL_S`` seconds, once, for one
VM and one user; when it is used the user's right to the VM is checked again.

VNC listens on each node's own address (``compute.vnc_listen``, loopback by default) and
is never published: when the VM runs on another node the proxy opens a websocket to that
node's cloudd, signed like every node-to-node call, and that node connects to its local
VNC port.

That node-to-node websocket is plain ``ws://``, like the rest of the traffic between
nodes: the relayed screen and the keystrokes (whatever the user types into the VM,
passwords included) cross the network between the two nodes UNENCRYPTED, readable by
anyone who can watch that network. Only the VNC login stays on the node that runs the VM:
its challenge and answer never cross the network, and the VM's VNC password never
reaches the browser or another node. (The browser's own websocket is ``wss://`` when the
UI is served over TLS.)

The websocket is authenticated by the token alone, never by the session cookie, so a page
of another site that opens it gains nothing. An open session ends within ``RECHECK_S``
seconds once its user is disabled or deleted, loses the VM, or the VM stops or moves.
Open sessions are capped per user and per VM (``console_sessions``); one more is refused
with close code 1008 and the reason.

noVNC comes from Debian's ``novnc`` package (``scripts/install.sh``), served from
``/usr/share/novnc``: apt keeps it patched and nothing of it is copied into the tree. Where
that directory is missing, ``static/novnc`` (git-ignored; e.g. the npm package
``@novnc/novnc`` unpacked there) is served instead. Only ``core/`` and ``vendor/`` are
served (what ``console.js`` imports and what those modules import), with the UI's security
headers; noVNC's own apps (``vnc.html``, ``vnc_lite.html``) are not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
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
from cloudd.web.console_sessions import ConsoleSessions, SessionRefused, Slot
from cloudd.web.console_tokens import ConsoleTokens, Grant, TokenRefused
from cloudd.web.http import guarded, json_response
from cloudd.web.openapi import PATH_PARAM, ApiRoute, Doc, Param
from cloudd.web.security_headers import SecurityHeaders
from cloudd.web.ui import PAGE_HEADERS, login_url, page, session_of

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
NOVNC_PARTS = ("core", "vendor")  # console.js imports core/rfb.js; core imports vendor/pako
NOVNC_HEADERS = {k: v for k, v in PAGE_HEADERS.items() if k != "Cache-Control"}
CONSOLE_CSP = {"default-src": "'self'", "img-src": "'self' data:", "connect-src": "'self'"}
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


def novnc_app(directory: Path) -> ASGIApp:
    """noVNC's client modules under ``directory`` (``NOVNC_PARTS`` only), with the UI's
    security headers; anything else, noVNC's own HTML apps included, is a 404."""
    parts = [Mount(f"/{part}", app=StaticFiles(directory=directory / part, check_dir=False)) for part in NOVNC_PARTS]
    return SecurityHeaders(Router(parts), NOVNC_HEADERS)


def merged_csp(base: str, extra: Mapping[str, str]) -> str:
    """The Content-Security-Policy ``base`` with ``extra``'s directives added (or, for a
    directive both name, ``extra``'s value)."""
    directives: dict[str, str] = {}
    for part in base.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            directives[name.lower()] = value.strip()
    directives.update(extra)
    return "; ".join(f"{name} {value}".rstrip() for name, value in directives.items())


# the UI's headers (PAGE_HEADERS, set by ``page``) with these on top
CONSOLE_PAGE_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": merged_csp(PAGE_HEADERS["Content-Security-Policy"], CONSOLE_CSP),
}



async def release(slot: Slot, upstream: ByteStream | None, browser: BrowserStream, code: int, reason: str) -> None:
    """End a console session whichever way it went: the session slot, the VNC side, then
    the browser's (or the calling node's) websocket with ``code`` and ``reason``."""
    slot.close()
    try:
        if upstream is not None:
            await upstream.close()
    finally:
        await browser.close(code, reason)

class PeerRefused(RfbError):
    """The node that runs the VM refused the session (close code 1008): the browser is
    refused alike."""


def console_view(vm: dict[str, Any], admin: bool) -> dict[str, Any]:
    """What the console page and its callers get of a VM record: never its VNC password.
    Admins also see the node it runs on."""
    view = {"id": vm["id"], "name": vm["name"]}
    if admin:
        view["node"] = vm.get("node")
    return view


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

    def __init__(
        self, runtime: NodeRuntime, tokens: ConsoleTokens | None = None, recheck_s: float = RECHECK_S, sessions: ConsoleSessions | None = None,
    ) -> None:
        self.runtime = runtime
        self.recheck_s = recheck_s
        self.tokens = tokens if tokens is not None else ConsoleTokens()
        self.sessions = sessions if sessions is not None else ConsoleSessions()

    def issue(self, principal: Principal, ref: str) -> tuple[dict[str, Any], str, Grant]:
        """(the VM's ``console_view``, a token, its grant) for a user who may see the VM,
        whose VM runs and who has a session slot left on this node (else a 429)."""
        if principal.kind != "user":
            raise CloudError("forbidden", "consoles are opened by users")
        with self.runtime.raft.lock:
            vm = find_owned(self.runtime.raft.state.vms, principal, ref, "VM")
        runnable_console(vm)
        try:
            self.sessions.check(principal.name, vm["id"], vm["name"])
            token, grant = self.tokens.issue(principal.name, vm["id"], time.time())
        except (TokenRefused, SessionRefused) as exc:
            raise CloudError("rate_limited", str(exc)) from None
        log.info("console: token issued to %s for VM %s (%s)", principal.name, vm["id"], vm["name"])
        return console_view(vm, principal.is_admin), token, grant

    def shown(self, principal: Principal, ref: str) -> dict[str, Any]:
        """The ``console_view`` of a VM the user may see; ``CloudError`` (404) when there is
        none (any more)."""
        with self.runtime.raft.lock:
            return console_view(find_owned(self.runtime.raft.state.vms, principal, ref, "VM"), principal.is_admin)

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
        except BaseException:  # a refusal, or this task cancelled: the connection goes either way
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
            try:
                first = await asyncio.wait_for(connection.recv(), HANDSHAKE_TIMEOUT_S + PEER_OPEN_TIMEOUT_S)
            except ConnectionClosed as exc:
                reason = exc.rcvd.reason if exc.rcvd is not None and exc.rcvd.reason else "closed"
                refused = exc.rcvd is not None and exc.rcvd.code == CLOSE_REFUSED
                raise (PeerRefused if refused else RfbError)(f"node {node}: {reason}") from None
            except TimeoutError:
                raise RfbError(f"node {node} did not reach the VM's console in time") from None
            if first != PEER_READY:
                raise RfbError(f"node {node} answered the console connection with something unexpected")
        except BaseException:  # a refusal, or this task cancelled: the connection goes either way
            await connection.close()
            raise
        return PeerStream(connection)

    async def proxy(self, websocket: WebSocket) -> None:
        """``/console/ws``: token → the VM → a session slot → VNC login → relay until either
        side ends. The slot and the VNC connection are given back on every way out."""
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol="binary" if "binary" in offered else None)
        browser = BrowserStream(websocket)
        client = websocket.client.host if websocket.client else "-"
        try:
            grant = self.tokens.consume(websocket.query_params.get("token", ""), time.time(), websocket.query_params.get("vm"))
            with self.runtime.raft.lock:
                vm = console_target(self.runtime.raft.state, grant)
            slot = self.sessions.open(grant.user, vm["id"], vm["name"])
        except (TokenRefused, SessionRefused) as exc:
            audit.warning("console: refused a websocket from %s: %s", client, exc)
            await browser.close(CLOSE_REFUSED, str(exc))
            return
        upstream: ByteStream | None = None
        code, ended = CLOSE_UNAVAILABLE, "the console session ended unexpectedly"
        try:
            upstream = await self.open_vnc(vm)
            await greet_within(browser)
            audit.info("console: %s opened the console of VM %s on %s from %s", grant.user, vm["id"], vm["node"], client)
            code, ended = CLOSE_NORMAL, await self.watch(relay(browser, upstream), grant, vm["node"])
        except RfbError as exc:
            log.warning("console: VM %s for %s: %s", vm["id"], grant.user, exc)
            code, ended = (CLOSE_REFUSED if isinstance(exc, PeerRefused) else CLOSE_UNAVAILABLE), str(exc)
        finally:
            await release(slot, upstream, browser, code, ended)

    async def watch(self, session: Coroutine[Any, Any, None], grant: Grant, node: str) -> str:
        """Run ``session`` (the relay) until it ends or, checked every ``recheck_s``, the
        grant no longer holds on ``node``; return why the session ended."""
        task = asyncio.create_task(session)
        try:
            while not task.done():
                await asyncio.wait([task], timeout=self.recheck_s)
                if not task.done():
                    try:
                        with self.runtime.raft.lock:
                            console_target(self.runtime.raft.state, grant, node)
                    except TokenRefused as exc:
                        return f"the console session ended: {exc}"
            return "the console session ended"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

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
            slot = self.sessions.open(None, vm_id, vm["name"])  # counted with this node's own sessions to the VM
        except SessionRefused as exc:
            log.warning("console: refused node %s the console of VM %s: %s", caller, vm_id, exc)
            await browser.close(CLOSE_REFUSED, str(exc))
            return
        upstream: ByteStream | None = None
        code, reason = CLOSE_UNAVAILABLE, "the console relay ended unexpectedly"
        try:
            upstream = await self.open_vnc(vm)
            log.info("console: node %s relays the console of VM %s", caller, vm_id)
            await websocket.send_text(PEER_READY)
            await relay(browser, upstream)
            code, reason = CLOSE_NORMAL, ""
        except RfbError as exc:
            code, reason = CLOSE_UNAVAILABLE, str(exc)
        finally:
            await release(slot, upstream, browser, code, reason)


def routes(api: Api, service: ConsoleService | None = None, novnc: Path | None = None) -> list[BaseRoute]:
    runtime = api.runtime
    service = service or ConsoleService(runtime)
    novnc = novnc if novnc is not None else novnc_dir()

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
            return RedirectResponse(login_url(request), status_code=303)
        ref = request.path_params["id"]
        context: dict[str, Any] = {"vm": None, "token": None, "error": None}
        status = 200
        try:
            if not (novnc / "core" / "rfb.js").is_file():
                raise CloudError("unavailable", f"the console client (noVNC) is not installed on {runtime.config.name}: scripts/install.sh installs Debian's novnc")
            vm, token, _ = service.issue(session.principal, ref)
            context.update(vm=vm, token=token)
        except CloudError as exc:
            status, context["error"] = exc.status, exc.message
            if exc.code in ("conflict", "rate_limited"):  # the VM is there: link back to it
                try:
                    context["vm"] = service.shown(session.principal, ref)
                except CloudError as gone:  # deleted since
                    status, context["error"] = gone.status, gone.message
        response = page(request, session, "console.html", status=status, **context)
        response.headers.update(CONSOLE_PAGE_HEADERS)
        return response

    doc = Doc(
        "A one-time token to open the VM's VNC console in a browser (noVNC) or any websocket VNC client", "owner", "vms",
        response=CONSOLE_ANSWER, path_params={"ref": Param("the VM's id, or its name", PATH_PARAM)},
        description="`url` is the websocket of the node that answered (`/console/ws?vm=…&token=…`); open it within 30 s, once. "
        "The proxy logs in to the VM's VNC server itself and offers the client RFB security type None. "
        "409 when the VM does not run (or its node has not reported its console yet); 429 when the caller has too many "
        "tokens or open console sessions on this node, or the VM too many open sessions.",
    )
    return [
        ApiRoute("/api/v1/vms/{ref}/console", vm_console, "POST", doc),
        Route("/ui/vms/{id}/console", console_page, methods=["GET"]),
        WebSocketRoute(CONSOLE_WS, service.proxy),
        WebSocketRoute("/internal/v1/vms/{id}/vnc", service.serve_peer),
        Mount("/static/novnc", app=novnc_app(novnc), name="novnc"),
    ]
