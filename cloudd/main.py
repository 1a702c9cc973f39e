"""``cloudd``: the daemon and its node-admin commands (run as root on the node itself)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from cloudd.config import ComputeSettings, NetworkSettings, NodeConfig, StorageSettings, Timings, read_secret, write_secret
from cloudd.errors import CloudError
from cloudd.security import generate_password, hash_password, join_proof, open_for_joiner, sign_node_request

DEFAULT_DATA_DIR = "/var/lib/cloudd"


def _setup_logging(fmt: str, level: str) -> None:
    from cloudd.logging_setup import setup

    setup(fmt, level, stream=sys.stderr)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


data_dir_option = click.option(
    "--data-dir", default=DEFAULT_DATA_DIR, show_default=True, envvar="CLOUDD_DATA_DIR", help="This node's state directory."
)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--config", "config_file", default=None, envvar="CLOUDD_CONFIG", help="The process settings file [default: /etc/cloudd/cloudd.toml, if it exists].")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None, envvar="CLOUDD_LOG_FORMAT", help="text, or json: one JSON object per line [default: from the config file, else text].")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, config_file: str | None, log_format: str | None) -> None:
    """cloudd: the node daemon and its node-admin commands.

    \b
    New cluster:   cloudd init --name node1 --api-addr 10.0.0.1:8400 --raft-addr 10.0.0.1:8500
                   cloudd serve
    Another node:  cloudd join 10.0.0.1:8400 --token cdj.… --name node2 --api-addr … --raft-addr …
                   cloudd serve
    """
    from cloudd.process_config import load

    try:
        settings = load(config_file, required=config_file is not None)
    except ValueError as exc:
        _setup_logging("text", "info")
        _fail(f"config: {exc}")
    ctx.obj = settings
    if settings.data_dir:  # below an option and CLOUDD_DATA_DIR, above the built-in default
        ctx.default_map = {name: {"data_dir": settings.data_dir} for name in cli.commands}
    _setup_logging(log_format or settings.log_format, "debug" if verbose else settings.log_level)


def compute_settings(uri: str, domain_type: str | None, data_dir: Path, vnc_ports: str) -> ComputeSettings:
    """``embedded``: a libvirt of this node's own under <data dir>/libvirt (no daemon),
    running guests in software (TCG) unless --domain-type kvm."""
    if uri == "embedded":
        uri = f"qemu:///embed?root={data_dir.resolve() / 'libvirt'}"
        domain_type = domain_type or "qemu"
    if domain_type is None:
        domain_type = "test" if uri.startswith("test:") else "kvm"
    low, _, high = vnc_ports.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) <= 65535):
        _fail("--vnc-ports must be a range like 5900-6899")
    return ComputeSettings(uri=uri, domain_type=domain_type, vnc_port_min=int(low), vnc_port_max=int(high))


def storage_options(fn: Any) -> Any:
    """--iscsi and --iscsi-portal, shared by init, join and restore."""
    fn = click.option("--iscsi-portal", default="", help="host:port hypervisors reach this node's iSCSI exports on (default: the API host, port 3260).")(fn)
    return click.option(
        "--iscsi", type=click.Choice(["tgt", "private-tgt", "lio", "none"]), default="tgt", show_default=True,
        help="How this storage node exports volumes: Debian's tgt service, a tgtd of cloudd's own, the kernel's LIO, or not at all.",
    )(fn)


def network_options(fn: Any) -> Any:
    """--network, --net-prefix and --underlay, shared by init, join and restore."""
    fn = click.option("--underlay", default="", help="host:port other hypervisors send this node's VXLAN traffic to (default: the API host, port 4789).")(fn)
    fn = click.option("--net-prefix", default="cd", show_default=True, help="Start of the names of the bridges, taps and tables cloudd makes (1-4 characters; differs per node when nodes share a host).")(fn)
    return click.option(
        "--network", type=click.Choice(["linux", "none"]), default="linux", show_default=True,
        help="VM networks on this hypervisor: bridges/VXLAN, nftables port filters and dnsmasq (linux), or nothing (none).",
    )(fn)


def network_settings(network: str, prefix: str, underlay: str) -> NetworkSettings:
    import ipaddress

    from cloudd.ops.network import PREFIX_RE
    from cloudd.validate import ADDRESS_RE

    if not PREFIX_RE.fullmatch(prefix):
        _fail("--net-prefix must be 1-4 lowercase letters or digits, starting with a letter")
    if underlay:
        if not ADDRESS_RE.fullmatch(underlay):
            _fail("--underlay must be address:port")
        try:
            ipaddress.ip_address(underlay.rsplit(":", 1)[0].strip("[]"))
        except ValueError:
            _fail("--underlay must be an IP address (the VXLAN device's local address) and a port")
    return NetworkSettings(driver=network, prefix=prefix, underlay=underlay)


def storage_settings(iscsi: str, portal: str) -> StorageSettings:
    from cloudd.validate import ADDRESS_RE

    if portal and not ADDRESS_RE.fullmatch(portal):
        _fail("--iscsi-portal must be host:port")
    if iscsi == "private-tgt":
        return StorageSettings(export="tgt", portal=portal, private_tgtd=True)
    return StorageSettings(export=iscsi, portal=portal)


def _first_voter_config(
    data_dir: str, name: str, cluster_id: str, api_addr: str, raft_addr: str, roles: str,
    compute_uri: str, domain_type: str | None, vnc_ports: str, iscsi: str, iscsi_portal: str, network: NetworkSettings,
) -> NodeConfig:
    """Check this node's name and addresses and a fresh data dir; the config of the only
    voter of a new cluster (``init``) or of a rebuilt one (``restore``)."""
    from cloudd.validate import ADDRESS_RE, HOSTNAME_RE

    if not HOSTNAME_RE.fullmatch(name):
        _fail("--name must be a lowercase hostname label (a-z, 0-9, -)")
    for label, addr in (("--api-addr", api_addr), ("--raft-addr", raft_addr)):
        if not ADDRESS_RE.fullmatch(addr):
            _fail(f"{label} must be host:port")
    _check_bindable("--api-addr", api_addr)
    _check_bindable("--raft-addr", raft_addr)
    path = Path(data_dir)
    _check_fresh(path)
    return NodeConfig(
        name=name,
        cluster_id=cluster_id,
        api_addr=api_addr,
        raft_addr=raft_addr,
        membership="voter",
        peers=[raft_addr],
        api_peers=[api_addr],
        roles=[r for r in roles.split(",") if r],
        timings=Timings(),
        compute=compute_settings(compute_uri, domain_type, path, vnc_ports),
        storage=storage_settings(iscsi, iscsi_portal),
        network=network,
        data_dir=str(path.resolve()),
    )


def _check_bindable(label: str, addr: str) -> None:
    """Fail now, with a clear message, when this node could not listen on ``addr``."""
    host, port = addr.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            _fail(f"{label} {addr} cannot be used here: {exc.strerror}")


def _check_fresh(data_dir: Path) -> None:
    if (data_dir / "node.json").exists():
        _fail(f"{data_dir} already holds a node (node.json exists); use another --data-dir")
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


async def _bootstrap(config: NodeConfig, secret: str, admin: str, password_hash: str, cluster_name: str, max_voters: int) -> dict[str, str]:
    from cloudd.daemon import open_replica
    from cloudd.raft.proposer import Proposer

    raft = open_replica(config, secret)
    try:
        proposer = Proposer(raft)
        actor = {"node": config.name}
        await proposer.submit_ok(
            "cluster.init",
            {
                "cluster_id": config.cluster_id,
                "name": cluster_name,
                "max_voters": max_voters,
                "admin": {"name": admin, "password_hash": password_hash},
                "node": {"name": config.name, "raft_addr": config.raft_addr, "api_addr": config.api_addr},
            },
            actor=actor,
            deadline_s=20.0,
        )
        return {"join_token": await _first_join_token(proposer, actor)}
    finally:
        raft.destroy()
        time.sleep(0.3)


async def _first_join_token(proposer: Any, actor: dict[str, str]) -> str:
    token = secrets.token_hex(8)
    key = secrets.token_urlsafe(32).encode().hex()
    await proposer.submit_ok("cluster.join_token_create", {"token_id": token, "key": key, "expires_at": time.time() + 3600}, actor=actor)
    return f"cdj.{token}.{key}"


async def _replay_backup(config: NodeConfig, secret: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Fill a new single-voter log with the backup's state; returns the summary and a join token."""
    from cloudd.backup import restore_commands
    from cloudd.daemon import open_replica
    from cloudd.raft.proposer import Proposer

    raft = open_replica(config, secret)
    try:
        proposer = Proposer(raft)
        actor = {"node": config.name}
        node = {"name": config.name, "raft_addr": config.raft_addr or "", "api_addr": config.api_addr}
        summary: dict[str, Any] = {}
        for op, args in restore_commands(doc, node):
            summary = (await proposer.submit_ok(op, args, actor=actor, deadline_s=60.0))[0]
        summary["join_token"] = await _first_join_token(proposer, actor)
        return summary
    finally:
        raft.destroy()
        time.sleep(0.3)


