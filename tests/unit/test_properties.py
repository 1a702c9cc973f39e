"""Property tests of the replicated apply: determinism and harmless invalid input."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudd.commands import REGISTRY, apply_command, make_command
from cloudd.model.networks import derived_id
from tests.factories import PW_HASH, Replica, init_args

NAMES = st.sampled_from(["n1", "n2", "n3", "bob", "admin", "x"])
VM_IDS = st.sampled_from(["v1", "v2"])
NET_IDS = st.sampled_from(["0000aaaa", "0000bbbb"])
PORT_IDS = st.sampled_from([derived_id(f"{vm}:{slot}", ()) for vm in ("v1", "v2") for slot in range(3)] + ["ffffffff"])
NIC_ARGS = st.fixed_dictionaries({"network": NET_IDS}, optional={"ip": st.sampled_from(["10.0.0.5", "10.0.0.1", "10.0.1.9", "x"]), "mac": st.sampled_from(["52:54:00:00:00:01", "01:00:5e:00:00:01"]), "profile": st.sampled_from(["open", "ssh"])})
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5))

ARGS: dict[str, Any] = {
    "cluster.init": st.just(init_args()),
    "cluster.join_token_create": st.fixed_dictionaries(
        {"token_id": st.sampled_from(["t1", "t2"]), "key": st.just("ab" * 16), "expires_at": st.floats(0, 5000)}
    ),
    "node.admit": st.fixed_dictionaries(
        {
            "name": NAMES,
            "raft_addr": st.sampled_from(["127.0.0.1:7002", "127.0.0.1:7003", None]),
            "api_addr": st.sampled_from(["127.0.0.1:8002", "127.0.0.1:8003"]),
            "membership": st.sampled_from(["voter", "replica"]),
            "join_token_id": st.sampled_from(["t1", "t2"]),
        }
    ),
    "node.register": st.fixed_dictionaries(
        {
            "name": NAMES,
            "roles": st.lists(st.sampled_from(["hypervisor", "storage"]), max_size=2),
            "inventory": st.fixed_dictionaries({"cpus": st.integers(0, 64), "ram_mb": st.integers(1, 10**6), "disk_gb": st.floats(0, 1e4)}),
        },
        optional={
            "compute": st.fixed_dictionaries({
                "cpu_models": st.lists(st.sampled_from(["qemu64", "Haswell", "bad model"]), max_size=2),
                "live_migration": st.booleans(),
                "migration_uri": st.sampled_from(["qemu+tls://n2/system", None]),
                "migrate_uri": st.sampled_from(["tcp://10.0.0.2", None]),
            })
        },
    ),
    "node.heartbeat": st.fixed_dictionaries({"name": NAMES}),
    "node.status_set": st.fixed_dictionaries(
        {"name": NAMES, "status": st.sampled_from(["up", "suspect", "down", "maintenance"]), "observed_seq": st.integers(0, 3)}
    ),
    "node.maintenance_set": st.fixed_dictionaries({"name": NAMES, "enabled": st.booleans()}, optional={"drain": st.sampled_from(["none", "live", "all", "bad"])}),
    "node.remove": st.fixed_dictionaries({"name": NAMES}),
    "user.create": st.fixed_dictionaries({"name": NAMES, "role": st.sampled_from(["admin", "user"]), "password_hash": st.just(PW_HASH)}),
    "user.delete": st.fixed_dictionaries({"name": NAMES}),
    "user.password_set": st.fixed_dictionaries({"name": NAMES, "password_hash": st.just(PW_HASH)}, optional={"keep_token_id": st.sampled_from(["k1", "k2"])}),
    "token.create": st.fixed_dictionaries(
        {
            "token_id": st.sampled_from(["k1", "k2"]),
            "user": NAMES,
            "secret_sha256": st.just("0" * 64),
            "name": st.just("t"),
            "expires_at": st.one_of(st.none(), st.floats(0, 5000)),
        },
        optional={"kind": st.sampled_from(["api", "session"])},
    ),
    "token.revoke": st.fixed_dictionaries({"token_id": st.sampled_from(["k1", "k2"])}),
    "keypair.create": st.fixed_dictionaries(
        {"user": NAMES, "name": st.sampled_from(["k1", "k2"]), "public_key": st.sampled_from(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4h3jbnqzGW3gaxPPxNTlDWHPTLiCdnOHHBEhn9Lbdt me@host", "ssh-ed25519 AAAA k", "nope"]), "fingerprint": st.just("ab:" * 15 + "ab")}
    ),
    "keypair.delete": st.fixed_dictionaries({"user": NAMES, "name": st.sampled_from(["k1", "k2"])}),
    "flavor.create": st.fixed_dictionaries(
        {"name": st.sampled_from(["s", "m"]), "vcpus": st.integers(1, 8), "ram_mb": st.integers(64, 8192), "disk_gb": st.integers(1, 50)}
    ),
    "flavor.delete": st.fixed_dictionaries({"name": st.sampled_from(["s", "m"])}),
    "image.register": st.fixed_dictionaries(
        {
            "id": st.sampled_from(["i1", "i2"]),
            "name": st.sampled_from(["deb", "alp"]),
            "owner": NAMES,
            "public": st.booleans(),
            "format": st.sampled_from(["qcow2", "raw", "iso"]),
            "path": st.just("/img"),
            "size_gb": st.integers(0, 10),
        }
    ),
    "image.delete": st.fixed_dictionaries({"id": st.sampled_from(["i1", "i2"])}),
    "image.default_set": st.fixed_dictionaries({"id": st.sampled_from(["i1", "i2", None])}),
    "image.create": st.fixed_dictionaries(
        {"id": st.sampled_from(["i1", "i2", "i3"]), "name": st.sampled_from(["deb", "iso"]), "owner": NAMES, "public": st.booleans(), "format": st.sampled_from(["qcow2", "raw", "iso"])}
    ),
    "image.upload_done": st.fixed_dictionaries(
        {"id": st.sampled_from(["i1", "i2", "i3"]), "node": st.sampled_from(["n1", "n2"]), "size_bytes": st.integers(1, 10**9), "virtual_size_gb": st.floats(0.001, 100), "sha256": st.just("ab" * 32)}
    ),
    "image.upload_failed": st.fixed_dictionaries({"id": st.sampled_from(["i1", "i2", "i3"]), "reason": st.just("bad file")}),
    "image.copied": st.fixed_dictionaries({"id": st.sampled_from(["i1", "i2", "i3"]), "node": st.sampled_from(["n1", "n2"])}),
    "vm.create": st.one_of(
        st.fixed_dictionaries(
            {"id": VM_IDS, "name": st.sampled_from(["web", "db"]), "owner": st.just("bob"), "flavor": st.just("s")},
            optional={"power": st.sampled_from(["running", "stopped"])},
        ),
        st.fixed_dictionaries(
        {"id": VM_IDS, "name": st.sampled_from(["web", "db"]), "owner": st.sampled_from(["bob", "admin", "x"])},
        optional={
            "flavor": st.sampled_from(["s", "m"]),
            "vcpus": st.integers(-1, 10),
            "ram_mb": st.integers(0, 20000),
            "disk_gb": st.integers(0, 100),
            "image": st.sampled_from(["i1", "i2"]),
            "power": st.sampled_from(["running", "stopped"]),
            "swap_mb": st.integers(-1, 4096),
            "iso": st.sampled_from(["i1", "i2"]),
            "networks": st.lists(NIC_ARGS, max_size=3),
            "group": st.sampled_from(["web", "db"]),
            "nodes": st.lists(st.sampled_from(["n1", "n2", "zz"]), max_size=2),
            "ha": st.booleans(),
        },
        ),
    ),
    "vm.place": st.fixed_dictionaries({"id": VM_IDS, "node": st.sampled_from(["n1", "n2"])}),
    "vm.unplaceable": st.fixed_dictionaries({"id": VM_IDS, "reason": st.just("full")}),
    "vm.start": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.shutdown": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.stop": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.reset": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.reboot": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.delete": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.disk.add": st.fixed_dictionaries({"id": VM_IDS, "disk_id": st.sampled_from(["d1", "d2"]), "size_gb": st.integers(0, 200)}),
    "vm.disk.remove": st.fixed_dictionaries({"id": VM_IDS, "disk_id": st.sampled_from(["d1", "d2"])}),
    "vm.iso.attach": st.fixed_dictionaries({"id": VM_IDS, "image": st.sampled_from(["i1", "i2"])}),
    "vm.iso.detach": st.fixed_dictionaries({"id": VM_IDS}),
    "vm.resize": st.fixed_dictionaries(
        {"id": VM_IDS},
        optional={"flavor": st.sampled_from(["s", "m"]), "vcpus": st.integers(0, 9), "ram_mb": st.integers(0, 20000), "disk_gb": st.integers(0, 60)},
    ),
    "pool.create": st.fixed_dictionaries(
        {"name": st.sampled_from(["p1", "p2"])},
        optional={
            "limits": st.fixed_dictionaries({}, optional={"vcpus": st.one_of(st.none(), st.integers(0, 4)), "ram_mb": st.integers(0, 4096), "disk_gb": st.integers(0, 40), "vms": st.integers(0, 3)}),
            "networks": st.lists(st.sampled_from(["net1", "net2"]), max_size=2),
        },
    ),
    "pool.update": st.fixed_dictionaries(
        {"name": st.sampled_from(["p1", "p2"])},
        optional={"limits": st.fixed_dictionaries({}, optional={"vcpus": st.one_of(st.none(), st.integers(0, 4)), "vms": st.integers(0, 3)}), "description": st.just("d")},
    ),
    "pool.delete": st.fixed_dictionaries({"name": st.sampled_from(["p1", "p2"])}),
    "user.update": st.fixed_dictionaries(
        {"name": NAMES},
        optional={"pool": st.sampled_from(["p1", "p2", None]), "disabled": st.booleans(), "role": st.sampled_from(["admin", "user"])},
    ),
    "cluster.restore_begin": st.fixed_dictionaries(
        {
            "cluster": st.just({"id": "c1", "name": "x", "max_voters": 3, "created_at": 1.0}),
            "node": st.just({"name": "n9", "raft_addr": "127.0.0.1:7009", "api_addr": "127.0.0.1:8009"}),
            "backup": st.just({"applied_index": 5, "taken_at": 2.0}),
        }
    ),
    "cluster.restore_put": st.fixed_dictionaries(
        {"kind": st.sampled_from(["users", "vms", "events", "default_image"]), "items": st.one_of(st.just({}), st.just([]), st.just({"zed": {"name": "zed", "role": "user", "password_hash": PW_HASH}}), SCALARS)}
    ),
    "cluster.restore_finish": st.just({}),
    "storage_pool.create": st.fixed_dictionaries(
        {
            "name": st.sampled_from(["sp1", "sp2"]),
            "node": st.sampled_from(["n1", "n2"]),
            "backend": st.sampled_from(["file", "lvm", "drbd"]),
            "config": st.sampled_from([{"path": "/srv/vol"}, {"vg": "vg0"}, {"vg": "vg0", "peer": "n2"}, {"path": "rel"}, {}]),
        }
    ),
    "storage_pool.delete": st.fixed_dictionaries({"name": st.sampled_from(["sp1", "sp2"])}),
    "storage_pool.report": st.fixed_dictionaries(
        {"name": st.sampled_from(["sp1", "sp2"]), "node": st.sampled_from(["n1", "n2"]), "total_bytes": st.integers(0, 1 << 40), "free_bytes": st.integers(0, 1 << 40)}
    ),
    "volume.create": st.fixed_dictionaries(
        {"id": st.sampled_from(["vo1", "vo2"]), "name": st.sampled_from(["data", "logs"]), "owner": st.sampled_from(["bob", "x"]), "size_gb": st.integers(-1, 500)},
        optional={"pool": st.sampled_from(["sp1", "sp2"]), "image": st.sampled_from(["i1", "i2"])},
    ),
    "volume.delete": st.fixed_dictionaries({"id": st.sampled_from(["vo1", "vo2"])}),
    "volume.attach": st.fixed_dictionaries({"id": st.sampled_from(["vo1", "vo2"]), "vm": VM_IDS}),
    "volume.detach": st.fixed_dictionaries({"id": st.sampled_from(["vo1", "vo2"])}),
    "volume.resize": st.fixed_dictionaries({"id": st.sampled_from(["vo1", "vo2"]), "size_gb": st.integers(0, 600)}, optional={"force": st.booleans()}),
    "volume.report": st.fixed_dictionaries(
        {"id": st.sampled_from(["vo1", "vo2"]), "node": st.sampled_from(["n1", "n2"]), "present": st.booleans()},
        optional={"size_bytes": st.integers(0, 1 << 40), "error": st.one_of(st.none(), st.just("disk full"))},
    ),
    "volume.replica_report": st.fixed_dictionaries({
        "id": st.sampled_from(["vo1", "vo2"]), "node": st.sampled_from(["n1", "n2"]), "role": st.sampled_from(["Primary", "Secondary"]),
        "disk_state": st.sampled_from(["UpToDate", "Outdated", "bad state"]), "peer_disk_state": st.just("DUnknown"), "connection_state": st.just("Connecting"),
    }),
    "volume.promote": st.fixed_dictionaries({"id": st.sampled_from(["vo1", "vo2"]), "node": st.sampled_from(["n1", "n2"]), "observed_seq": st.integers(0, 5)}),
    "vm.report": st.fixed_dictionaries(
        {"id": VM_IDS, "node": st.sampled_from(["n1", "n2"]), "power": st.sampled_from(["running", "shut_off", "absent", "crashed"])},
        optional={"error": st.one_of(st.none(), st.just("boom")), "action_seq": st.integers(0, 3), "nics": st.lists(st.just("52:54:00:00:00:01"), max_size=1)},
    ),
    "network.create": st.fixed_dictionaries(
        {"id": NET_IDS, "name": st.sampled_from(["lan", "wan"]), "subnet": st.sampled_from(["10.0.0.0/24", "10.0.0.0/16", "10.0.0.128/25", "10.0.1.0/24", "300.1.1.0/24", "10.0.0.0/30"])},
        optional={
            "owner": st.sampled_from(["bob", "x", None]),
            "gateway": st.sampled_from(["10.0.0.1", "10.0.1.1", None]),
            "pool_start": st.sampled_from(["10.0.0.10", "10.0.1.10"]),
            "pool_end": st.sampled_from(["10.0.0.12", "10.0.0.254"]),
            "segment": st.sampled_from(["vxlan", "vlan"]),
            "segment_id": st.integers(1, 5000),
            "uplink": st.just("eth0"),
            "ipv6_prefix": st.sampled_from(["2001:db8::/64", "2001:db8::/48"]),
        },
    ),
    "vm.failover": st.fixed_dictionaries({"id": VM_IDS, "from_node": st.sampled_from(["n1", "n2"]), "node": st.sampled_from(["n1", "n2"]), "observed_seq": st.integers(0, 4)}),
    "vm.failover_waiting": st.fixed_dictionaries({"id": VM_IDS, "from_node": st.sampled_from(["n1", "n2"]), "reason": st.just("full")}),
    "vm.migrate": st.fixed_dictionaries(
        {"id": VM_IDS, "node": st.sampled_from(["n1", "n2"]), "mode": st.sampled_from(["offline", "live", "teleport"])},
        optional={"force": st.booleans(), "bandwidth_mib_s": st.integers(0, 100), "max_downtime_ms": st.integers(0, 500)},
    ),
    "vm.migration_step": st.fixed_dictionaries(
        {"id": VM_IDS, "migration": st.sampled_from(["t7", "t8", "t9", "t10"]), "node": st.sampled_from(["n1", "n2"]),
         "phase": st.sampled_from(["copying", "switched", "migrating", "landed", "failed", "nonsense"])},
        optional={"reason": st.just("boom"), "downtime_ms": st.floats(-1, 500)},
    ),
    "vm.migration_progress": st.fixed_dictionaries(
        {"id": VM_IDS, "migration": st.sampled_from(["t7", "t8", "t9"]), "node": st.sampled_from(["n1", "n2"]), "percent": st.integers(-1, 101), "message": st.just("x")}
    ),
    "vm.migration_cancel": st.fixed_dictionaries({"id": VM_IDS}, optional={"migration": st.sampled_from(["t7", "t8"]), "reason": st.just("stop")}),
    "cluster.rebalance_set": st.fixed_dictionaries(
        {"id": st.sampled_from(["p1", "p2"]), "moves": st.lists(st.fixed_dictionaries({"vm": VM_IDS, "from": st.sampled_from(["n1", "n2"]), "to": st.sampled_from(["n1", "n2", "n3"])}), max_size=2)},
        optional={"auto": st.booleans(), "replace": st.booleans()},
    ),
    "vm.leftovers_cleaned": st.fixed_dictionaries({"id": VM_IDS, "node": st.sampled_from(["n1", "n2"])}),
    "cluster.alert_set": st.fixed_dictionaries({"key": st.sampled_from(["storm", "BAD KEY"]), "message": st.sampled_from(["x", None])}),
    "cluster.settings_set": st.fixed_dictionaries(
        {}, optional={"policy": st.sampled_from(["resource", "usage", "trend", "magic"]), "cpu_ratio": st.floats(0, 10), "shared_vm_storage": st.booleans(), "ram_reserve_mb": st.integers(-1, 4096)}
    ),
    "network.update": st.fixed_dictionaries({"id": NET_IDS}, optional={"name": st.sampled_from(["lan", "wan"]), "dhcp": st.booleans(), "profile": st.sampled_from(["web", "closed"])}),
    "network.delete": st.fixed_dictionaries({"id": NET_IDS}),
    "vm.nic.attach": st.fixed_dictionaries({"id": VM_IDS, "network": NET_IDS}, optional={"ip": st.sampled_from(["10.0.0.5", "10.0.0.11"]), "mac": st.sampled_from(["52:54:00:00:00:01"])}),
    "vm.nic.detach": st.fixed_dictionaries({"id": VM_IDS, "port": PORT_IDS}),
    "port.update": st.fixed_dictionaries({"id": PORT_IDS, "profile": st.sampled_from(["open", "web", "ssh", "closed"])}),
    "port.ip.assign": st.fixed_dictionaries({"id": PORT_IDS}, optional={"ip": st.sampled_from(["10.0.0.5", "10.0.0.6", "10.0.0.0"])}),
    "port.ip.unassign": st.fixed_dictionaries({"id": PORT_IDS, "ip": st.sampled_from(["10.0.0.5", "10.0.0.10", "10.0.0.11"])}),
    "port.report": st.fixed_dictionaries(
        {"node": st.sampled_from(["n1", "n2"]), "ports": st.dictionaries(PORT_IDS, st.just({"tx_bytes": 1, "tx_packets": 1, "rx_bytes": 2, "rx_packets": 2, "dropped_packets": 0}), max_size=2)}
    ),
}


def test_strategies_cover_every_command() -> None:
    assert set(ARGS) == set(REGISTRY)


# the VM lifecycle has the most states: draw its commands more often
WEIGHTED_OPS = sorted(ARGS) + [op for op in sorted(ARGS) if op.startswith("vm.")] * 3
COMMANDS = st.sampled_from(WEIGHTED_OPS).flatmap(
    lambda op: st.tuples(st.just(op), ARGS[op], st.integers(0, 300).map(lambda i: f"r{i}"), st.floats(900, 6000))
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(COMMANDS, max_size=60))
def test_two_replicas_applying_the_same_commands_agree(cmds: list[tuple[str, dict[str, Any], str, float]]) -> None:
    first, second = Replica(), Replica()
    setup = [
        ("cluster.init", init_args(node={"name": "n1", "raft_addr": "127.0.0.1:7001", "api_addr": "127.0.0.1:8001"})),
        ("node.register", {"name": "n1", "roles": ["hypervisor"], "inventory": {"cpus": 8, "ram_mb": 16384, "disk_gb": 100.0}}),
        ("node.heartbeat", {"name": "n1"}),
        ("node.status_set", {"name": "n1", "status": "up", "observed_seq": 1}),
        ("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH}),
        ("flavor.create", {"name": "s", "vcpus": 1, "ram_mb": 512, "disk_gb": 5}),
    ]
    for i, (op, args) in enumerate(setup):
        raw = make_command(op, args, f"setup{i}", 800.0)
        first.apply(raw)
        second.apply(raw)
    for op, args, rid, ts in cmds:
        raw = make_command(op, args, rid, ts)
        assert first.apply(raw) == second.apply(raw)
    assert first.state.digest() == second.state.digest()
    assert first.state.applied_chain == second.state.applied_chain
    # ports: unique MACs and addresses, never on a missing VM or network, never reserved
    ports = list(first.state.ports.values())
    assert len({p["mac"] for p in ports}) == len(ports)
    for net_id, network in first.state.networks.items():
        held = [ip for p in ports if p["network"] == net_id for ip in p["ips"]]
        assert len(held) == len(set(held))
        assert not set(held) & {network["dhcp_ip"], network["gateway"]}
    assert all(p["vm"] in first.state.vms and p["network"] in first.state.networks and p["ips"] for p in ports)
    # the derived listing index follows every create and delete
    assert first.state.vm_keys == sorted((v["owner"], v["name"], v["id"]) for v in first.state.vms.values())
    for vm in first.state.vms.values():
        assert vm["id"] in list(first.state.vm_ids_of(vm["owner"]))
        assert all(first.state.vms[i]["owner"] == vm["owner"] for i in first.state.vm_ids_of(vm["owner"]))
        ids, total = first.state.vm_page(vm["owner"], 0, 1000)
        assert ids == list(first.state.vm_ids_of(vm["owner"])) and total == len(ids)
        assert first.state.vm_page(vm["owner"], total, 10) == ([], total)


def _garbage_command() -> st.SearchStrategy[bytes]:
    junk_args = st.dictionaries(st.text(max_size=8), SCALARS, max_size=4)
    structured = st.builds(
        lambda op, args, rid, ts, v: json.dumps({"op": op, "v": v, "id": rid, "ts": ts, "args": args}),
        st.one_of(st.sampled_from(sorted(REGISTRY)), st.text(max_size=10)),
        junk_args,
        st.one_of(st.text(max_size=70), st.integers(), st.integers(min_value=2**64)),
        st.one_of(st.floats(allow_nan=False), st.text(max_size=3), st.none()),
        st.one_of(st.just(1), st.integers(-3, 3), st.text(max_size=2)),
    )
    return st.one_of(st.binary(max_size=64), structured)


@settings(max_examples=400, deadline=None)
@given(st.lists(_garbage_command(), max_size=20))
def test_invalid_commands_never_raise_and_never_change_resources(raws: list[bytes]) -> None:
    replica = Replica()
    replica.ok("cluster.init", init_args())
    replica.ok("user.create", {"name": "bob", "role": "user", "password_hash": PW_HASH})
    before = copy.deepcopy(replica.state.domain_dict())
    for raw in raws:
        outcome = apply_command(replica.state, raw, 100)
        if "error" not in outcome:
            # a random command may be valid by chance (e.g. an args-less op): start over
            before = copy.deepcopy(replica.state.domain_dict())
        assert replica.state.domain_dict() == before
