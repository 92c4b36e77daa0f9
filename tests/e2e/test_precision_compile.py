"""Mixed precision and ``torch.compile`` in the workers, on a real local Ray cluster.

- ``precision="bf16"`` (``torch.autocast``; syncbn keeps its statistics in fp32) trains digits
  to within 1 point of the same job in fp32;
- ``compile=True`` through the REST service: the job trains compiled, and its reported steps
  (run eagerly) still carry every BN layer's statistics.
"""

from __future__ import annotations

import pytest

from contract.spec import JobSpec
from workers.driver import run_job


@pytest.mark.timeout(300)
def test_bf16_trains_digits_within_one_point_of_fp32(ray_cluster, tmp_path) -> None:
    accuracy = {}
    for precision in ("fp32", "bf16"):
        spec = JobSpec(
            dataset="digits", workers=2, batch_size_per_worker=16, epochs=3, lr=0.1,
            precision=precision,
        )  # fmt: skip
        result = run_job(spec, tmp_path / precision)
        accuracy[precision] = result.test_accuracy
    assert accuracy["fp32"] > 0.9, accuracy
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.01, accuracy


@pytest.mark.timeout(300)
def test_a_compiled_job_trains_and_reports_bn_statistics(service) -> None:
    job = service.submit(
        dataset="synthetic", workers=2, batch_size_per_worker=32, epochs=2, compile=True,
        precision="bf16",
    )  # fmt: skip
    done = service.wait_final(job["id"], timeout_s=280)
    assert done["state"] == "succeeded", done
    assert done["spec"]["compile"] is True
    assert done["result"]["test_accuracy"] > 0.6
    workers = service.client.get(f"/v1/jobs/{job['id']}/workers").json()["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    for worker in workers:
        assert set(worker["bn"]) == {"net.2", "net.5"}  # the MLP's two BatchNorm1d layers
        assert worker["bn"]["net.2"]["global_count"] == 64
        assert worker["sync_time_s"] > 0