def _create_node(path: Path, config: NodeConfig, secret: str, fill: Any, what: str) -> Any:
    """Run ``fill`` (a coroutine making the first log entries); keep the data dir only if
    it worked, so a failed init or restore can simply be run again."""
    write_secret(path, secret)
    try:
        out = asyncio.run(fill)
    except (CloudError, OSError) as exc:
        for leftover in ("cluster.secret", "raft.journal", "raft.snapshot", "raft.journal.meta"):
            (path / leftover).unlink(missing_ok=True)
        message = exc.message if isinstance(exc, CloudError) else str(exc)
        _fail(f"could not {what}: {message} (nothing was kept; fix it and run again)")
    config.save()  # only now is this data dir a node
    return out


@cli.command()
@data_dir_option
@click.option("--name", required=True, help="This node's name (a hostname label).")
@click.option("--api-addr", required=True, help="host:port of this node's HTTP API.")
@click.option("--raft-addr", required=True, help="host:port of this node's Raft port (cluster network).")
@click.option("--cluster-name", default="cloudd", show_default=True)
@click.option("--max-voters", type=click.Choice(["1", "3", "5"]), default="3", show_default=True, help="Voting members; further nodes join as non-voting replicas.")
@click.option("--admin", "admin_name", default="admin", show_default=True, help="Name of the first admin user.")
@click.option("--password-file", type=click.Path(dir_okay=False), help="Write the admin password here (0600) instead of printing it.")
@click.option("--roles", default="hypervisor,storage", show_default=True)
@click.option("--compute-uri", default="qemu:///system", show_default=True, help="libvirt URI of this hypervisor; 'embedded' for a libvirt of the node's own (no daemon); test:///default simulates one.")
@click.option("--domain-type", type=click.Choice(["kvm", "qemu", "test"]), default=None, help="kvm (default), qemu (software/TCG) or test (with test:///default).")
@click.option("--vnc-ports", default="5900-6899", show_default=True, help="VNC port range of this node's guests.")
@storage_options
@network_options
def init(
    data_dir: str, name: str, api_addr: str, raft_addr: str, cluster_name: str, max_voters: str, admin_name: str, password_file: str | None, roles: str,
    compute_uri: str, domain_type: str | None, vnc_ports: str, iscsi: str, iscsi_portal: str, network: str, net_prefix: str, underlay: str,
) -> None:
    """Create a new cluster with this node as its first voter and an admin user."""
    from cloudd.validate import USERNAME_RE

    if not USERNAME_RE.fullmatch(admin_name):
        _fail("--admin must be a lowercase user name")
    config = _first_voter_config(
        data_dir, name, secrets.token_hex(8), api_addr, raft_addr, roles, compute_uri, domain_type, vnc_ports, iscsi, iscsi_portal, network_settings(network, net_prefix, underlay)
    )
    path = Path(config.data_dir)
    secret = secrets.token_urlsafe(32)
    password = generate_password()
    if password_file:  # before anything commits: the password must never be lost
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    out = _create_node(path, config, secret, _bootstrap(config, secret, admin_name, hash_password(password), cluster_name, int(max_voters)), "create the cluster")
    click.echo(f"cluster {config.cluster_id} created; node {name} is its first voter")
    if password_file:
        click.echo(f"admin user: {admin_name} (password written to {password_file})")
    else:
        click.echo(f"admin user: {admin_name}  password: {password}   (shown once: store it now)")
    click.echo(f"join token (1 h, one node): {out['join_token']}")
    click.echo(f"start the node:  cloudd serve --data-dir {config.data_dir}")


