"""cloudctl user …, cloudctl token … and cloudctl event …"""

from __future__ import annotations

import click

from cli.client import q
from cli.output import emit

USER_COLUMNS = ["name", "role", "pool", "disabled", "created_at"]
TOKEN_COLUMNS = ["id", "user", "name", "kind", "created_at", "expires_at"]
EVENT_COLUMNS = ["ts", "op", "target", "actor", "outcome", "message"]


def register(cli: click.Group) -> None:
    from cli.cloudctl import Ctx, pass_ctx, run

    @cli.group()
    def user() -> None:
        """Users (admin only, except for your own password).

        \b
        Examples:
          cloudctl user create alice --role user
          cloudctl user update alice --pool team-a
          cloudctl user password alice
        """

    @user.command("list")
    @pass_ctx
    def user_list(ctx: Ctx) -> None:
        """List users."""
        run(lambda: emit(ctx.client().request("GET", "/api/v1/users", params={"limit": 1000})["items"], ctx.output, USER_COLUMNS))

    @user.command("create")
    @click.argument("name")
    @click.option("--role", type=click.Choice(["user", "admin"]), default="user", show_default=True)
    @click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, envvar="CLOUDCTL_NEW_PASSWORD")
    @pass_ctx
    def user_create(ctx: Ctx, name: str, role: str, password: str) -> None:
        """Create a user."""
        run(lambda: emit(ctx.client().request("POST", "/api/v1/users", {"name": name, "role": role, "password": password}), ctx.output))

    @user.command("show")
    @click.argument("name")
    @pass_ctx
    def user_show(ctx: Ctx, name: str) -> None:
        """One user (admins: anyone; users: themselves)."""
        run(lambda: emit(ctx.client().request("GET", f"/api/v1/users/{q(name)}"), ctx.output))

    @user.command("update")
    @click.argument("name")
    @click.option("--pool", default=None, help="Put the user in this pool.")
    @click.option("--no-pool", is_flag=True, help="Take the user out of their pool (no limits).")
    @click.option("--disable/--enable", "disabled", default=None, help="Disable (ends their sessions; tokens stop working) or enable.")
    @click.option("--role", type=click.Choice(["user", "admin"]), default=None)
    @pass_ctx
    def user_update(ctx: Ctx, name: str, pool: str | None, no_pool: bool, disabled: bool | None, role: str | None) -> None:
        """Change a user's pool, role or disabled flag (admin).

        \b
        Examples:
          cloudctl user update alice --pool team-a
          cloudctl user update bob --disable
        """
        if pool and no_pool:
            raise click.UsageError("give --pool or --no-pool, not both")
        body: dict[str, object] = {}
        if pool or no_pool:
            body["pool"] = None if no_pool else pool
        if disabled is not None:
            body["disabled"] = disabled
        if role is not None:
            body["role"] = role
        if not body:
            raise click.UsageError("nothing to change: give --pool, --no-pool, --disable, --enable or --role")
        run(lambda: emit(ctx.client().request("PATCH", f"/api/v1/users/{q(name)}", body), ctx.output))

    @user.command("password")
    @click.argument("name")
    @click.option("--password", prompt="New password", hide_input=True, confirmation_prompt=True, envvar="CLOUDCTL_NEW_PASSWORD")
    @click.option("--current-password", default=None, envvar="CLOUDCTL_PASSWORD", help="Needed to change your own password.")
    @pass_ctx
    def user_password(ctx: Ctx, name: str, password: str, current_password: str | None) -> None:
        """Set a user's password (admins: anyone's; users: their own, with the current one)."""
        body: dict[str, object] = {"password": password}
        if current_password is not None:
            body["current_password"] = current_password
        run(lambda: emit(ctx.client().request("POST", f"/api/v1/users/{q(name)}/password", body), ctx.output))

    @user.command("delete")
    @click.argument("name")
    @pass_ctx
    def user_delete(ctx: Ctx, name: str) -> None:
        """Delete a user and revoke their tokens."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/users/{q(name)}"), ctx.output))

    @cli.group()
    def token() -> None:
        """Your API tokens.

        \b
        Examples:
          cloudctl token create ci-bot --ttl 86400
          cloudctl token revoke 3f2a9c0d1e4b5a67
        """

    @token.command("list")
    @click.option("--all", "everyone", is_flag=True, help="Every user's tokens (admin).")
    @pass_ctx
    def token_list(ctx: Ctx, everyone: bool) -> None:
        """List tokens."""
        params = {"limit": 1000, "all": "true" if everyone else "false"}
        run(lambda: emit(ctx.client().request("GET", "/api/v1/tokens", params=params)["items"], ctx.output, TOKEN_COLUMNS))

    @token.command("create")
    @click.argument("name")
    @click.option("--ttl", type=int, default=None, help="Seconds until it expires (default: never).")
    @pass_ctx
    def token_create(ctx: Ctx, name: str, ttl: int | None) -> None:
        """Create an API token (printed once)."""
        body: dict[str, object] = {"name": name}
        if ttl is not None:
            body["ttl_seconds"] = ttl
        run(lambda: emit(ctx.client().request("POST", "/api/v1/tokens", body), ctx.output))

    @token.command("revoke")
    @click.argument("token_id")
    @pass_ctx
    def token_revoke(ctx: Ctx, token_id: str) -> None:
        """Revoke a token by id."""
        run(lambda: emit(ctx.client().request("DELETE", f"/api/v1/tokens/{q(token_id)}"), ctx.output))

    @cli.group()
    def event() -> None:
        """The audit log: who did what, when, and how it ended.

        \b
        Examples:
          cloudctl event list --op vm.delete
          cloudctl event list --target alice
        """

    @event.command("list")
    @click.option("--op", default=None, help="Only this command, e.g. vm.create.")
    @click.option("--target", default=None, help="Only events about this object (a VM id, a user name, …).")
    @click.option("--limit", type=int, default=50, show_default=True)
    @pass_ctx
    def event_list(ctx: Ctx, op: str | None, target: str | None, limit: int) -> None:
        """List events, newest first (yours; admins see everyone's)."""
        params: dict[str, object] = {"limit": limit}
        if op:
            params["op"] = op
        if target:
            params["target"] = target
        run(lambda: emit(ctx.client().request("GET", "/api/v1/events", params=params)["items"], ctx.output, EVENT_COLUMNS))
