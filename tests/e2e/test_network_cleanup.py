"""``cloudd network-cleanup`` removes what a node's network agent made, and nothing else."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from cloudd.config import NetworkSettings, NodeConfig
from cloudd.ops.netlink_links import NetlinkLinks
from cloudd.ops.network import NetworkSpec, PortSpec
from cloudd.ops.nft_filter import NftFilter
from tests.e2e.netns import Namespaces, netns  # noqa: F401

pytestmark = [pytest.mark.e2e]
CLOUDD = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cloudd")


def test_network_cleanup_leaves_no_device_or_table_of_the_node(tmp_path: Path, netns: Namespaces) -> None:  # noqa: F811
    hv = netns.add("hv")
    prefix = "k" + secrets.token_hex(1)
    config = NodeConfig(
        name="hv1", cluster_id="c0ffee", api_addr="127.0.0.1:1", raft_addr=None, membership="replica", peers=[],
        network=NetworkSettings(prefix=prefix, netns=hv, underlay="192.0.2.1:4789"), data_dir=str(tmp_path),
    )
    config.save()
    links, filters = NetlinkLinks(prefix=prefix, netns=hv), NftFilter(prefix=prefix, netns=hv)
    spec = NetworkSpec("0000aaaa", prefix=prefix, segment_id=4242, local_ip="192.0.2.1")
    port = PortSpec("0000000b", "0000aaaa", "52:54:00:00:00:0b", ipv4=("10.0.0.2",), prefix=prefix)
    links.ensure_network(spec)
    filters.apply_port(port)
    netns.run(hv, ["ip", "link", "add", "keepme", "type", "bridge"])  # not ours: stays
    assert links.networks() == {"0000aaaa"} and filters.ports() == {"0000000b"}
    done = subprocess.run([CLOUDD, "network-cleanup", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "removed 1 networks" in done.stdout
    assert links.networks() == set() and filters.ports() == set()
    assert prefix + "filter" not in netns.run(hv, ["nft", "list", "tables"]).stdout
    assert "keepme" in netns.run(hv, ["ip", "-br", "link"]).stdout
    links.close()
