"""The user's pages: their VMs (list, create, one VM with its actions), their account
(password, API tokens) and their resources (pool usage, networks, addresses).

A VM's page also attaches and detaches NICs and, for admins, migrates the VM; the
resources page creates and deletes networks. What may be done is the API's decision:
a user's migration is refused by its 403, shown on the page.

Every handler reads and acts through the API (``Ui.get`` / ``Ui.send``); a refused
form re-renders with the API's message next to the field it is about.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from cloudd.errors import CloudError
from cloudd.web.ui import Session, Ui, guarded_page, page
from cloudd.web.ui_api import api_path
from cloudd.web.ui_forms import SEGMENT_RE, Form, errors_from, parse_number, segment

POWER_ACTIONS = {
    "start": "Start", "shutdown": "Shut down", "stop": "Force stop", "reset": "Reset", "reboot": "Reboot",
}
ACTIONS_BY_STATE = {
    "stopped": ("start",), "error": ("start", "stop"), "running": ("shutdown", "stop", "reset", "reboot"),
    "starting": ("stop",), "stopping": ("stop",), "creating": (), "pending": (), "migrating": (), "deleting": (),
}
PASSING_STATES = frozenset({"pending", "creating", "starting", "stopping", "migrating", "deleting"})
BLANK_DISK = "__blank__"
LIMIT_LABELS = {"vcpus": "vCPUs", "ram_mb": "RAM (MiB)", "disk_gb": "Disk (GB)", "vms": "VMs", "public_ips": "Public IPs"}
MIGRATABLE_STATES = frozenset({"running", "stopped"})
MIGRATION_MODES = (("", "automatic (live when possible)"), ("live", "live"), ("offline", "offline"))
# what a redirect after a change says: fixed sentences, so a link cannot make the page say anything else
RESOURCE_NOTICES = {"network-created": "network {name} created", "network-deleted": "network {name} deleted"}


def all_items(data: Any) -> list[dict[str, Any]]:
    return list(data.get("items", [])) if isinstance(data, dict) else []


def pool_rows(pool: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each limit of a pool with its use and what remains (None: unlimited)."""
    if pool is None:
        return []
    rows = []
    for key, label in LIMIT_LABELS.items():
        limit = pool["limits"].get(key)
        used = pool["usage"].get(key, 0)
        rows.append({"key": key, "label": label, "used": used, "limit": limit, "left": None if limit is None else max(0, limit - used), "over": key in pool.get("over", [])})
    return rows


