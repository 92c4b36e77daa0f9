"""The role table of issue 28, shared by the in-process tests (``tests/unit/test_roles.py``)
and the real service's (``tests/e2e/test_roles_e2e.py``): every write route, tried by each
role on its own and on others' objects. A client is a ``TestClient`` or an ``httpx.Client``
(the same API)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from bundlekit import zip_bytes

NET = b"def build_model(s, n):\n    return None\n"
WRITES = [
    ("cancel job", "POST", "/v1/jobs/{job}/cancel", 200),
    ("cancel study", "POST", "/v1/studies/{study}/cancel", 200),
    ("delete job", "DELETE", "/v1/jobs/{job}", 204),
    ("delete study", "DELETE", "/v1/studies/{study}", 204),
    ("delete dataset", "DELETE", "/v1/datasets/{dataset}", 204),
    ("delete code", "DELETE", "/v1/code/{code}", 204),
]
"""Every write on an existing object, in an order that works (a job is cancelled before it is
deleted)."""
ROWS = [
    ("admin", "alice", True),  # an admin (the service's own token) writes everything
    ("root", "alice", True),  # a second admin too
    ("alice", "alice", True),  # a member writes their own
    ("bob", "alice", False),  # ... and nothing of another member
    ("alice", "admin", False),  # ... nor an admin's
    ("vera", "alice", False),  # a viewer writes nothing
]
"""(actor, owner, allowed): one row per line of the role table in ``docs/security.md``."""
ROLES = {"root": "admin", "alice": "member", "bob": "member", "vera": "viewer"}


@dataclass(frozen=True)
class Member:
    """A user of the table: their client and their name on this service."""

    client: Any
    name: str


def npz_bytes() -> bytes:
    """A small valid ``.npz`` dataset (40 samples of 4 features, 2 classes)."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.normal(size=(40, 4)).astype(np.float32), y=np.arange(40) % 2)
    return buffer.getvalue()


def objects_of(user: Any, spec: dict[str, Any]) -> dict[str, str]:
    """A queued job, a study, a dataset and a code bundle made by ``user``."""
    job = user.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    study = user.post("/v1/studies", json={"base": spec, "seeds": [0], "arms": ["sync"]})
    assert study.status_code == 201, study.text
    dataset = user.post("/v1/datasets", files={"file": ("d.npz", npz_bytes())})
    assert dataset.status_code == 201, dataset.text
    bundle = user.post("/v1/code", files={"file": ("b.zip", zip_bytes({"net.py": NET}))})
    assert bundle.status_code == 201, bundle.text
    return {
        "job": job.json()["id"],
        "study": study.json()["id"],
        "dataset": dataset.json()["id"],
        "code": bundle.json()["id"],
    }


def check_row(
    team: dict[str, Member], actor: str, owner: str, allowed: bool, spec: dict[str, Any]
) -> None:
    """One row of the table: ``actor`` tries every write on objects of ``owner``; allowed, each
    succeeds; refused, each is a 403 naming the owner, the object and the actor's role, and
    the owner can still do all of them."""
    ids = objects_of(team[owner].client, spec)
    who, whose = team[actor], team[owner]
    for what, method, path, ok in WRITES:
        url = path.format(**ids)
        response = who.client.request(method, url)
        if allowed:
            assert response.status_code == ok, f"{what}: {response.text}"
            continue
        assert response.status_code == 403, f"{what}: {response.text}"
        detail = response.json()["detail"]
        ident = next(v for v in ids.values() if v in url)
        assert f"belongs to {whose.name}" in detail and ident in detail, detail
        assert f"you are {who.name}, a " in detail and "only its owner or an admin" in detail
    if not allowed:  # nothing changed: the owner still can
        for _, method, path, ok in WRITES:
            assert whose.client.request(method, path.format(**ids)).status_code == ok
