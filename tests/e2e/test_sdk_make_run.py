"""The Python SDK on ``make run``'s service, as the user guide's notebook section uses it:
with only ``SYNCBN_HOME`` set, ``Client()`` finds the service (the URL it recorded) and its
token by itself; a real job on the embedded Ray head is followed to its end through the event
stream, then its model is downloaded and predicts raw digits. (Every route in process, the
guide's study example included: ``tests/unit/test_sdk.py``.)"""

from __future__ import annotations

import pytest
from servicekit import made_run
from sklearn.datasets import load_digits

from client import Client
from contract.protocol import ReportEvent

JOB = {"dataset": "digits", "workers": 2, "batch_size_per_worker": 16, "epochs": 1}


@pytest.mark.timeout(300)
def test_client_finds_make_runs_service_and_follows_a_job_to_its_model(
    tmp_path_factory, tmp_path, monkeypatch
):
    for name in ("SYNCBN_URL", "SYNCBN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with made_run(tmp_path_factory.mktemp("sdk") / ".syncbn") as service:
        monkeypatch.setenv("SYNCBN_HOME", str(service.home))
        with Client() as c:
            assert c.url == service.url  # its random port, from $SYNCBN_HOME/service-url
            job = c.submit(JOB)
            reports: list[ReportEvent] = []
            done = c.wait(job.id, on_report=reports.append, timeout_s=240)
            assert done.state == "succeeded", f"{done}\n{service.log_tail()}"
            assert reports and reports[-1].kind == "epoch" and reports[-1].epoch == 1
            assert {len(r.workers) for r in reports} == {2}
            assert done.result is not None and done.result.test_accuracy > 0.3

            models = c.models(job.id)
            saved = c.download_model(job.id, output=tmp_path)
            assert saved.path == tmp_path / f"{job.id}-epoch1.safetensors"
            assert saved.sha256 == models.models[-1].sha256 and saved.epoch == 1
            out = c.predict(job.id, load_digits().images[:4])
            assert out.epoch == 1 and len(out.predictions) == 4
            assert len(out.probabilities) == 4 and len(out.probabilities[0]) == 10