def usable_networks(networks: list[dict[str, Any]], pool: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The networks a VM of the user may join: all the API lists, unless the pool is locked to some."""
    allowed = set(pool.get("networks") or []) if pool else set()
    return [n for n in networks if n["id"] in allowed or n["name"] in allowed] if allowed else networks


def to_vm_path(vm_id: str, task: str | None = None) -> str:
    return f"/ui/vms/{vm_id}" + (f"?task={task}" if task else "")


def to_resources_notice(kind: str, name: str) -> str:
    return "/ui/resources?" + urlencode({"done": kind, "name": name})


def resources_notice(request: Request) -> str | None:
    """The sentence of ``?done=&name=`` on the resources page (None for anything else)."""
    kind, name = request.query_params.get("done", ""), request.query_params.get("name", "")
    if kind not in RESOURCE_NOTICES or not SEGMENT_RE.fullmatch(name):
        return None
    return RESOURCE_NOTICES[kind].format(name=name)


def routes(ui: Ui) -> list[BaseRoute]:
    async def my_pool(request: Request, session: Session) -> dict[str, Any] | None:
        pools = all_items(await ui.get(request, session, "pools"))
        who = await ui.get(request, session, "auth", "whoami")
        return next((p for p in pools if p["name"] == who.get("pool")), None)

    async def image_names(request: Request, session: Session) -> dict[str, str]:
        return {i["id"]: i["name"] for i in all_items(await ui.get(request, session, "images", limit=1000))}

    # --- VMs ---

    async def vms_list(request: Request, session: Session, form: Form | None) -> Response:
        vms = all_items(await ui.get(request, session, "vms", limit=1000))
        running = sum(1 for v in vms if v["state"] == "running")
        busy = any(v["state"] in PASSING_STATES for v in vms)
        return page(request, session, "vms.html", vms=vms, running=running, busy=busy, pool=pool_rows(await my_pool(request, session)),
                    show_node=session.is_admin, request_deleted=bool(request.query_params.get("deleted")))

    async def create_form(request: Request, session: Session, status: int = 200, values: dict[str, str] | None = None, errors: dict[str, str] | None = None) -> Response:
        flavors = all_items(await ui.get(request, session, "flavors"))
        images = [i for i in all_items(await ui.get(request, session, "images", limit=1000)) if i.get("state", "ready") == "ready"]
        pool = await my_pool(request, session)
        networks = usable_networks(all_items(await ui.get(request, session, "networks", limit=1000)), pool)
        return page(
            request, session, "vm_new.html", status=status, flavors=flavors, networks=networks,
            os_images=[i for i in images if i["format"] != "iso"], isos=[i for i in images if i["format"] == "iso"],
            pool=pool_rows(pool), pool_name=pool["name"] if pool else None, values=values or {"power": "running"}, errors=errors or {},
        )

    async def vm_new(request: Request, session: Session, form: Form | None) -> Response:
        return await create_form(request, session)

    async def vm_create(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        errors: dict[str, str] = {}
        body: dict[str, Any] = {"name": form.text("name", 64)}
        if not body["name"]:
            errors["name"] = "give the VM a name"
        if form.get("flavor"):
            body["flavor"] = form.text("flavor", 64)
        else:
            errors["flavor"] = "choose a flavor"
        image = form.text("image", 128)
        if image == BLANK_DISK:
            body["image"] = None
        elif image:
            body["image"] = image
        if form.get("iso"):
            body["iso"] = form.text("iso", 128)
        if form.get("network"):
            body["networks"] = [{"network": form.text("network", 64)}]
        swap = parse_number(form, "swap_mb", errors, integer=True, required=False)
        if swap:
            body["swap_mb"] = swap
        body["power"] = "running" if form.get("power") == "running" else "stopped"
        if errors:
            return await create_form(request, session, 400, form.values(), errors)
        try:
            answer = await ui.send(request, session, "POST", api_path("vms"), body, form)
        except CloudError as exc:
            fields = ("name", "flavor", "image", "iso", "network", "swap_mb")
            mapped = errors_from(exc, fields, aliases={"networks": "network", "vcpus": "flavor", "ram_mb": "flavor", "disk_gb": "flavor"},
                                 prefixes={"you already have a vm named": "name", "network": "network"})
            return await create_form(request, session, exc.status, form.values(), mapped)
        return RedirectResponse(to_vm_path(answer.data["id"], answer.task_id), status_code=303)

    async def vm_context(request: Request, session: Session, ref: str) -> dict[str, Any]:
        vm = await ui.get(request, session, "vms", segment(ref))
        names = await image_names(request, session)
        images = [i for i in all_items(await ui.get(request, session, "images", limit=1000)) if i.get("state", "ready") == "ready"]
        tasks = all_items(await ui.get(request, session, "tasks", vm=vm["id"], limit=10))
        events = all_items(await ui.get(request, session, "events", target=vm["id"], limit=15))
        networks = all_items(await ui.get(request, session, "networks", limit=1000))
        joinable = usable_networks([n for n in networks if n["owner"] in (None, vm["owner"])], await my_pool(request, session))
        show_migrate = session.is_admin and bool(vm.get("node")) and vm["state"] in MIGRATABLE_STATES
        nodes = all_items(await ui.get(request, session, "nodes", role="hypervisor")) if show_migrate else []
        task_id = request.query_params.get("task")
        watch = [t["id"] for t in tasks if t["state"] == "running"]
        if task_id and task_id not in watch and any(t["id"] == task_id for t in tasks):
            watch.append(task_id)
        return {
            "vm": vm, "image_name": names.get(vm.get("image") or "", vm.get("image")), "iso_name": names.get(vm.get("iso") or "", vm.get("iso")),
            "isos": [i for i in images if i["format"] == "iso"], "tasks": tasks, "events": events, "watch": watch,
            "actions": [(a, POWER_ACTIONS[a]) for a in ACTIONS_BY_STATE.get(vm["state"], ())], "show_node": session.is_admin,
            "network_names": {n["id"]: n["name"] for n in networks}, "networks": joinable,
            "show_migrate": show_migrate, "target_nodes": [n for n in nodes if n["name"] != vm["node"]], "migration_modes": MIGRATION_MODES,
        }

    async def vm_show(request: Request, session: Session, form: Form | None) -> Response:
        return page(request, session, "vm.html", **await vm_context(request, session, request.path_params["ref"]))

    async def vm_write(request: Request, session: Session, form: Form, method: str, parts: tuple[str, ...], body: dict[str, Any] | None, fields: tuple[str, ...] = ()) -> Response:
        """Send one VM action; on success back to the VM's page following its task, on a
        refusal the VM's page again with the message next to the field (or on top)."""
        ref = segment(request.path_params["ref"])
        vm = await ui.get(request, session, "vms", ref)  # someone else's VM: 404 before anything
        try:
            answer = await ui.send(request, session, method, api_path("vms", vm["id"], *parts), body, form)
        except CloudError as exc:
            if exc.status == 404 and not fields:
                raise
            context = await vm_context(request, session, vm["id"])
            return page(request, session, "vm.html", status=exc.status, errors=errors_from(exc, fields), values=form.values(), **context)
        return RedirectResponse(to_vm_path(vm["id"], answer.task_id), status_code=303)

    async def vm_invalid(request: Request, session: Session, form: Form, errors: dict[str, str]) -> Response:
        """The VM's page again with 400 and the form's own field errors (the API was not asked)."""
        context = await vm_context(request, session, request.path_params["ref"])
        return page(request, session, "vm.html", status=400, errors=errors, values=form.values(), **context)

    async def vm_power(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        action = request.path_params["action"]
        if action not in POWER_ACTIONS:
            raise CloudError("not_found", f"unknown action {action}")
        return await vm_write(request, session, form, "POST", (action,), {})

    async def vm_iso_attach(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        if not form.get("image"):
            return await vm_invalid(request, session, form, {"image": "choose an ISO"})
        return await vm_write(request, session, form, "POST", ("iso",), {"image": form.text("image", 128)}, ("image",))

    async def vm_iso_detach(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        return await vm_write(request, session, form, "DELETE", ("iso",), None)

    async def vm_disk_add(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        errors: dict[str, str] = {}
        size = parse_number(form, "size_gb", errors)
        if size is not None and size <= 0:
            errors["size_gb"] = "must be more than 0"
        if errors:
            return await vm_invalid(request, session, form, errors)
        return await vm_write(request, session, form, "POST", ("disks",), {"size_gb": size}, ("size_gb",))

    async def vm_disk_remove(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        return await vm_write(request, session, form, "DELETE", ("disks", segment(request.path_params["disk_id"])), None)

    async def vm_nic_attach(request: Request, session: Session, form: Form | None) -> Response:
        """A new NIC on the chosen network (id or name), with a free address unless one is typed."""
        assert form is not None
        if not form.get("network"):
            return await vm_invalid(request, session, form, {"network": "choose a network"})
        body = {"network": form.text("network", 64)}
        if form.get("ip"):
            body["ip"] = form.text("ip", 15)
        return await vm_write(request, session, form, "POST", ("nics",), body, ("network", "ip"))

    async def vm_nic_detach(request: Request, session: Session, form: Form | None) -> Response:
        """Detach one NIC (its port) from the VM; its addresses are free again."""
        assert form is not None
        return await vm_write(request, session, form, "DELETE", ("nics", segment(request.path_params["port"])), None)

    async def vm_migrate(request: Request, session: Session, form: Form | None) -> Response:
        """Move the VM to the chosen node (none: the allocator's choice), live or offline (none:
        the API's choice). Only admins see the form; the API refuses anyone else with 403."""
        assert form is not None
        body: dict[str, Any] = {}
        if form.get("node"):
            body["node"] = form.text("node", 63)
        if form.get("mode"):
            body["mode"] = form.text("mode", 16)
        if form.get("force") == "true":
            body["force"] = True
        fields = ("node", "mode", "force") if session.is_admin else ()  # a user's page has no such fields
        return await vm_write(request, session, form, "POST", ("migrate",), body, fields)

    async def vm_delete_confirm(request: Request, session: Session, form: Form | None) -> Response:
        vm = await ui.get(request, session, "vms", segment(request.path_params["ref"]))
        return page(request, session, "vm_delete.html", vm=vm)

    async def vm_delete(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        vm = await ui.get(request, session, "vms", segment(request.path_params["ref"]))
        if form.get("confirm_name") != vm["name"]:
            return page(request, session, "vm_delete.html", status=400, vm=vm, errors={"confirm_name": f"type {vm['name']} to confirm"})
        await ui.send(request, session, "DELETE", api_path("vms", vm["id"]), None, form)
        return RedirectResponse("/ui/vms?deleted=" + vm["id"], status_code=303)

    # --- account ---

    async def account_page(request: Request, session: Session, status: int = 200, errors: dict[str, str] | None = None,
                           new_token: dict[str, Any] | None = None, notice: str | None = None, values: dict[str, str] | None = None) -> Response:
        tokens = all_items(await ui.get(request, session, "tokens", limit=1000))
        for token in tokens:
            token["current"] = token.get("id") == session.principal.token_id
        return page(request, session, "account.html", status=status, tokens=tokens, errors=errors or {}, new_token=new_token, notice=notice, values=values or {})

    async def account(request: Request, session: Session, form: Form | None) -> Response:
        notice = "Your password was changed; your other login sessions have ended." if request.query_params.get("changed") else None
        return await account_page(request, session, notice=notice)

    async def password_change(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        current, new, again = form.get("current_password"), form.get("password"), form.get("password_again")
        errors = {}
        if not current:
            errors["current_password"] = "enter your current password"
        if new != again:
            errors["password_again"] = "the two new passwords differ"
        if errors:
            return await account_page(request, session, 400, errors)
        try:
            await ui.send(request, session, "POST", api_path("users", session.name, "password"), {"password": new, "current_password": current}, form)
        except CloudError as exc:
            where = "current_password" if "current_password" in exc.message else "password"
            return await account_page(request, session, exc.status, {where: exc.message})
        return RedirectResponse("/ui/account?changed=1", status_code=303)

    async def token_create(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        errors: dict[str, str] = {}
        name = form.text("name", 64)
        if not name:
            errors["name"] = "give the token a name"
        days = parse_number(form, "ttl_days", errors, required=False)
        body: dict[str, Any] = {"name": name}
        if days is not None:
            body["ttl_seconds"] = days * 86400
        if errors:
            return await account_page(request, session, 400, errors, values=form.values())
        try:
            answer = await ui.send(request, session, "POST", api_path("tokens"), body, form)
        except CloudError as exc:
            return await account_page(request, session, exc.status, errors_from(exc, ("name", "ttl_days"), aliases={"ttl_seconds": "ttl_days"}), values=form.values())
        return await account_page(request, session, 201, new_token=answer.data)

    async def token_revoke(request: Request, session: Session, form: Form | None) -> Response:
        assert form is not None
        await ui.send(request, session, "DELETE", api_path("tokens", segment(request.path_params["token_id"])), None, form)
        return RedirectResponse("/ui/account", status_code=303)

    # --- resources ---

    async def resources_page(request: Request, session: Session, status: int = 200, errors: dict[str, str] | None = None,
                             values: dict[str, str] | None = None) -> Response:
        pool = await my_pool(request, session)
        networks = all_items(await ui.get(request, session, "networks", limit=1000))
        ips = all_items(await ui.get(request, session, "ips", limit=1000))
        deletable = {n["id"] for n in networks if session.is_admin or n["owner"] == session.name}  # the API checks again
        return page(request, session, "resources.html", status=status, pool=pool_rows(pool), pool_record=pool, networks=networks, ips=ips,
                    deletable=deletable, notice=resources_notice(request) if status == 200 else None, errors=errors or {}, values=values or {})

    async def resources(request: Request, session: Session, form: Form | None) -> Response:
        return await resources_page(request, session)

    async def network_create(request: Request, session: Session, form: Form | None) -> Response:
        """A network of the user's own (an admin's is public): name, subnet and optionally the
        gateway; the API fills in the rest."""
        assert form is not None
        errors: dict[str, str] = {}
        body: dict[str, Any] = {"name": form.text("name", 64), "subnet": form.text("subnet", 18)}
        if not body["name"]:
            errors["name"] = "give the network a name"
        if not body["subnet"]:
            errors["subnet"] = "give a subnet, like 10.10.0.0/24"
        if form.get("gateway"):
            body["gateway"] = form.text("gateway", 15)
        if errors:
            return await resources_page(request, session, 400, errors, form.values())
        try:
            answer = await ui.send(request, session, "POST", api_path("networks"), body, form)
        except CloudError as exc:
            return await resources_page(request, session, exc.status, errors_from(exc, ("name", "subnet", "gateway")), form.values())
        return RedirectResponse(to_resources_notice("network-created", answer.data["name"]), status_code=303)

    async def network_delete(request: Request, session: Session, form: Form | None) -> Response:
        """Delete a network (the API: only its owner or an admin, and only with no ports left)."""
        assert form is not None
        try:
            answer = await ui.send(request, session, "DELETE", api_path("networks", segment(request.path_params["ref"])), None, form)
        except CloudError as exc:
            if exc.status == 404:
                raise
            return await resources_page(request, session, exc.status, {"": exc.message})
        return RedirectResponse(to_resources_notice("network-deleted", answer.data["name"]), status_code=303)

    def r(path: str, handler: Any, write: bool = False) -> Route:
        return Route(path, guarded_page(ui, handler, write=write), methods=["POST" if write else "GET"])

    return [
        r("/ui/vms", vms_list),
        r("/ui/vms/new", vm_new),
        r("/ui/vms/new", vm_create, write=True),
        r("/ui/vms/{ref}", vm_show),
        r("/ui/vms/{ref}/power/{action}", vm_power, write=True),
        r("/ui/vms/{ref}/iso", vm_iso_attach, write=True),
        r("/ui/vms/{ref}/iso/detach", vm_iso_detach, write=True),
        r("/ui/vms/{ref}/disks", vm_disk_add, write=True),
        r("/ui/vms/{ref}/disks/{disk_id}/remove", vm_disk_remove, write=True),
        r("/ui/vms/{ref}/nics", vm_nic_attach, write=True),
        r("/ui/vms/{ref}/nics/{port}/detach", vm_nic_detach, write=True),
        r("/ui/vms/{ref}/migrate", vm_migrate, write=True),
        r("/ui/vms/{ref}/delete", vm_delete_confirm),
        r("/ui/vms/{ref}/delete", vm_delete, write=True),
        r("/ui/account", account),
        r("/ui/account/password", password_change, write=True),
        r("/ui/account/tokens", token_create, write=True),
        r("/ui/account/tokens/{token_id}/revoke", token_revoke, write=True),
        r("/ui/resources", resources),
        r("/ui/resources/networks", network_create, write=True),
        r("/ui/resources/networks/{ref}/delete", network_delete, write=True),
    ]
