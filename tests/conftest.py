"""Shared fixtures: one real Ray head for the session, and real service processes.

- ``ray_head``: ``ray start --head --block`` (2 CPUs, dashboard/Jobs API on), started once.
- ``ray_cluster``: this pytest process connected to it as a Ray driver (workers tests).
- ``service``: ``python -m service`` (real uvicorn, SQLite file) with API token
  ``test-token``, running jobs on ``ray_head``; every job is cancelled after each test.
- ``idle_service``: the same with ``SYNCBN_MAX_RUNNING_JOBS=0`` (jobs are accepted and queued
  but never started) and a 256 kB upload limit: for error cases and property-based tests.
"""

from __future__ import annotations

import os

from service.cluster.embedded_ray import RayHead, new_token, use_token

# The test cluster's own token, set before Ray is first imported (Ray reads the auth mode and
# token then): nothing comes from ~/.ray or from RAY_* variables of the calling shell.
TEST_RAY_TOKEN = new_token()
use_token(TEST_RAY_TOKEN)
# Poll the Train workers every 0.5 s (Ray's 2 s default makes each report wait up to 2 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402
from servicekit import ServiceProcess, wait_ray_idle  # noqa: E402

RAY_TEST_CPUS = 2
UPLOAD_LIMIT = 256 * 1024


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A local Ray head with ``RAY_TEST_CPUS`` CPUs in its own process tree."""
    directory = tmp_path_factory.mktemp("ray-head")
    with RayHead(directory, num_cpus=RAY_TEST_CPUS, token=TEST_RAY_TOKEN) as head:
        yield head


@pytest.fixture(scope="session")
def ray_cluster(ray_head):
    """This process as a driver of ``ray_head``; yields the GCS address."""
    import ray

    ray.init(
        address=ray_head.gcs_address,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray_head.gcs_address
    finally:
        ray.shutdown()


def _service(tmp_path_factory, ray_head, name: str, env: dict[str, str] | None = None):
    process = ServiceProcess(tmp_path_factory.mktemp(name), ray_head.dashboard_url, env=env)
    process.start()
    return process


@pytest.fixture(scope="session")
def _service_session(tmp_path_factory, ray_head):
    process = _service(tmp_path_factory, ray_head, "service")
    try:
        yield process
    finally:
        process.cancel_all()
        process.stop()


@pytest.fixture
def service(_service_session, ray_head):
    """The running service; jobs left over by the test are cancelled afterwards."""
    yield _service_session
    _service_session.cancel_all()
    wait_ray_idle(ray_head.dashboard_url)


@pytest.fixture(scope="session")
def _idle_service_session(tmp_path_factory, ray_head):
    env = {"SYNCBN_MAX_RUNNING_JOBS": "0", "SYNCBN_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    process = _service(tmp_path_factory, ray_head, "idle-service", env)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def idle_service(_idle_service_session):
    """A service that queues jobs but never starts them (and takes uploads up to 256 kB);
    jobs a test leaves queued are cancelled afterwards."""
    yield _idle_service_session
    _idle_service_session.cancel_all()
