"""schemathesis against the OpenAPI document a real node serves.

Checks: no 5xx, status codes, content types, response headers and bodies all as the
document says. Run twice: as a user and as an admin, through a node that is usually not
the leader. The seed is fixed so that CI is reproducible; change ``SEED`` (or run
``schemathesis run`` by hand, see docs/api.md) to explore further.

Left out of the generated traffic, because a fuzzer that reaches them ends the run or
the cluster, not because they are unchecked (tests/cluster/test_api.py covers them):
logging out and revoking tokens (the fuzzer finds its own token's id in ``GET
/api/v1/tokens`` and revokes it) and removing cluster nodes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.cluster.harness import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SEED = 20261124
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"
EXCLUDED = ("/api/v1/auth/logout", "/api/v1/tokens/{token_id}", "/api/v1/cluster/nodes/{name}")


def schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed: run scripts/install.sh (it is in the test extras)")
    return found


def fuzz(cluster: LocalCluster, token: str, tmp_path: Path, *extra: str) -> str:
    url = cluster.nodes["node2"].url
    args = [
        schemathesis(), "run", f"{url}/api/v1/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", CHECKS,
        "--phases", "coverage,fuzzing",
        "--max-examples", "25",
        "--seed", str(SEED),
        "--workers", "1",  # one at a time: a reproducible order for the fixed seed
        "--request-timeout", "20",
        "--no-color",
        "--report-dir", str(tmp_path),
    ]
    for path in EXCLUDED:
        args += ["--exclude-path", path]
    result = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    return output


def operations_reached(output: str) -> int:
    match = re.search(r"Tested:\s+(\d+)", output)
    assert match, output[-3000:]
    return int(match.group(1))


def test_fuzzing_as_a_user_finds_no_server_error_and_no_answer_against_the_schema(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    with shared_cluster.api("node1") as admin:
        assert admin.post("/api/v1/users", json={"name": "fuzz-user", "password": "fuzz-pass-1"}).status_code == 201
        assert admin.post("/api/v1/flavors", json={"name": "fuzz", "vcpus": 1, "ram_mb": 128, "disk_gb": 1}).status_code == 201
    token = httpx.post(shared_cluster.nodes["node2"].url + "/api/v1/auth/login", json={"username": "fuzz-user", "password": "fuzz-pass-1"}).json()["token"]
    output = fuzz(shared_cluster, token, tmp_path)
    documented = len(httpx.get(shared_cluster.nodes["node2"].url + "/api/v1/openapi.json").json()["paths"])
    assert operations_reached(output) >= documented  # operations outnumber paths; every path is reached
    # the cluster is still whole and answers
    assert all(httpx.get(n.url + "/healthz").status_code == 200 for n in shared_cluster.nodes.values())


def test_fuzzing_as_an_admin_finds_no_server_error_and_no_answer_against_the_schema(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    reply = httpx.post(shared_cluster.nodes["node3"].url + "/api/v1/auth/login", json={"username": "admin", "password": shared_cluster.password})
    output = fuzz(shared_cluster, reply.json()["token"], tmp_path)
    assert operations_reached(output) >= 40
    assert all(httpx.get(n.url + "/healthz").status_code == 200 for n in shared_cluster.nodes.values())
    with shared_cluster.api("node1") as admin:
        digests = {n: admin.get(f"{shared_cluster.nodes[n].url}/api/v1/cluster/digest").json() for n in shared_cluster.nodes}
    assert len(digests) == 3
