"""What ``/api/v1/users`` shows of a user: never the password hash, and not the public
keys of their keypairs (those are at ``/compute/v2.1/os-keypairs``, for their owner)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette

from cloudd.web import routes_users
from cloudd.web.api import Api
from tests.openstack.fake import Cloud
from tests.openstack.test_keypair_commands import FP, KEY


def test_user_views_leave_out_the_password_hash_and_the_keypairs() -> None:
    cloud = Cloud()
    cloud.replica.ok("keypair.create", {"user": "alice", "name": "laptop", "public_key": KEY, "fingerprint": FP})
    app = Starlette(routes=routes_users.routes(Api(cloud.runtime)))  # type: ignore[arg-type]
    admin, alice = cloud.token("admin"), cloud.token("alice")

    def call(method: str, path: str, token: str, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n1") as client:
                return await client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)

        return asyncio.run(send())

    listed = call("GET", "/api/v1/users", admin)
    assert listed.status_code == 200, listed.text
    shown = [call("GET", "/api/v1/users/alice", alice).json(), call("PATCH", "/api/v1/users/alice", admin, json={"disabled": False}).json()]
    for view in [*listed.json()["items"], *shown]:
        assert view["name"] and "keypairs" not in view and "password_hash" not in view, view
    assert "AAAAC3NzaC1lZDI1NTE5" not in listed.text + str(shown)
    assert {v["name"] for v in listed.json()["items"]} == {"admin", "alice", "bob"}
    assert shown[0]["role"] == "user" and shown[1]["disabled"] is False
