"""A team shares the dashboard, in real headless Chromium against the real service
(``idle_service``: jobs are queued and never run, which is all the page needs here).

The admin (the service's own token) adds a member ``alice`` and a viewer ``vera``; the admin and
alice each submit a job, the admin starts a study. With alice's token the top bar names her and
her role, the jobs and studies tables show each row's owner, the cancel button is on her own
job's page only, and "Mine" lists only her jobs (and none of the studies), remembered across a
reload. Switching the token to vera's: the top bar follows, the forms are disabled with a note,
and no job or study page offers to cancel.

The ``browser`` and ``page`` fixtures are in ``conftest.py``, the shared steps in
``pagekit.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
from pagekit import open_dashboard, signed_in_as, user_token
from playwright.sync_api import Page, expect

JOB = {"dataset": "synthetic", "workers": 1, "batch_size_per_worker": 8, "epochs": 1}


def test_owners_roles_and_mine(page: Page, idle_service: Any) -> None:
    service = idle_service
    alice = user_token(service, "alice", "member")
    vera = user_token(service, "vera", "viewer")
    admin_job = service.submit(**JOB)["id"]
    response = httpx.post(
        f"{service.url}/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {alice}"}
    )
    assert response.status_code == 201, response.text
    alice_job = response.json()["id"]
    study = service.client.post("/v1/studies", json={"base": JOB, "seeds": [0], "arms": ["local"]})
    assert study.status_code == 201, study.text
    study_id = study.json()["id"]

    # alice: her name and role in the top bar; both owners in the list.
    open_dashboard(page, signed_in_as(service, alice))
    expect(page.get_by_test_id("me-name")).to_have_text("alice")
    expect(page.get_by_test_id("me-role")).to_have_text("member")
    for job_id, owner in ((admin_job, "admin"), (alice_job, "alice")):
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        expect(row.get_by_test_id("job-owner")).to_have_text(owner)
    expect(page.get_by_test_id("submit-job")).to_be_enabled()
    expect(page.get_by_test_id("viewer-note")).to_be_hidden()

    # Cancel on her own job's page only (both are queued: cancellable by whoever may).
    page.goto(f"{service.url}/#/jobs/{alice_job}")
    expect(page.get_by_test_id("job-owner")).to_have_text("alice")
    expect(page.get_by_test_id("cancel-button")).to_be_visible()
    page.goto(f"{service.url}/#/jobs/{admin_job}")
    expect(page.get_by_test_id("job-owner")).to_have_text("admin")
    expect(page.get_by_test_id("job-state")).to_have_text("queued")
    expect(page.get_by_test_id("cancel-button")).to_be_hidden()

    # "Mine": only her job, remembered for the tab (sessionStorage) across a reload.
    page.goto(f"{service.url}/#/")
    rows = page.get_by_test_id("job-row")
    expect(rows.nth(1)).to_be_visible()
    page.get_by_test_id("jobs-mine").check()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", alice_job)
    page.reload()
    expect(page.get_by_test_id("jobs-mine")).to_be_checked()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job-id", alice_job)

    # Studies: the owner column; none of them is hers; the admin's study has no cancel for her.
    page.get_by_test_id("nav-studies").click()
    study_row = page.locator(f'tr[data-study-id="{study_id}"]')
    expect(study_row.get_by_test_id("study-owner")).to_have_text("admin")
    page.get_by_test_id("studies-mine").check()
    expect(page.get_by_test_id("study-row")).to_have_count(0)
    expect(page.get_by_test_id("studies-empty")).to_have_text("You have no studies yet.")
    page.goto(f"{service.url}/#/studies/{study_id}")
    expect(page.get_by_test_id("study-by")).to_have_text("admin")
    expect(page.get_by_test_id("study-state")).to_have_text("running")
    expect(page.get_by_test_id("study-cancel")).to_be_hidden()

    # vera, by the token button: the top bar follows; nothing to cancel, the forms disabled.
    page.goto(f"{service.url}/#/")
    page.get_by_test_id("token-button").click()
    page.get_by_label("Token", exact=True).fill(vera)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("me-name")).to_have_text("vera")
    expect(page.get_by_test_id("me-role")).to_have_text("viewer")
    expect(page.get_by_test_id("viewer-note")).to_be_visible()
    expect(page.get_by_test_id("viewer-note")).to_contain_text("change nothing")
    expect(page.get_by_test_id("submit-job")).to_be_disabled()
    expect(page.get_by_test_id("submit-study")).to_be_disabled()
    expect(page.get_by_test_id("upload-file")).to_be_disabled()
    expect(page.get_by_test_id("jobs-empty")).to_have_text("You have no jobs yet.")  # "Mine"
    page.get_by_test_id("jobs-mine").uncheck()
    expect(page.locator(f'tr[data-job-id="{alice_job}"]')).to_be_visible()
    page.goto(f"{service.url}/#/jobs/{alice_job}")
    expect(page.get_by_test_id("job-owner")).to_have_text("alice")
    expect(page.get_by_test_id("job-state")).to_have_text("queued")
    expect(page.get_by_test_id("cancel-button")).to_be_hidden()
    # The server is the authority: a viewer's write is refused (the page offers none).
    refused = httpx.post(
        f"{service.url}/v1/jobs/{alice_job}/cancel", headers={"Authorization": f"Bearer {vera}"}
    )
    assert refused.status_code == 403, refused.text
