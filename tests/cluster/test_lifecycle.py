"""Real cloudd processes: election, writes anywhere, kill -9, restarts, membership."""

from __future__ import annotations

import pytest

from tests.cluster.harness import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def create_user(cluster: LocalCluster, via: str, name: str) -> int:
    with cluster.api(via) as client:
        reply = client.post("/api/v1/users", json={"name": name, "password": "pass-word-1"})
    assert reply.status_code == 201, reply.text
    return int(reply.headers["X-Cloudd-Index"])


def user_exists(cluster: LocalCluster, via: str, name: str, min_index: int | None = None) -> bool:
    params = {"min_index": min_index} if min_index is not None else {}
    with cluster.api(via) as client:
        reply = client.get(f"/api/v1/users/{name}", params=params)
    return reply.status_code == 200


def test_three_nodes_elect_one_leader_and_write_through_any_node(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    status = cluster.status("node2")
    assert status["has_quorum"] and len(status["raft"]["voters"]) == 3
    assert sorted(m["name"] for m in status["members"]) == ["node1", "node2", "node3"]
    for i, via in enumerate(["node1", "node2", "node3"]):
        index = create_user(cluster, via, f"user{i}")
        reader = ["node2", "node3", "node1"][i]
        assert user_exists(cluster, reader, f"user{i}", min_index=index), f"written via {via}, read via {reader}"
    assert leader in cluster.nodes
    wait_for(lambda: all(n["status"] == "up" for n in cluster.api("node3").get("/api/v1/nodes").json()["items"]), what="all nodes up")


def test_leader_kill9_elects_a_new_leader_and_the_node_catches_up(cluster: LocalCluster) -> None:
    old = cluster.wait_leader()
    survivors = [n for n in cluster.nodes if n != old]
    cluster.kill9(old)
    new = cluster.wait_leader(among=survivors, exclude=old)
    assert new != old
    index = create_user(cluster, survivors[0], "after-failover")
    cluster.start(old)
    cluster.wait_healthy(old)
    assert user_exists(cluster, old, "after-failover", min_index=index)
    # the leader marks the dead node suspect/down while it was gone, and up again now
    wait_for(lambda: cluster.api(new).get(f"/api/v1/nodes/{old}").json()["status"] == "up", what="restarted node up")


def test_acknowledged_writes_survive_kill9_of_every_node(cluster: LocalCluster) -> None:
    acknowledged = []
    for i in range(20):
        create_user(cluster, f"node{i % 3 + 1}", f"durable{i}")
        acknowledged.append(f"durable{i}")
    for name in list(cluster.nodes):
        cluster.kill9(name)
    for name in cluster.nodes:
        cluster.start(name)
    for name in cluster.nodes:
        cluster.wait_healthy(name)
    cluster.wait_leader()
    for name in cluster.nodes:
        with cluster.api(name) as client:
            def all_there() -> bool:
                users = {u["name"] for u in client.get("/api/v1/users", params={"limit": 1000}).json()["items"]}
                return set(acknowledged) <= users
            wait_for(all_there, what=f"all acknowledged users on {name}")


def test_dead_node_goes_suspect_then_down(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    victim = next(n for n in cluster.nodes if n != leader)
    cluster.kill9(victim)
    seen = set()

    def down() -> bool:
        status = cluster.api(leader).get(f"/api/v1/nodes/{victim}").json()["status"]
        seen.add(status)
        return status == "down"

    wait_for(down, timeout=20, interval=0.1, what="victim down")
    assert "suspect" in seen


def test_fourth_node_joins_as_replica_serves_and_forwards_writes(cluster: LocalCluster) -> None:
    cluster.join("node4", via="node2")
    status = cluster.status("node4")
    member = next(m for m in status["members"] if m["name"] == "node4")
    assert member["membership"] == "replica"
    assert len(status["raft"]["voters"]) == 3 and status["raft"]["role"] == "replica"
    index = create_user(cluster, "node4", "via-replica")
    assert user_exists(cluster, "node1", "via-replica", min_index=index)
    wait_for(lambda: cluster.api("node1").get("/api/v1/nodes/node4").json()["status"] == "up", what="replica up")


def test_removing_the_leader_hands_over_then_shrinks_the_voters(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    via = next(n for n in cluster.nodes if n != leader)
    with cluster.api(via) as client:
        reply = client.delete(f"/api/v1/cluster/nodes/{leader}")
    assert reply.status_code == 200, reply.text
    cluster.kill9(leader)
    rest = [n for n in cluster.nodes if n != leader]
    new = cluster.wait_leader(among=rest)
    assert new != leader
    status = cluster.status(rest[0])
    assert len(status["raft"]["voters"]) == 2
    assert leader not in [m["name"] for m in status["members"]]
    index = create_user(cluster, rest[1], "after-removal")
    assert user_exists(cluster, rest[0], "after-removal", min_index=index)


def test_leave_takes_a_follower_out_and_stops_it(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n != leader)
    out = cluster.run_cloudd("leave", "--data-dir", str(cluster.nodes[follower].data_dir))
    assert out.returncode == 0, out.stderr
    proc = cluster.nodes[follower].proc
    assert proc is not None and proc.wait(20) is not None
    rest = [n for n in cluster.nodes if n != follower]
    status = cluster.status(rest[0])
    assert follower not in [m["name"] for m in status["members"]]
    assert len(status["raft"]["voters"]) == 2
    create_user(cluster, rest[1], "two-voters-still-write")


def test_join_with_a_bad_or_reused_token_is_refused(cluster: LocalCluster) -> None:
    node = cluster.new_node("intruder")
    out = cluster.run_cloudd(
        "join", cluster.nodes["node1"].api_addr, "--token", "cdj.0123456789abcdef." + "ab" * 20,
        "--data-dir", str(node.data_dir), "--name", "intruder", "--api-addr", node.api_addr, "--raft-addr", node.raft_addr,
    )
    assert out.returncode != 0 and "join refused (403)" in out.stderr
    assert "intruder" not in [m["name"] for m in cluster.status("node1")["members"]]


def test_an_admin_removes_a_dead_node_and_it_cannot_come_back(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    dead = next(n for n in cluster.nodes if n != leader)
    cluster.kill9(dead)
    with cluster.api(leader) as client:
        reply = client.delete(f"/api/v1/cluster/nodes/{dead}")
    assert reply.status_code == 200, reply.text
    rest = [n for n in cluster.nodes if n != dead]
    assert len(cluster.status(rest[0])["raft"]["voters"]) == 2
    # the removed node restarts with its old member list: it must not disturb the others
    term = cluster.status(leader)["term"]
    cluster.start(dead)
    import time

    time.sleep(4)
    assert cluster.leader(rest) == leader
    assert cluster.status(leader)["term"] == term
    create_user(cluster, rest[0], "after-dead-removal")


def test_without_quorum_writes_fail_fast_with_503_and_reads_still_work(cluster: LocalCluster) -> None:
    import time

    leader = cluster.wait_leader()
    lone = next(n for n in cluster.nodes if n != leader)
    for name in cluster.nodes:
        if name != lone:
            cluster.kill9(name)
    with cluster.api(lone) as client:
        started = time.monotonic()
        reply = client.post("/api/v1/users", json={"name": "nobody-commits", "password": "pass-word-1"}, headers={"X-Request-Id": "no-quorum-1"})
        took = time.monotonic() - started
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"]["details"]["request_id"] == "no-quorum-1"
        assert took < 6.0
        assert client.get("/api/v1/nodes").status_code == 200  # local reads need no quorum
    assert httpx_get_status(cluster, lone, "/healthz") == 503


def httpx_get_status(cluster: LocalCluster, name: str, path: str) -> int:
    import httpx

    return httpx.get(cluster.nodes[name].url + path, timeout=10).status_code


def test_removing_a_live_voter_while_another_is_down_is_refused(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower, dead = [n for n in cluster.nodes if n != leader]
    cluster.kill9(dead)
    with cluster.api(leader) as client:
        reply = client.delete(f"/api/v1/cluster/nodes/{follower}")
    assert reply.status_code == 409 and "no majority" in reply.json()["error"]["message"]
    assert len(cluster.status(leader)["raft"]["voters"]) == 3
    create_user(cluster, follower, "still-has-quorum")
