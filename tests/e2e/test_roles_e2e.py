"""The role table (issue 28) against the real service: uvicorn, a SQLite file, the middleware
that settles the caller from a user's token and the audit log, over HTTP (``idle_service``:
jobs are queued, never started). One case per row: admin, a second admin, a member on their
own, another member's and an admin's objects, a viewer; each tries every write route. The
names carry a suffix: the session's service is shared with other tests."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest
from teamkit import ROLES, ROWS, Member, check_row

SPEC = {"dataset": "synthetic", "workers": 1, "batch_size_per_worker": 8, "epochs": 1}


@pytest.fixture
def team(idle_service) -> Iterator[dict[str, Member]]:
    suffix = secrets.token_hex(3)
    admin = idle_service.client
    members = {"admin": Member(admin, "admin")}
    for key, role in ROLES.items():
        name = f"{key}-{suffix}"
        created = admin.post("/v1/users", json={"name": name, "role": role})
        assert created.status_code == 201, created.text
        token = created.json()["token"]["token"]
        client = httpx.Client(
            base_url=idle_service.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        members[key] = Member(client, name)
    yield members
    for key, member in members.items():
        if key != "admin":
            member.client.close()
            admin.delete(f"/v1/users/{member.name}")


@pytest.mark.parametrize(("actor", "owner", "allowed"), ROWS)
def test_each_write_route_by_role_and_owner_over_http(team, idle_service, actor, owner, allowed):
    check_row(team, actor, owner, allowed, SPEC)
    entries = idle_service.client.get("/v1/audit", params={"limit": 50}).json()["entries"]
    expected = 200 if allowed else 403
    writer = team[actor].name
    assert any(e["actor"] == writer and e["status"] in (expected, 204) for e in entries)
