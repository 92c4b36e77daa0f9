"""Pinning a job from its page, in real headless Chromium against the real service
(``idle_service``: the job is queued and never runs, which is all pinning needs).

The admin submits a job over the API and opens its page: "Pin" shows the "pinned" badge and the
API says ``pinned: true``; "Unpin" takes the badge away and the API says ``pinned: false``.

The ``browser`` and ``page`` fixtures are in ``conftest.py``, the shared steps in
``pagekit.py``.
"""

from __future__ import annotations

from typing import Any

from pagekit import open_dashboard
from playwright.sync_api import Page, expect

JOB = {"dataset": "synthetic", "workers": 1, "batch_size_per_worker": 8, "epochs": 1}


def test_pin_and_unpin_a_job_from_its_page(page: Page, idle_service: Any) -> None:
    service = idle_service
    job_id = service.submit(**JOB)["id"]
    assert service.client.get(f"/v1/jobs/{job_id}").json()["pinned"] is False

    open_dashboard(page, service, f"#/jobs/{job_id}")
    expect(page.get_by_test_id("job-state")).to_have_text("queued")
    badge = page.get_by_test_id("job-pinned")
    button = page.get_by_test_id("pin-button")
    expect(badge).to_be_hidden()
    expect(button).to_have_text("Pin")

    button.click()
    expect(badge).to_be_visible()
    expect(badge).to_have_text("pinned")
    expect(button).to_have_text("Unpin")
    assert service.client.get(f"/v1/jobs/{job_id}").json()["pinned"] is True

    button.click()
    expect(badge).to_be_hidden()
    expect(button).to_have_text("Pin")
    assert service.client.get(f"/v1/jobs/{job_id}").json()["pinned"] is False
    expect(page.get_by_test_id("job-error")).to_be_hidden()
    # Nothing was removed by the retention: no "files removed" line.
    expect(page.get_by_test_id("logs-removed")).to_be_hidden()
