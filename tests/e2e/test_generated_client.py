"""Issue 28: ``/openapi.json`` documents the 401s and 403s, and a client generated from it still
submits a job and reads a refusal.

The generator is openapi-python-client (pinned in the ``dev`` extra), run as a subprocess on the
in-process app's schema (``inprocess.new_app``: no Ray, no uvicorn); the generated package is
imported from a temporary folder, and its requests reach the app through a ``TestClient`` that
carries the ``Authorization`` header the generated ``AuthenticatedClient`` would send.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from inprocess import GOOD, LOCAL, TOKEN, local_client, new_app

PACKAGE = "syncbn_generated_client"
"""The generated package's name (its folder under the module's temporary directory)."""
METHODS = ("get", "put", "post", "patch", "delete")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return new_app(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def generated(app: FastAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The client generated from ``app.openapi()``: its ``client`` and ``models`` modules and
    ``submit`` (``api.jobs.jobs_submit``, from operationId ``jobs-submit``)."""
    root = tmp_path_factory.mktemp("generated")
    (root / "openapi.json").write_text(json.dumps(app.openapi()))
    # No post-hooks: the default ones run ruff over the output, which only formats it.
    (root / "config.json").write_text(json.dumps({"post_hooks": []}))
    command = [
        sys.executable,
        "-m",
        "openapi_python_client",
        "generate",
        "--path",
        "openapi.json",
        "--output-path",
        PACKAGE,
        "--meta",
        "none",
        "--config",
        "config.json",
        "--fail-on-warning",
    ]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    sys.path.insert(0, str(root))
    try:
        yield SimpleNamespace(
            client=importlib.import_module(f"{PACKAGE}.client"),
            models=importlib.import_module(f"{PACKAGE}.models"),
            submit=importlib.import_module(f"{PACKAGE}.api.jobs.jobs_submit"),
        )
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def authenticated(generated: SimpleNamespace, app: FastAPI, token: str):
    """The generated ``AuthenticatedClient`` with ``token``, its requests sent to ``app``.

    ``set_httpx_client`` replaces the client's headers too, so the ``TestClient`` gets the header
    the generated client builds from its own ``auth_header_name``, ``prefix`` and ``token``."""
    client = generated.client.AuthenticatedClient(base_url=LOCAL, token=token)
    header = {client.auth_header_name: f"{client.prefix} {client.token}"}
    return client.set_httpx_client(TestClient(app, base_url=LOCAL, headers=header))


def test_every_v1_operation_documents_401_and_403(app: FastAPI):
    schema = app.openapi()
    checked = []
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/") or path.startswith("/v1/internal/"):
            continue
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            label = f"{method.upper()} {path} ({operation['operationId']})"
            responses = operation["responses"]
            assert {"401", "403"} <= responses.keys(), f"{label}: {sorted(responses)}"
            refusal = responses["403"]["content"]["application/json"]["schema"]
            assert refusal == {"$ref": "#/components/schemas/ErrorOut"}, label
            checked.append(label)
    assert any("(jobs-submit)" in label for label in checked)
    assert len(checked) >= 20, checked


def test_generated_client_submits_a_job(generated: SimpleNamespace, app: FastAPI):
    client = authenticated(generated, app, TOKEN)
    body = generated.models.JobSpec.from_dict(GOOD)

    response = generated.submit.sync_detailed(client=client, body=body)

    assert response.status_code == 201, response.content
    job = response.parsed
    assert isinstance(job, generated.models.JobOut), job
    assert job.id and job.state == "queued", job.to_dict()
    assert local_client(app).get(f"/v1/jobs/{job.id}").json()["state"] == "queued"


def test_generated_client_parses_a_viewers_403(generated: SimpleNamespace, app: FastAPI):
    created = local_client(app).post("/v1/users", json={"name": "vera", "role": "viewer"})
    assert created.status_code == 201, created.text
    client = authenticated(generated, app, created.json()["token"]["token"])

    response = generated.submit.sync_detailed(
        client=client, body=generated.models.JobSpec.from_dict(GOOD)
    )

    assert response.status_code == 403, response.content
    refusal = response.parsed
    assert isinstance(refusal, generated.models.ErrorOut), refusal
    assert isinstance(refusal.detail, str) and "viewer" in refusal.detail, refusal.detail