@cli.command()
@click.argument("backup_file", type=click.Path(exists=True, dir_okay=False))
@data_dir_option
@click.option("--name", required=True, help="This node's name (may be one of the backup's nodes).")
@click.option("--api-addr", required=True, help="host:port of this node's HTTP API.")
@click.option("--raft-addr", required=True, help="host:port of this node's Raft port.")
@click.option("--roles", default="hypervisor,storage", show_default=True)
@click.option("--compute-uri", default="qemu:///system", show_default=True, help="libvirt URI of this hypervisor ('embedded', test:///default).")
@click.option("--domain-type", type=click.Choice(["kvm", "qemu", "test"]), default=None)
@click.option("--vnc-ports", default="5900-6899", show_default=True)
@storage_options
@network_options
def restore(
    backup_file: str, data_dir: str, name: str, api_addr: str, raft_addr: str, roles: str, compute_uri: str, domain_type: str | None, vnc_ports: str,
    iscsi: str, iscsi_portal: str, network: str, net_prefix: str, underlay: str,
) -> None:
    """Rebuild a cluster from a backup ('cloudctl cluster backup'), this node its only voter.

    For when quorum is lost for good. Users, passwords, API tokens, pools, images and VMs
    come back as they were at the backup; the cluster gets a new secret, so every other
    node joins again ('cloudd join' with a token this prints or 'cloudd token' makes),
    under its old name to keep its VMs. See docs/operations.md.
    """
    from cloudd.backup import check_backup

    try:
        doc = orjson.loads(Path(backup_file).read_bytes())
        state = check_backup(doc)
    except (ValueError, orjson.JSONDecodeError) as exc:
        _fail(f"{backup_file}: {exc}")
    config = _first_voter_config(
        data_dir, name, state["cluster"]["id"], api_addr, raft_addr, roles, compute_uri, domain_type, vnc_ports, iscsi, iscsi_portal, network_settings(network, net_prefix, underlay)
    )
    secret = secrets.token_urlsafe(32)
    out = _create_node(Path(config.data_dir), config, secret, _replay_backup(config, secret, doc), "restore the backup")
    click.echo(f"cluster {config.cluster_id} restored from the backup at index {doc['applied_index']}: {out['users']} users, {out['vms']} VMs, {out['nodes']} nodes")
    click.echo(f"node {name} is its only voter; the other nodes must join again under their old names")
    click.echo(f"join token (1 h, one node): {out['join_token']}")
    click.echo(f"start the node:  cloudd serve --data-dir {config.data_dir}")


