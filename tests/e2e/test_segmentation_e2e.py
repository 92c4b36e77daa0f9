"""Segmentation on a real Ray Train job: 2 workers with synchronized BN on ``shapes`` report the
same mean IoU, accuracy and loss on both ranks (the whole test set each). The pieces alone are
in ``tests/unit/test_segmentation.py``.
"""

from __future__ import annotations

import pytest
from torch.nn.modules.batchnorm import _BatchNorm

from contract.datasets import builtin_info
from contract.spec import JobSpec
from workers.nets import build_model


@pytest.mark.timeout(180)
def test_two_worker_shapes_job_reports_identical_miou(ray_cluster, tmp_path):
    from contract.protocol import read_events
    from workers.driver import run_job
    from workers.reporting import epoch_reports

    spec = JobSpec(
        dataset="shapes", model="auto", workers=2, batch_size_per_worker=4, epochs=2, seed=1
    )
    result = run_job(spec, tmp_path)
    epochs = epoch_reports(read_events(result.stats_path))
    assert [e["epoch"] for e in epochs] == [1, 2] and result.epochs_completed == 2
    info = builtin_info("shapes")
    unet = build_model("unet", info.input_shape, info.num_classes)
    bn_names = {name for name, m in unet.named_modules() if isinstance(m, _BatchNorm)}
    for event in epochs:
        workers = event["workers"]
        assert [w["rank"] for w in workers] == [0, 1]
        mious = {w["test_miou"] for w in workers}
        assert len(mious) == 1 and 0 < mious.pop() <= 1  # identical on both ranks
        assert len({w["test_accuracy"] for w in workers}) == 1
        assert len({w["test_loss"] for w in workers}) == 1
        for worker in workers:
            assert worker["test_samples"] == 150  # the whole test set, in images
            assert 0 < worker["train_accuracy"] <= 1 and worker["loss"] > 0
            assert set(worker["bn"]) == bn_names == set(worker["bn_running"])
            for layer in worker["bn"].values():
                assert layer["global_count"] == 2 * layer["local_count"]  # synchronized
    last = epochs[-1]["workers"][0]
    assert result.test_miou == last["test_miou"] and result.test_accuracy == last["test_accuracy"]
    assert 0 < result.test_miou <= 1 and 0 < result.test_accuracy <= 1
