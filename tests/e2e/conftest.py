"""The end-to-end tier's fixtures: one real Ray head for the session, the real service
processes on it, and headless Chromium. (The tier's fresh-interpreter checks, costs and
imports, need none of them.)

This file sets the test cluster's Ray token before Ray is first imported (Ray reads the auth
mode and the token then), so nothing comes from ``~/.ray`` or from ``RAY_*`` variables of the
calling shell. The ranks tier never imports Ray; the unit tier starts none (a few of its tests
import ``ray.train`` for the workers' callback class).

- ``ray_head``: ``ray start --head --block`` (2 CPUs, dashboard/Jobs API on), started once.
- ``ray_cluster``: this pytest process connected to it as a Ray driver (workers tests).
- ``service``: ``python -m service`` (real uvicorn, SQLite file) with API token
  ``test-token``, running jobs on ``ray_head``; every job is cancelled after each test.
- ``idle_service``: the same with ``SYNCBN_MAX_RUNNING_JOBS=0`` (jobs are accepted and queued
  but never started) and a 256 kB upload limit (``servicekit.UPLOAD_LIMIT``): for error cases
  and property-based tests.
- ``browser``: Debian's Chromium driven by Playwright (one per test module); ``page``: a fresh
  context of it for one test, whose screenshot, HTML and service log tail are kept on failure.

Services of their own (an embedded head in an empty ``HOME``, tiny image limits, a v0 database,
two Ray nodes) are fixtures of the modules that use them.
"""

from __future__ import annotations

import os
import sys

from service.cluster.embedded_ray import RayHead, new_token, use_token

if "ray" in sys.modules:  # pragma: no cover - a guard for whoever changes the imports
    raise RuntimeError("Ray was imported before tests/e2e/conftest.py could set its test token")

# The test cluster's own token, set before Ray is first imported (Ray reads the auth mode and
# token then): nothing comes from ~/.ray or from RAY_* variables of the calling shell.
TEST_RAY_TOKEN = new_token()
use_token(TEST_RAY_TOKEN)
# Poll the Train workers every 0.5 s (Ray's 2 s default makes each report wait up to 2 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from pagekit import CHROMIUM, UI_TIMEOUT_MS  # noqa: E402
from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402
from servicekit import UPLOAD_LIMIT, ServiceProcess, wait_ray_idle  # noqa: E402

RAY_TEST_CPUS = 2


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # make test installs it; a missing browser is a failure
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-test-tools.sh")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A fresh browser context (empty storage) at 1280x800; screenshot on failure."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    js_errors: list[str] = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        # The call phase's report is logged before teardown: a new failure counts already.
        if request.session.testsfailed > failed_before or js_errors:
            try:
                page.screenshot(path=tmp_path / "failure.png", full_page=True)
                (tmp_path / "failure.html").write_text(page.content(), encoding="utf-8")
                print(f"screenshot of the page: {tmp_path / 'failure.png'}")
            except Exception as exc:
                print(f"no screenshot: {exc}")
            service = request.node.funcargs.get("service")
            if hasattr(service, "log_tail"):
                print(f"service log:\n{service.log_tail()}")
        context.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"
