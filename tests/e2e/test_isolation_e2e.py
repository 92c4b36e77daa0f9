"""Issue 27's acceptance, through the service as ``make run`` starts it (its own embedded Ray
head, SQLite, default limits, an empty ``HOME``):

- a job whose code prints a look-alike outcome line at exit, and overwrites the outcome file
  its driver wrote, ends in a final state; the service then restarts (with its head), and a
  plain job submitted after it succeeds; the first job's log is still served;
- a 16 MiB body without a token is a 401 that costs the service under 64 MiB of peak RSS;
- tokenless sockets that hold upload and predict bodies open take no slot: a real upload and a
  real predict are served within 15 s meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import hostile
import numpy as np
import pytest
from servicekit import ServiceProcess, made_run

SMALL = {"dataset": "digits", "workers": 1, "epochs": 1, "batch_size_per_worker": 64}
MAX_RSS_MIB = 64


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Iterator[ServiceProcess]:
    with made_run(tmp_path_factory.mktemp("isolation") / ".syncbn") as service:
        yield service


@pytest.fixture(scope="module")
def plain_job(made) -> dict:
    """A lying job, a restart of the service and its head, then a plain job."""
    files = {"file": ("liar.zip", hostile.zip_bytes({"liar.py": hostile.liar_net()}))}
    bundle = made.client.post("/v1/code", files=files)
    assert bundle.status_code == 201, bundle.text
    liar = made.submit(**SMALL, code=bundle.json()["id"], model="liar:build_model")
    ended = made.wait_final(liar["id"], timeout_s=300)
    made.stop()  # Ctrl-C: the service and its embedded head stop
    made.start(timeout_s=180)
    job = made.submit(**SMALL)
    done = made.wait_final(job["id"], timeout_s=300)
    return {"liar": ended, "plain": done}


def test_a_lying_job_ends_and_a_plain_job_after_a_restart_succeeds(made, plain_job):
    liar, plain = plain_job["liar"], plain_job["plain"]
    assert liar["state"] in ("succeeded", "failed"), liar
    assert plain["state"] == "succeeded", f"{plain}\n{made.log_tail()}"
    assert plain["result"]["test_accuracy"] > 0.3


def test_a_finished_jobs_log_is_served_after_the_service_and_its_head_restart(made, plain_job):
    logs = made.client.get(f"/v1/jobs/{plain_job['liar']['id']}/logs")
    assert logs.status_code == 200, logs.text
    assert hostile.LOOKALIKE_OUTCOME in logs.json()["logs"]  # the line it printed at exit
    tail = made.client.get(f"/v1/jobs/{plain_job['liar']['id']}/logs", params={"tail": 1})
    assert tail.json()["logs"].count("\n") == 0


def test_a_16_mib_body_without_a_token_costs_its_headers_only(made):
    body = b"[" + b"1," * (8 << 20) + b"1]"
    pid = hostile.service_pid(made)
    for path in ("/v1/jobs/j-1/predict", "/v1/internal/jobs/j-1/events", "/v1/datasets"):
        cost = hostile.measure(pid, lambda path=path: _post_tokenless(made, path, body))
        assert cost.status == 401, cost
        assert cost.rss_mib < MAX_RSS_MIB, cost


def _post_tokenless(made: ServiceProcess, path: str, body: bytes):
    import httpx

    return httpx.post(made.url + path, content=body, headers={"Content-Type": "application/json"})


def test_held_tokenless_bodies_do_not_block_a_real_upload_and_predict(made, plain_job):
    job_id = plain_job["plain"]["id"]
    paths = ["/v1/datasets", f"/v1/jobs/{job_id}/predict"] * 2
    held = [hostile.hold_body(made.port, path) for path in paths]
    time.sleep(1.0)  # the service has read their headers
    try:
        started = time.monotonic()
        rng = np.random.default_rng(0)
        samples = rng.uniform(0, 16, size=(4, 8, 8)).tolist()
        predicted = made.client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": samples})
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["predictions"]) == 4
        files = {"file": ("d.npz", _npz())}
        uploaded = made.client.post("/v1/datasets", files=files)
        assert uploaded.status_code == 201, uploaded.text
        assert time.monotonic() - started < 15
    finally:
        for sock in held:
            sock.close()


def _npz() -> bytes:
    import io

    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.normal(size=(64, 16)).astype(np.float32), y=np.arange(64) % 4)
    return buffer.getvalue()