@cli.command()
@click.argument("address")
@data_dir_option
@click.option("--token", required=True, envvar="CLOUDD_JOIN_TOKEN", help="A join token (cdj.…) from 'cloudd token' or 'cloudctl cluster join-token'.")
@click.option("--name", required=True)
@click.option("--api-addr", required=True)
@click.option("--raft-addr", default=None, help="Needed to become a voter; without it the node joins as a non-voting replica.")
@click.option("--as", "want", type=click.Choice(["auto", "voter", "replica"]), default="auto", show_default=True)
@click.option("--roles", default="hypervisor,storage", show_default=True)
@click.option("--compute-uri", default="qemu:///system", show_default=True, help="libvirt URI of this hypervisor ('embedded', test:///default).")
@click.option("--domain-type", type=click.Choice(["kvm", "qemu", "test"]), default=None)
@click.option("--vnc-ports", default="5900-6899", show_default=True, help="VNC port range of this node's guests.")
@storage_options
@network_options
def join(
    address: str, data_dir: str, token: str, name: str, api_addr: str, raft_addr: str | None, want: str, roles: str, compute_uri: str, domain_type: str | None,
    vnc_ports: str, iscsi: str, iscsi_portal: str, network: str, net_prefix: str, underlay: str,
) -> None:
    """Join the cluster that serves its API at ADDRESS (host:port)."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != "cdj":
        _fail("the token must look like cdj.<id>.<key>")
    _, token_id, key = parts
    try:
        bytes.fromhex(key)
    except ValueError:
        _fail("the token's key is not valid")
    net = network_settings(network, net_prefix, underlay)
    _check_bindable("--api-addr", api_addr)
    if raft_addr:
        _check_bindable("--raft-addr", raft_addr)
    path = Path(data_dir)
    _check_fresh(path)
    body = {"token_id": token_id, "name": name, "raft_addr": raft_addr, "api_addr": api_addr, "want": want}
    body["proof"] = join_proof(key, orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    try:
        reply = httpx.post(f"http://{address}/api/v1/cluster/join", json=body, timeout=30.0)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {address}: {exc}")
    if reply.status_code >= 400:
        try:
            message = reply.json()["error"]["message"]
        except Exception:
            message = reply.text[:200]
        _fail(f"join refused ({reply.status_code}): {message}")
    data = reply.json()
    secret = open_for_joiner(key, data["sealed_secret"]).decode()
    config = NodeConfig(
        name=name,
        cluster_id=data["cluster_id"],
        api_addr=api_addr,
        raft_addr=raft_addr if data["membership"] == "voter" else None,
        membership=data["membership"],
        peers=data["voters"],
        api_peers=data["api_addrs"],
        roles=[r for r in roles.split(",") if r],
        compute=compute_settings(compute_uri, domain_type, path, vnc_ports),
        storage=storage_settings(iscsi, iscsi_portal),
        network=net,
        data_dir=str(path.resolve()),
    )
    write_secret(path, secret)
    config.save()
    click.echo(f"joined cluster {data['cluster_id']} as a {data['membership']}")
    click.echo(f"start the node:  cloudd serve --data-dir {config.data_dir}")


@cli.command()
@data_dir_option
@click.pass_obj
def serve(settings: Any, data_dir: str) -> None:
    """Run this node: Raft, the API, the agent and (when leading) the manager.

    Under systemd (Type=notify) it reports READY=1 once the API serves and feeds the
    watchdog from the agent loop."""
    from cloudd.daemon import serve as run
    from cloudd.process_config import read_token

    try:
        token = read_token(settings.metrics_token_file) if settings is not None else None
    except (OSError, ValueError) as exc:
        _fail(f"metrics token: {exc}")
    run(data_dir, metrics_token=token)


@cli.command("install-units")
@click.option("--root", default="/", show_default=True, help="Write under this directory instead of / (an image being built, a test).")
@click.option("--prefix", default=None, help="Where cloudd is installed (its .venv/bin/cloudd runs) [default: this cloudd's own].")
@click.option("--data-dir", "unit_data_dir", default=DEFAULT_DATA_DIR, show_default=True, help="The data dir written into cloudd.toml and tmpfiles.d.")
def install_units(root: str, prefix: str | None, unit_data_dir: str) -> None:
    """Install cloudd.service, cloudd-fence-guard.service, /etc/tmpfiles.d/cloudd.conf,
    /etc/cloudd/cloudd.toml (kept if present) and the data dir (0700). Then:
    systemctl daemon-reload; systemctl enable --now cloudd-fence-guard cloudd."""
    from cloudd.systemd import install, systemctl_available

    if prefix is None:
        venv = Path(sys.executable).absolute().parent.parent
        prefix = str(venv.parent) if venv.name == ".venv" else "/opt/cloudd"
    done = install(root, prefix=prefix, data_dir=unit_data_dir)
    for path in done.written:
        click.echo(f"wrote {path}")
    for path in done.kept:
        click.echo(f"kept {path} (exists)")
    if root == "/" and systemctl_available():
        click.echo("next: systemctl daemon-reload && systemd-tmpfiles --create cloudd.conf && systemctl enable --now cloudd-fence-guard cloudd")


def _signed(config: NodeConfig, secret: str, method: str, path: str, body: bytes = b"", targets: list[str] | None = None) -> httpx.Response:
    header = sign_node_request(secret, config.name, method, path, body)
    last: Exception | None = None
    for addr in targets or [config.api_addr, *config.api_peers]:
        try:
            return httpx.request(
                method, f"http://{addr}{path}", content=body or None, timeout=60.0,
                headers={"X-Cloudd-Node": header, "Content-Type": "application/json"},
            )
        except httpx.HTTPError as exc:
            last = exc
    _fail(f"no node answered: {last}")
    raise AssertionError


@cli.command()
@data_dir_option
@click.option("--ttl", type=int, default=3600, show_default=True, help="Seconds the token stays valid.")
def token(data_dir: str, ttl: int) -> None:
    """Print a one-time join token for a new node (needs the running cluster)."""
    config = NodeConfig.load(data_dir)
    reply = _signed(config, read_secret(data_dir), "POST", "/api/v1/cluster/join-tokens", orjson.dumps({"ttl_seconds": ttl}))
    if reply.status_code >= 400:
        _fail(reply.json()["error"]["message"])
    click.echo(reply.json()["token"])


@cli.command()
@data_dir_option
def leave(data_dir: str) -> None:
    """Take this node out of the cluster (leadership is handed over first) and stop it."""
    from cloudd.daemon import signal_daemon

    config = NodeConfig.load(data_dir)
    reply = _signed(config, read_secret(data_dir), "DELETE", f"/api/v1/cluster/nodes/{config.name}")
    if reply.status_code >= 400:
        _fail(reply.json()["error"]["message"])
    stopped = signal_daemon(config.data_dir)
    node_file = Path(config.data_dir) / "node.json"
    node_file.rename(node_file.with_suffix(".json.left"))
    click.echo(f"node {config.name} left the cluster" + ("; its daemon is stopping" if stopped else ""))


@cli.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--root", default=None, hidden=True, help="Read a simulated host under this directory (tests).")
def doctor(data_dir: str, as_json: bool, root: str | None) -> None:
    """Check what this host supports for cloudd (KVM, libvirt, qemu, iSCSI, LVM, DRBD, LIO,
    networking, clock, disk space, Raft peers) and what is missing. Changes nothing.

    Exit code: 0 when everything is ok (or informational), 1 on a warning, 2 on a failure.
    """
    from cloudd.doctor import Host, exit_code, render_text, report, run_checks, worst

    node, findings = run_checks(data_dir, Host.under(root) if root else Host())
    if as_json:
        click.echo(orjson.dumps(report(node, findings), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_text(node, findings))
    sys.exit(exit_code(worst(findings)))


@cli.command("network-cleanup")
@data_dir_option
def network_cleanup(data_dir: str) -> None:
    """Remove every bridge, VXLAN/VLAN device, tap, nftables table and DHCP server this
    node's network agent made (its --net-prefix), e.g. after stopping it for good. The
    node's VMs lose their network: run it with the node stopped."""
    from cloudd.daemon import make_network_drivers, signal_daemon
    from cloudd.ops.network import NetworkError

    config = NodeConfig.load(data_dir)
    if signal_daemon(config.data_dir, 0):
        _fail("the node is running: stop it first")
    if config.network.driver == "none":
        click.echo("this node's network driver is none: nothing to remove")
        return
    drivers = make_network_drivers(config)
    try:
        networks = sorted(drivers.links.networks() | drivers.dhcp.networks())
        for network_id in networks:
            drivers.dhcp.remove(network_id)
            drivers.links.remove_network(network_id)
        taps = sorted(drivers.links.ports())
        for port_id in taps:
            drivers.links.remove_port(port_id)
        drivers.filters.remove_ports(drivers.filters.ports())
        remove_all = getattr(drivers.filters, "remove_all", None)
        if remove_all is not None:
            remove_all()
        run_dir = getattr(drivers.dhcp, "run_dir", None)
        if run_dir is not None:
            try:
                Path(run_dir).rmdir()
            except OSError:
                pass  # not empty (files of someone else's?) or gone: leave it
    except NetworkError as exc:
        _fail(f"network cleanup: {exc}")
    click.echo(f"removed {len(networks)} networks and {len(taps)} taps with prefix {config.network.prefix}")


@cli.command("fence-guard")
@data_dir_option
def fence_guard(data_dir: str) -> None:
    """Run this node's fence guard in the foreground (systemd: cloudd-fence-guard.service).

    Armed by cloudd's first feed on <data dir>/fence.sock; when the feeds stop for
    fence_after seconds, it destroys every cloudd VM on this node (libvirt, then SIGKILL
    of their qemu processes) and notes it in <data dir>/fence.log."""
    from cloudd.fence_guard import serve as run

    run(data_dir)


def main() -> None:
    cli(prog_name="cloudd")


if __name__ == "__main__":
    main()
