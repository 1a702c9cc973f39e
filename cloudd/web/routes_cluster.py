"""/api/v1/cluster: status, join tokens, admitting and removing nodes."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from cloudd.commands.common import ADDRESS, NODE_NAME, OBJECT_ID
from cloudd.backup import make_backup
from cloudd.errors import CloudError
from cloudd.raft.membership import add_voter, remove_voter, step_down
from cloudd.security import derived_token, join_proof, new_token, seal_for_joiner, sign_node_request
from cloudd.validate import Field
from cloudd.web.api import Api
from cloudd.web.auth import require_admin
from cloudd.web.http import guarded, json_response, read_json, request_id
from cloudd.web.openapi import ApiRoute, Doc

JOIN_TOKEN_PREFIX = "cdj"
JOIN_SPEC = {
    "token_id": OBJECT_ID,
    "name": NODE_NAME,
    "raft_addr": Field("str", pattern=ADDRESS.pattern, nullable=True),
    "api_addr": ADDRESS,
    "want": Field("str", choices=("auto", "voter", "replica"), required=False),
    "proof": Field("str", max_len=64),
}
JOIN_TOKEN_CREATE = {"ttl_seconds": Field("num", min=60, max=7 * 86400, required=False)}


def join_payload(body: dict[str, Any]) -> bytes:
    """The bytes a joining node proves with its token key (everything but the proof)."""
    return orjson.dumps({k: v for k, v in body.items() if k != "proof"}, option=orjson.OPT_SORT_KEYS)


def routes(api: Api) -> list[ApiRoute]:
    runtime = api.runtime
    raft = runtime.raft

    @guarded
    async def cluster_status(request: Request) -> Response:
        require_admin(await api.principal(request))
        await api.fresh(request)
        status = raft.raft_status()
        connected = set(status["connected"])
        with raft.lock:
            cluster = dict(raft.state.cluster)
            members = [
                {
                    "name": n["name"],
                    "membership": n["membership"],
                    "raft_addr": n["raft_addr"],
                    "api_addr": n["api_addr"],
                    "status": n["status"],
                    "leader": n["raft_addr"] is not None and n["raft_addr"] == status["leader"],
                    "connected": n["raft_addr"] in connected or n["raft_addr"] == status["self"],
                }
                for n in raft.state.nodes.values()
            ]
        leader = runtime.leader()
        return json_response(
            {
                "cluster": cluster,
                "this_node": runtime.config.name,
                "leader": None if leader is None else {k: leader[k] for k in ("name", "raft_addr", "api_addr")},
                "term": status["term"],
                "commit_index": status["commit_index"],
                "last_applied": status["last_applied"],
                "has_quorum": status["has_quorum"],
                "raft": status,
                "members": sorted(members, key=lambda m: m["name"]),
            }
        )

    @guarded
    async def join_token_create(request: Request) -> Response:
        principal = await api.principal(request)
        require_admin(principal)
        body = await read_json(request, JOIN_TOKEN_CREATE)
        rid = request_id(request)
        token = derived_token(runtime.secret, JOIN_TOKEN_PREFIX, principal.name, rid) if rid else new_token(JOIN_TOKEN_PREFIX)
        key = token.secret.encode().hex()
        expires_at = time.time() + body.get("ttl_seconds", 3600)
        result, index = await api.commit(
            request, principal, "cluster.join_token_create", {"token_id": token.token_id, "key": key, "expires_at": expires_at}
        )
        return json_response({"token": f"{JOIN_TOKEN_PREFIX}.{token.token_id}.{key}", "expires_at": expires_at}, status=201, index=index)

    @guarded
    async def join(request: Request) -> Response:
        """A new node proves it holds a join token (HMAC with the token's key)."""
        body = await read_json(request, JOIN_SPEC)
        with raft.lock:
            token = raft.state.join_tokens.get(body["token_id"])
            key = None if token is None else token["key"]
            voters = sum(1 for n in raft.state.nodes.values() if n["membership"] == "voter")
            max_voters = raft.state.cluster.get("max_voters", 3)
        if key is None or not hmac.compare_digest(join_proof(key, join_payload(body)).encode(), body["proof"].encode("utf-8", "replace")):
            raise CloudError("forbidden", "join token is unknown, used, or the proof is wrong")
        want = body.get("want", "auto")
        if want == "voter" and body["raft_addr"] is None:
            raise CloudError("invalid", "a voter needs a raft_addr")
        voter = body["raft_addr"] is not None and (want == "voter" or (want == "auto" and voters < max_voters))
        membership = "voter" if voter else "replica"
        raft_addr = body["raft_addr"] if voter else None
        args = {"name": body["name"], "raft_addr": raft_addr, "api_addr": body["api_addr"], "membership": membership, "join_token_id": body["token_id"]}
        result, index = await api.commit(request, None, "node.admit", args)
        if voter:
            try:
                await add_voter(raft, body["raft_addr"])
            except CloudError:
                await api.commit(request, None, "node.remove", {"name": body["name"]})
                raise
        voter_addrs = sorted(set(raft.voter_addrs()) | ({body["raft_addr"]} if voter else set()))
        with raft.lock:
            api_addrs = sorted(n["api_addr"] for n in raft.state.nodes.values())
            cluster = dict(raft.state.cluster)
        return json_response(
            {
                "cluster_id": cluster["id"],
                "cluster_name": cluster["name"],
                "membership": membership,
                "voters": voter_addrs,
                "api_addrs": api_addrs,
                "sealed_secret": seal_for_joiner(key, runtime.secret.encode()),
            },
            status=201,
            index=index,
        )

    async def forward_to_leader(request: Request, leader: dict[str, Any]) -> Response:
        path = request.url.path
        header = sign_node_request(runtime.secret, runtime.config.name, request.method, path, b"")
        try:
            async with httpx.AsyncClient(timeout=30.0) as client:
                reply = await client.request(request.method, f"http://{leader['api_addr']}{path}", headers={"X-Cloudd-Node": header})
        except httpx.HTTPError as exc:
            raise CloudError("unavailable", f"could not reach the leader {leader['name']}: {exc.__class__.__name__}") from None
        return Response(reply.content, status_code=reply.status_code, media_type="application/json")

    async def wait_for_other_leader(timeout_s: float = 10.0) -> dict[str, Any]:
        give_up = time.monotonic() + timeout_s
        while time.monotonic() < give_up:
            leader = runtime.leader()
            if leader is not None and leader["name"] != runtime.config.name:
                return leader
            await asyncio.sleep(0.05)
        raise CloudError("unavailable", "no other node took over the leadership in time")

    @guarded
    async def node_remove(request: Request) -> Response:
        """Remove a node from the cluster: its Raft membership first, then its record."""
        principal = await api.principal(request)
        require_admin(principal)
        name = request.path_params["name"]
        with raft.lock:
            node = raft.state.nodes.get(name)
            node = None if node is None else dict(node)
        if node is None:
            raise CloudError("not_found", f"node {name} not found")
        if node["membership"] == "voter":
            voters = raft.voter_addrs()
            if len(voters) <= 1:
                raise CloudError("conflict", "cannot remove the last voting node")
            status = raft.raft_status()
            reachable = set(status["connected"]) | ({status["self"]} if status["self"] else set())
            remaining = [v for v in voters if v != node["raft_addr"]]
            alive = [v for v in remaining if v in reachable]
            if len(alive) <= len(remaining) / 2:
                raise CloudError(
                    "conflict",
                    f"removing {name} would leave {len(remaining)} voters of which only {len(alive)} are reachable: "
                    "no majority; bring the others back first",
                    {"remaining": remaining, "reachable": alive},
                )
            # A node never changes its own membership: it would not see the change commit.
            if node["raft_addr"] == runtime.config.raft_addr:
                if raft.is_leader:
                    await step_down(raft)
                leader = await wait_for_other_leader()
                return await forward_to_leader(request, leader)
            if node["raft_addr"] == raft.leader_addr and not raft.is_leader:
                leader = runtime.leader()
                if leader is None:
                    raise CloudError("unavailable", "no leader to hand over from")
                return await forward_to_leader(request, leader)
            await remove_voter(raft, node["raft_addr"])
        result, index = await api.commit(request, principal, "node.remove", {"name": name})
        return json_response(result, index=index)

    @guarded
    async def cluster_digest(request: Request) -> Response:
        """This replica's applied index, history hash chain and state hash, read together."""
        require_admin(await api.principal(request))
        await api.fresh(request)
        def read() -> dict[str, Any]:
            with raft.lock:
                return {
                    "node": runtime.config.name,
                    "applied_index": raft.state.applied_index,
                    "chain": raft.state.applied_chain,
                    "digest": raft.state.digest(),
                }

        return json_response(await asyncio.to_thread(read))

    @guarded
    async def cluster_backup(request: Request) -> Response:
        """A consistent backup of the state (at one applied index), as a download."""
        require_admin(await api.principal(request))
        await api.fresh(request)

        def take() -> bytes:
            with raft.lock:
                doc = make_backup(raft.state, time.time())
            return orjson.dumps(doc)

        body = await asyncio.to_thread(take)
        return Response(body, media_type="application/json", headers={"Content-Disposition": 'attachment; filename="cloudd-backup.json"', "Cache-Control": "no-store"})

    return [
        ApiRoute("/api/v1/cluster/backup", cluster_backup, "GET", Doc(
            "A consistent backup of the cluster state: resources and audit log at one applied index", "admin", "cluster", response="Backup",
            description="Holds password and token hashes (keep it private), never the cluster secret. Restore with `cloudd restore`; see docs/operations.md.",
        )),
        ApiRoute("/api/v1/cluster", cluster_status, "GET", Doc("Cluster identity, leader, term, commit index, quorum and members", "admin", "cluster", response="Cluster")),
        ApiRoute("/api/v1/cluster/digest", cluster_digest, "GET", Doc(
            "This replica's applied index, history hash chain and state hash, read together", "admin", "cluster", response="Digest",
            description="Replicas that applied the same commands have the same chain and digest.",
        )),
        ApiRoute("/api/v1/cluster/join-tokens", join_token_create, "POST", Doc(
            "Create a one-time join token cdj.<id>.<key> (ttl_seconds default 3600)", "admin", "cluster", body=JOIN_TOKEN_CREATE, response="JoinToken", status=201,
        )),
        ApiRoute("/api/v1/cluster/join", join, "POST", Doc(
            "Admit a new node that proves it holds a join token (used by `cloudd join`)", "join", "cluster", body=JOIN_SPEC, response="Joined", status=201,
            description="`proof` is an HMAC, with the token's key, of the body without `proof` (JSON, sorted keys). "
            "`want`: auto makes a voter while the cluster has fewer than its max_voters; a node without raft_addr is a replica.",
        )),
        ApiRoute("/api/v1/cluster/nodes/{name}", node_remove, "DELETE", Doc(
            "Remove a node: its Raft membership first (leadership handed over if needed), then its record", "admin", "cluster", response="Named",
            description="Refused (409) when the remaining voters would have no reachable majority, or for the last voter.",
        )),
    ]
