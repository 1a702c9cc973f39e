"""cloudctl: the admin CLI. Talks HTTP to any cloudd node, nothing else.

\b
Examples:
  cloudctl login --endpoint http://10.0.0.1:8400 --username admin
  cloudctl cluster status
  cloudctl node list --output json
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import click

from cli.client import ApiError, Client
from cli.config import CtlConfig
from cli.output import emit

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Ctx:
    config: CtlConfig
    endpoints: list[str]
    output: str

    def client(self, authenticated: bool = True) -> Client:
        token = self.config.token if authenticated else None
        if authenticated and not token:
            raise ApiError(0, "config", "not logged in: run 'cloudctl login'")
        return Client(self.endpoints, token)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run(fn: Callable[[], None]) -> None:
    """Run a command body, turning API errors into a message and a non-zero exit."""
    try:
        fn()
    except ApiError as exc:
        status = f" ({exc.status})" if exc.status else ""
        fail(f"{exc.message}{status}", 2 if exc.status == 0 else 1)


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", "endpoints", multiple=True, envvar="CLOUDCTL_ENDPOINT", help="Node URL (repeatable; tried in order). Default: from the config file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="CLOUDCTL_CONFIG", help="Config file (default ~/.config/cloudctl/config.json).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def cli(ctx: click.Context, endpoints: tuple[str, ...], config_path: str | None, output: str) -> None:
    """cloudctl: manage a cloudd cluster through any of its nodes.

    \b
    Examples:
      cloudctl login --endpoint http://127.0.0.1:8401 --username admin
      cloudctl cluster status
      cloudctl node list -o json
      cloudctl node maintenance node2 --on
      cloudctl vm create web1 --flavor small --wait
      cloudctl pool create team-a --vcpus 16 --ram 32768 --vms 10

    Endpoints are tried in order; a node that does not answer is skipped and a
    write is retried on the next one with the same request id (never applied twice).
    Shell completion: cloudctl completion bash|zsh|fish.
    """
    from pathlib import Path

    try:
        config = CtlConfig.load(Path(config_path) if config_path else None)
    except ValueError as exc:
        fail(str(exc))
    ctx.obj = Ctx(config, list(endpoints) or config.endpoints, output)


@cli.command()
@click.option("--username", prompt=True)
@click.option("--password", prompt=True, hide_input=True, envvar="CLOUDCTL_PASSWORD")
@pass_ctx
def login(ctx: Ctx, username: str, password: str) -> None:
    """Log in and store the session token (file mode 0600)."""

    def body() -> None:
        client = ctx.client(authenticated=False)
        data = client.request("POST", "/api/v1/auth/login", {"username": username, "password": password})
        ctx.config.token = data["token"]
        ctx.config.user = username
        if ctx.endpoints != ctx.config.endpoints:
            ctx.config.endpoints = ctx.endpoints
        try:
            status = Client(ctx.endpoints, data["token"]).request("GET", "/api/v1/cluster")
            addrs = [f"http://{m['api_addr']}" for m in status["members"]]
            ctx.config.endpoints = list(dict.fromkeys([*ctx.endpoints, *addrs]))
        except ApiError:
            pass
        ctx.config.save()
        click.echo(f"logged in as {username} ({data['role']}); token saved to {ctx.config.path}")

    run(body)


@cli.command()
@pass_ctx
def logout(ctx: Ctx) -> None:
    """Revoke the stored token and forget it."""

    def body() -> None:
        ctx.client().request("POST", "/api/v1/auth/logout")
        ctx.config.token = None
        ctx.config.save()
        click.echo("logged out")

    run(body)


@cli.command()
@pass_ctx
def whoami(ctx: Ctx) -> None:
    """Show who the stored token belongs to."""
    run(lambda: emit(ctx.client().request("GET", "/api/v1/auth/whoami"), ctx.output))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script.

    \b
    Examples:
      cloudctl completion bash > /etc/bash_completion.d/cloudctl
      eval "$(cloudctl completion zsh)"
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "cloudctl", "_CLOUDCTL_COMPLETE").source())


from cli import commands_alloc, commands_cluster, commands_compute, commands_images, commands_networks, commands_pools, commands_storage, commands_users  # noqa: E402

commands_cluster.register(cli)
commands_users.register(cli)
commands_pools.register(cli)
commands_compute.register(cli)
commands_images.register(cli)
commands_storage.register(cli)
commands_networks.register(cli)
commands_alloc.register(cli)


def main() -> None:
    cli(prog_name="cloudctl")


if __name__ == "__main__":
    main()
