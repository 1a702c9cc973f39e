"""The admin pages: cluster overview, users and pools, all VMs, node maintenance,
rebalancing and the audit log (the catalog's pages, flavors and images, are in
``ui_catalog``). Each reads and acts through the admin API, so a user who finds these
URLs gets the API's 403."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from cloudd.commands.pools import LIMIT_KEYS
from cloudd.errors import CloudError
from cloudd.model.vm import STATES
from cloudd.moves import DRAIN_MODES
from cloudd.web.ui import Session, Ui, guarded_page, page, pct
from cloudd.web.ui_api import api_path
from cloudd.web.ui_forms import SEGMENT_RE, Form, errors_from, parse_number, segment
from cloudd.web.ui_user import LIMIT_LABELS, all_items

USER_FIELDS = ("name", "password", "role")
# what a redirect after a change says: fixed sentences, so a link cannot make the page say anything else
NOTICES = {
    "maintenance": "{name} is in maintenance: it takes no new VMs", "maintenance-off": "{name} is back in service",
    "user-created": "user {name} created", "user-saved": "user {name} saved", "user-deleted": "user {name} deleted",
    "pool-created": "pool {name} created", "pool-saved": "pool {name} saved", "pool-deleted": "pool {name} deleted",
    "flavor-created": "flavor {name} created", "flavor-deleted": "flavor {name} deleted",
    "image-registered": "image {name} registered", "image-deleted": "image {name} deleted",
}


def notice_url(path: str, kind: str, name: str) -> str:
    return f"{path}?{urlencode({'done': kind, 'name': name})}"


def notice_of(request: Request) -> str | None:
    """The sentence of ``?done=&name=`` (None for anything else)."""
    kind, name = request.query_params.get("done", ""), request.query_params.get("name", "")
    if kind not in NOTICES or not SEGMENT_RE.fullmatch(name):
        return None
    return NOTICES[kind].format(name=name)


def node_rows(nodes: list[dict[str, Any]], capacity: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """Each node with what the overview charts: CPU, RAM and disk allocated (the allocator's
    view, for hypervisors) and observed in use, against the node's capacity."""
    loads = {n["node"]: n for n in capacity.get("nodes", [])}
    rows = []
    for node in nodes:
        inv, usage, load = node.get("inventory") or {}, node.get("usage") or {}, loads.get(node["name"]) or {}
        alloc = {key: float((load.get(key) or {}).get("allocated", 0)) for key in ("vcpus", "ram_mb", "disk_gb")}
        cpus, ram, disk = inv.get("cpus"), inv.get("ram_mb"), inv.get("disk_gb")
        cap = {key: (load.get(key) or {}).get("capacity", fallback) for key, fallback in (("vcpus", cpus), ("ram_mb", ram), ("disk_gb", disk))}
        cpu_used, ram_used, disk_used = usage.get("cpu_pct"), usage.get("ram_used_mb"), usage.get("disk_used_gb")
        bars = [
            _bar("CPU", alloc["vcpus"], cap["vcpus"], cpu_used, 100,
                 f"{alloc['vcpus']:.0f} of {cpus or '?'} vCPUs allocated" + (f", {cpu_used:.0f}% busy" if cpu_used is not None else "")),
            _bar("RAM", alloc["ram_mb"], cap["ram_mb"], ram_used, ram,
                 f"{alloc['ram_mb'] / 1024:.1f} of {(ram or 0) / 1024:.1f} GiB allocated" + (f", {ram_used / 1024:.1f} GiB used" if ram_used is not None else "")),
            _bar("Disk", alloc["disk_gb"], cap["disk_gb"], disk_used, disk,
                 f"{alloc['disk_gb']:.0f} of {disk or 0:.0f} GB allocated" + (f", {disk_used:.0f} GB used" if disk_used is not None else "")),
        ]
        lease_age = None if not node.get("last_heartbeat") else max(0.0, now - node["last_heartbeat"])
        rows.append({**node, "lease_age": lease_age, "bars": bars, "vms": load.get("vms", 0)})
    return rows


def _bar(label: str, allocated: float, capacity: float | None, used: float | None, used_of: float | None, text: str) -> dict[str, Any]:
    return {"label": label, "text": text, "alloc_pct": pct(allocated, capacity), "used_pct": pct(used, used_of)}


def alerts_of(cluster: dict[str, Any], capacity: dict[str, Any], nodes: list[dict[str, Any]]) -> list[dict[str, str]]:
    alerts = [{"level": "bad", "text": f"{key}: {a.get('message')}"} for key, a in sorted(((cluster.get("cluster") or {}).get("alerts") or {}).items())]
    if not cluster.get("has_quorum"):
        alerts.append({"level": "bad", "text": "Raft has no quorum: no change can be committed"})
    if cluster.get("leader") is None:
        alerts.append({"level": "bad", "text": "no leader"})
    n1 = capacity.get("n_plus_one") or {}
    if n1 and not n1.get("ok"):
        at_risk = "; ".join(f"{node}: {', '.join(vms)}" for node, vms in sorted((n1.get("at_risk") or {}).items()))
        alerts.append({"level": "warn", "text": f"N+1 not met: losing a node would leave VMs without room ({at_risk})"})
    for node in nodes:
        if node["status"] in ("down", "suspect"):
            alerts.append({"level": "bad" if node["status"] == "down" else "warn", "text": f"node {node['name']} is {node['status']}"})
    return alerts


