"""A real 3-node cluster set up for the OpenStack clients: a flavor, an image, a public
network, a storage pool, and users (one of them in a small pool), plus the ways the tests
drive the clients: the ``openstack`` CLI as a subprocess and openstacksdk in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.harness import BIN, LocalCluster, wait_for

OPENSTACK = str(BIN / "openstack")
PASSWORDS = {"alice": "alice-pass-1", "bob": "bob-pass-12", "carol": "carol-pass-1"}
POOL_LIMITS = {"vcpus": 2, "ram_mb": 512, "vms": 2}


@dataclass
class Cloud:
    """The cluster and what the tests know of it."""

    cluster: LocalCluster
    root: Path
    image_id: str
    network_id: str

    def auth_url(self, node: str = "node2") -> str:
        return f"{self.cluster.nodes[node].url}/identity"

    def cli(self, user: str, *args: str, node: str = "node2", timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``openstack <args>`` as ``user`` against ``node`` (JSON output where asked)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(HOME=str(self.root), OS_CLOUD="", PYTHONWARNINGS="ignore")
        auth = [
            "--os-auth-url", self.auth_url(node), "--os-username", user, "--os-password", PASSWORDS[user],
            "--os-project-name", user if user != "bob" else "small", "--os-user-domain-name", "Default",
            "--os-project-domain-name", "Default", "--os-identity-api-version", "3", "--os-interface", "public",
        ]
        done = subprocess.run([OPENSTACK, *auth, *args], check=False, capture_output=True, text=True, timeout=timeout, env=env)
        if check:
            assert done.returncode == 0, f"openstack {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
        return done

    def cli_json(self, user: str, *args: str, node: str = "node2") -> Any:
        return json.loads(self.cli(user, *args, "-f", "json", node=node).stdout)

    def sdk(self, user: str, node: str = "node3") -> Any:
        import openstack

        return openstack.connect(
            auth_url=self.auth_url(node), username=user, password=PASSWORDS[user], project_name=user if user != "bob" else "small",
            user_domain_name="Default", project_domain_name="Default", identity_api_version="3", interface="public", region_name="RegionOne",
            load_yaml_config=False, load_envvars=False,
        )

    def token(self, user: str, node: str = "node1") -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": PASSWORDS[user]}}}}}
        reply = httpx.post(f"{self.auth_url(node)}/v3/auth/tokens", json=body, timeout=20)
        assert reply.status_code == 201, reply.text
        return reply.headers["X-Subject-Token"]


def set_up(cluster: LocalCluster, root: Path) -> Cloud:
    """Everything the OpenStack tests use, made through cloudd's own API as an admin."""
    pool_dir = root / "volumes"
    pool_dir.mkdir()
    with cluster.api("node1") as admin:
        for path, body in (
            ("/api/v1/flavors", {"name": "tiny", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}),
            ("/api/v1/flavors", {"name": "big", "vcpus": 4, "ram_mb": 1024, "disk_gb": 2}),
            ("/api/v1/networks", {"name": "public", "subnet": "192.0.2.0/24"}),
            ("/api/v1/storage-pools", {"name": "vols", "node": "node1", "backend": "file", "config": {"path": str(pool_dir)}}),
            ("/api/v1/pools", {"name": "small", "limits": POOL_LIMITS}),
        ):
            reply = admin.post(path, json=body)
            assert reply.status_code == 201, reply.text
        image = admin.post("/api/v1/images", json={"name": "cirros", "path": "/var/lib/cloudd/images/cirros.qcow2", "format": "qcow2", "size_gb": 1})
        assert image.status_code == 201, image.text
        network = admin.get("/api/v1/networks/public").json()
        for name, password in PASSWORDS.items():
            admin.post("/api/v1/users", json={"name": name, "password": password}).raise_for_status()
        admin.patch("/api/v1/users/bob", json={"pool": "small"}).raise_for_status()
        wait_for(lambda: admin.get("/api/v1/storage-pools").json()["items"][0].get("capacity"), what="the storage pool's capacity")
    cluster.wait_same_digest(list(cluster.nodes))
    return Cloud(cluster, root, image.json()["id"], network["id"])


if __name__ == "__main__":  # a cluster to try clients against by hand: python -m tests.openstack.cloud DIR
    import signal
    import time

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    where = Path(sys.argv[1])
    where.mkdir(parents=True, exist_ok=True)
    c = LocalCluster(where, first_host=220).init(3)
    cloud = set_up(c, where)
    print(json.dumps({"auth_url": cloud.auth_url(), "nodes": {n: node.url for n, node in c.nodes.items()}, "admin": c.password}), flush=True)
    try:
        while True:
            time.sleep(1)
    finally:
        c.close()
