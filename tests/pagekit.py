"""Helpers of the dashboard's browser tests (``tests/e2e/test_page_*.py``): the browser's path,
timeouts, and the steps every page test takes (open the page with the token, find a field by
its label, wait for a job's final state; a team's users and their tokens).

Playwright drives Debian's Chromium (``/usr/bin/chromium``, or ``SYNCBN_CHROMIUM``;
``scripts/install-test-tools.sh`` installs it, Playwright cannot download its own browser here).
The ``browser`` and ``page`` fixtures are in ``tests/e2e/conftest.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from playwright.sync_api import Page, expect

CHROMIUM = Path(os.environ.get("SYNCBN_CHROMIUM", "/usr/bin/chromium"))
UI_TIMEOUT_MS = 15_000
JOB_TIMEOUT_MS = 240_000  # a 2-worker job on a 2-CPU CI machine, queued behind others
FINAL = ("succeeded", "failed", "cancelled")


def base_url(service: Any) -> str:
    return str(service.url).rstrip("/")


def open_dashboard(page: Page, service: Any, route: str = "") -> None:
    """Load the page (``route`` is a hash route such as ``#/jobs/j-1``) and give the token."""
    page.goto(f"{base_url(service)}/{route}")
    if service.token:
        dialog = page.get_by_test_id("token-dialog")
        expect(dialog).to_be_visible()
        page.get_by_label("Token", exact=True).fill(service.token)
        page.get_by_role("button", name="Save").click()
        expect(dialog).to_be_hidden()


def signed_in_as(service: Any, token: str) -> SimpleNamespace:
    """``service`` as another user sees it: its ``url`` with that user's ``token`` (for
    ``open_dashboard``)."""
    return SimpleNamespace(url=service.url, token=token)


def user_token(service: Any, name: str, role: str) -> str:
    """A token of user ``name`` with ``role``, made by the service's admin token: the user is
    created (``POST /v1/users``), or, when the name is taken already (it is never given again),
    gets one more token."""
    response = service.client.post("/v1/users", json={"name": name, "role": role})
    if response.status_code == 409:
        user = service.client.get(f"/v1/users/{name}")
        assert user.status_code == 200 and user.json()["role"] == role, user.text
        tokens = len(user.json()["tokens"])
        response = service.client.post(f"/v1/users/{name}/tokens", json={"name": f"t{tokens}"})
        assert response.status_code == 201, response.text
        return str(response.json()["token"])
    assert response.status_code == 201, response.text
    return str(response.json()["token"]["token"])


def field(page: Page, label: str):
    return page.get_by_label(label, exact=True)


def percent(text: str) -> float:
    """``"96.88 %"`` -> 96.88."""
    return float(text.replace("%", "").strip())


def job_reason(service: Any, job_id: str) -> str:
    """The end of a job's ``reason`` (for a failed job: Ray's log tail)."""
    return str(service.client.get(f"/v1/jobs/{job_id}").json().get("reason"))[-3000:]


def wait_until_final(page: Page, service: Any, job_id: str, expected: str) -> None:
    """Wait on the job's page until its state badge is final; it must be ``expected``."""
    state = page.get_by_test_id("job-state")
    expect(state).to_have_text(re.compile("|".join(FINAL)), timeout=JOB_TIMEOUT_MS)
    assert state.inner_text() == expected, f"the job ended: {job_reason(service, job_id)}"
