"""Backup and restore of a real service while a job trains (``docs/operations.md``): ``python -m
service backup`` of the running service's home, ``python -m service restore`` into a fresh
home, and the service started there as ``make run`` starts it (its own embedded Ray head and
token, as on a new machine): the same jobs, studies and users, the same model files (equal
SHA-256s) and the same predictions. The damaged, hostile and refused cases are in
``tests/unit/test_backup.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from servicekit import ServiceProcess, made_run
from sklearn.datasets import load_digits

TINY = {"dataset": "digits", "workers": 1, "batch_size_per_worker": 32, "epochs": 1}


def operation(command: str, archive: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``python -m service backup|restore ARCHIVE`` with ``SYNCBN_HOME=home`` (SQLite there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCBN_", "DATABASE_URL"))}
    out = subprocess.run(
        [sys.executable, "-m", "service", command, str(archive)],
        env={**env, "SYNCBN_HOME": str(home)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def everything(service: ServiceProcess) -> dict[str, Any]:
    """The jobs, studies and users the service holds (by id)."""
    client = service.client
    jobs = client.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
    studies = client.get("/v1/studies", params={"limit": 500}).json()["studies"]
    users = client.get("/v1/users").json()["users"]
    return {
        "jobs": {job["id"]: job for job in jobs},
        "studies": {study["id"]: study for study in studies},
        "users": {user["name"]: user["role"] for user in users},
    }


def models(service: ServiceProcess, job_id: str) -> list[tuple[int, str]]:
    response = service.client.get(f"/v1/jobs/{job_id}/models")
    assert response.status_code == 200, response.text
    return [(model["epoch"], model["sha256"]) for model in response.json()["models"]]


def predict(service: ServiceProcess, job_id: str) -> dict[str, Any]:
    inputs = {"inputs": load_digits().images[:4].tolist()}
    response = service.client.post(f"/v1/jobs/{job_id}/predict", json=inputs)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_backup_taken_while_a_job_trains_restores_into_a_fresh_home(
    service, tmp_path_factory
) -> None:
    trained = service.submit(**TINY)["id"]
    assert service.wait_final(trained)["state"] == "succeeded"
    kept = models(service, trained)
    assert kept, "the trained job kept no model file"
    training = service.submit(**{**TINY, "epochs": 30})["id"]
    service.wait_for(training, lambda job: job["state"] == "running", what="running")

    folder = tmp_path_factory.mktemp("backup")
    archive = folder / "syncbn-backup.tar.gz"
    ahead = everything(service)
    backed_up = operation("backup", archive, service.home)
    before = everything(service)
    assert service.job(training)["state"] == "running"  # the backup was taken while it ran
    assert "backup: wrote" in backed_up.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    paths = {entry["path"] for entry in manifest["files"]}
    assert "syncbn.db" in paths and "api-token" not in paths
    assert any(p.startswith(f"runs/{trained}/checkpoint_") for p in paths), sorted(paths)
    assert f"runs/{trained}/driver.log" in paths
    service.client.post(f"/v1/jobs/{training}/cancel")

    home = folder / "restored" / ".syncbn"
    restored = operation("restore", archive, home)
    assert "every file's size and SHA-256 match manifest.json" in restored.stderr
    with made_run(home) as fresh:
        after = everything(fresh)
        assert after["users"] == before["users"]
        stable: dict[str, set[str]] = {}
        for kind in ("jobs", "studies"):
            assert set(after[kind]) == set(before[kind]), kind
            # what did not change while the backup ran is restored as it was (the training
            # job ran on, and the fresh service resubmits it: Ray there has no record of it)
            same = {i for i, item in before[kind].items() if ahead[kind].get(i) == item}
            same.discard(training)
            assert {i: after[kind][i] for i in same} == {i: before[kind][i] for i in same}
            stable[kind] = same
        assert trained in stable["jobs"]
        assert after["jobs"][training]["state"] in ("pending", "running")  # resubmitted
        assert models(fresh, trained) == kept
        assert predict(fresh, trained) == predict(service, trained)
        fresh.client.post(f"/v1/jobs/{training}/cancel")
