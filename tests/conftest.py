"""Shared fixtures. ``ray_cluster``: one real local Ray cluster for the whole test session."""

from __future__ import annotations

import os

import pytest

RAY_TEST_CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster with ``RAY_TEST_CPUS`` CPUs, started once; yields its GCS address."""
    import ray

    # Poll the Train workers every 0.5 s (Ray's 2 s default makes each report wait up to 2 s).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(
        num_cpus=RAY_TEST_CPUS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