def pool_limits(form: Form, errors: dict[str, str]) -> dict[str, Any]:
    """The limits of a pool form: a number, or empty for unlimited (null)."""
    limits: dict[str, Any] = {}
    for key in LIMIT_KEYS:
        value = parse_number(form, f"limit_{key}", errors, integer=key != "disk_gb", required=False)
        if value is not None and value < 0:
            errors[f"limit_{key}"] = "must be 0 or more"
        limits[key] = value
    return limits


def routes(ui: Ui) -> list[BaseRoute]:
    async def overview(request: Request, session: Session, form: Form | None) -> Response:
        cluster = await ui.get(request, session, "cluster")
        nodes = all_items(await ui.get(request, session, "nodes", limit=1000))
        capacity = await ui.get(request, session, "cluster", "capacity")
        vms = await ui.get(request, session, "vms", all="true", limit=1)
        rebalance = (await ui.get(request, session, "cluster", "rebalance")).get("plan")
        connected = {m["name"]: m["connected"] for m in cluster.get("members", [])}
        rows = node_rows(nodes, capacity, time.time())
        for row in rows:
            row["connected"] = connected.get(row["name"], False)
        return page(
            request, session, "admin_overview.html", cluster=cluster, nodes=rows, alerts=alerts_of(cluster, capacity, nodes),
            n_plus_one=capacity.get("n_plus_one") or {}, vm_total=vms.get("total", 0), rebalance=rebalance, drain_modes=DRAIN_MODES,
            notice=notice_of(request),
        )

    async def maintenance(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        name = segment(request.path_params["name"])
        body: dict[str, Any] = {"enabled": form.get("enabled") == "true"}
        if body["enabled"] and form.get("drain") in DRAIN_MODES:
            body["drain"] = form.get("drain")
        await ui.send(request, session, "POST", api_path("nodes", name, "maintenance"), body, form)
        return RedirectResponse(notice_url("/ui/admin", "maintenance" if body["enabled"] else "maintenance-off", name), status_code=303)

    # --- users and pools ---

    async def users_page(request: Request, session: Session, status: int = 200, errors: dict[str, str] | None = None,
                         values: dict[str, str] | None = None, notice: str | None = None) -> Response:
        users = all_items(await ui.get(request, session, "users", limit=1000))
        pools = all_items(await ui.get(request, session, "pools", limit=1000))
        networks = [n for n in all_items(await ui.get(request, session, "networks", limit=1000)) if n.get("public")]
        return page(request, session, "admin_users.html", status=status, users=users, pools=pools, networks=networks,
                    limit_labels=LIMIT_LABELS, errors=errors or {}, values=values or {}, notice=notice or notice_of(request))

    async def users(request: Request, session: Session, form: Form | None) -> Response:
        return await users_page(request, session)

    async def user_create(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        body = {"name": form.text("name", 64), "password": form.get("password"), "role": form.get("role") or "user"}
        try:
            await ui.send(request, session, "POST", api_path("users"), body, form)
        except CloudError as exc:
            return await users_page(request, session, exc.status, errors_from(exc, USER_FIELDS, prefixes={"user": "name"}), form.values())
        return RedirectResponse(notice_url("/ui/admin/users", "user-created", body['name']), status_code=303)

    async def row_action(
        request: Request, session: Session, form: Form, method: str, path: tuple[str, str], body: dict[str, Any] | None, row: str, notice: str,
    ) -> Response:
        """One user's or pool's row action through the API: back to the list with a notice,
        or the list again with the API's message on that row (a 404 stays a 404)."""
        try:
            await ui.send(request, session, method, api_path(*path), body, form)
        except CloudError as exc:
            if exc.status == 404:
                raise
            return await users_page(request, session, exc.status, {row: exc.message})
        return RedirectResponse(notice_url("/ui/admin/users", notice, path[1]), status_code=303)

    async def user_update(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        name = segment(request.path_params["name"])
        body: dict[str, Any] = {"pool": form.get("pool") or None, "disabled": form.get("disabled") == "true"}
        if form.get("role"):
            body["role"] = form.get("role")
        return await row_action(request, session, form, "PATCH", ("users", name), body, f"user:{name}", "user-saved")

    async def user_delete(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        name = segment(request.path_params["name"])
        return await row_action(request, session, form, "DELETE", ("users", name), None, f"user:{name}", "user-deleted")

    async def pool_create(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        errors: dict[str, str] = {}
        limits = {k: v for k, v in pool_limits(form, errors).items() if v is not None}
        body: dict[str, Any] = {"name": form.text("pool_name", 64), "limits": limits, "networks": form.getlist("networks")}
        if form.get("description"):
            body["description"] = form.text("description", 500)
        if errors:
            return await users_page(request, session, 400, errors, form.values())
        try:
            await ui.send(request, session, "POST", api_path("pools"), body, form)
        except CloudError as exc:
            fields = ("pool_name", "description", "networks", *(f"limit_{k}" for k in LIMIT_KEYS))
            aliases = {"name": "pool_name", **{f"limits.{k}": f"limit_{k}" for k in LIMIT_KEYS}}
            return await users_page(request, session, exc.status, errors_from(exc, fields, aliases, prefixes={"pool": "pool_name"}), form.values())
        return RedirectResponse(notice_url("/ui/admin/users", "pool-created", body['name']), status_code=303)

    async def pool_update(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        name = segment(request.path_params["name"])
        errors: dict[str, str] = {}
        limits = pool_limits(form, errors)
        if errors:
            return await users_page(request, session, 400, {f"pool:{name}": "; ".join(f"{k[6:]} {v}" for k, v in errors.items())})
        body = {"limits": limits, "networks": form.getlist("networks"), "description": form.text("description", 500)}
        return await row_action(request, session, form, "PATCH", ("pools", name), body, f"pool:{name}", "pool-saved")

    async def pool_delete(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        name = segment(request.path_params["name"])
        return await row_action(request, session, form, "DELETE", ("pools", name), None, f"pool:{name}", "pool-deleted")

    # --- VMs, rebalance, events ---

    async def vms(request: Request, session: Session, form: Form | None) -> Response:
        q = request.query_params
        state = q.get("state") if q.get("state") in STATES else None
        owner = q.get("owner") or None
        node = q.get("node") or None
        query: dict[str, Any] = {"limit": 1000, "state": state, "node": node}
        if owner:
            query["owner"] = owner
        else:
            query["all"] = "true"
        data = await ui.get(request, session, "vms", **query)
        items = all_items(data)
        text = (q.get("q") or "").strip().lower()
        if text:
            items = [v for v in items if text in v["name"].lower() or text in v["id"] or any(text in ip for nic in v.get("nics", []) for ip in nic["ips"])]
        nodes = [n["name"] for n in all_items(await ui.get(request, session, "nodes", limit=1000))]
        users = [u["name"] for u in all_items(await ui.get(request, session, "users", limit=1000))]
        return page(request, session, "admin_vms.html", vms=items, total=data.get("total", 0), states=STATES, nodes=nodes, users=users,
                    filters={"state": state or "", "owner": owner or "", "node": node or "", "q": q.get("q", "")})

    async def rebalance_page(request: Request, session: Session, form: Form | None) -> Response:
        status = (await ui.get(request, session, "cluster", "rebalance")).get("plan")
        return page(request, session, "admin_rebalance.html", preview=None, plan=status)

    async def rebalance_run(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        errors: dict[str, str] = {}
        max_moves = parse_number(form, "max_moves", errors, integer=True, required=False)
        body: dict[str, Any] = {"apply": form.get("apply") == "true"}
        if max_moves is not None:
            body["max_moves"] = max_moves
        if errors:
            return page(request, session, "admin_rebalance.html", status=400, preview=None, plan=None, errors=errors, values=form.values())
        try:
            answer = await ui.send(request, session, "POST", api_path("cluster", "rebalance"), body, form)
        except CloudError as exc:
            plan = (await ui.get(request, session, "cluster", "rebalance")).get("plan")
            return page(request, session, "admin_rebalance.html", status=exc.status, preview=None, plan=plan,
                        errors=errors_from(exc, ("max_moves",)), values=form.values())
        if body["apply"]:
            return RedirectResponse("/ui/admin/rebalance", status_code=303)
        plan = (await ui.get(request, session, "cluster", "rebalance")).get("plan")
        return page(request, session, "admin_rebalance.html", preview=answer.data, plan=plan, values=form.values())

    async def events(request: Request, session: Session, form: Form | None) -> Response:
        q = request.query_params
        try:
            offset = max(0, int(q.get("offset", "0")))
        except ValueError:
            offset = 0
        data = await ui.get(request, session, "events", op=q.get("op"), target=q.get("target"), limit=100, offset=offset)
        return page(request, session, "admin_events.html", events=all_items(data), total=data.get("total", 0), offset=offset,
                    filters={"op": q.get("op", ""), "target": q.get("target", "")})

    def r(path: str, handler: Any, write: bool = False) -> Route:
        return Route(path, guarded_page(ui, handler, admin=True, write=write), methods=["POST" if write else "GET"])

    return [
        r("/ui/admin", overview),
        r("/ui/admin/nodes/{name}/maintenance", maintenance, write=True),
        r("/ui/admin/users", users),
        r("/ui/admin/users", user_create, write=True),
        r("/ui/admin/users/{name}", user_update, write=True),
        r("/ui/admin/users/{name}/delete", user_delete, write=True),
        r("/ui/admin/pools", pool_create, write=True),
        r("/ui/admin/pools/{name}", pool_update, write=True),
        r("/ui/admin/pools/{name}/delete", pool_delete, write=True),
        r("/ui/admin/vms", vms),
        r("/ui/admin/rebalance", rebalance_page),
        r("/ui/admin/rebalance", rebalance_run, write=True),
        r("/ui/admin/events", events),
    ]
