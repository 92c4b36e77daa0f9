"""A study run from the dashboard in real headless Chromium, against the real service
(``service``): its page shows the verdict, the recommendation, the arms with their price, their
curves and the metric-against-step-time plot; the GroupNorm job's page says it has no BN
statistics; two of its jobs are compared from the jobs list. The REST answer of the same
study is checked by ``test_studies_e2e.py``'s ``check_one_seed_study`` (one study for both, to
keep the suite short).

The ``browser`` and ``page`` fixtures are in ``conftest.py``, the shared steps in
``pagekit.py``.
"""

from __future__ import annotations

import re
from typing import Any

from pagekit import field, open_dashboard
from playwright.sync_api import Page, expect
from test_studies_e2e import check_one_seed_study

STUDY_TIMEOUT_MS = 480_000  # four 1-epoch jobs, one after another
ARMS = ("local", "sync", "group", "reference")


def test_run_a_study_from_the_form_and_compare_its_jobs(page: Page, service: Any) -> None:
    """A one-seed, four-arm digits study (four 1-epoch jobs) started from the form; its page
    shows the verdict, the recommendation, the arms, their curves and the cost plot; two of
    its jobs compared from the jobs list."""
    open_dashboard(page, service)
    field(page, "Dataset").select_option("digits")
    for name, value in (("Workers", "2"), ("Batch per worker", "8"), ("Epochs", "1")):
        field(page, name).fill(value)
    seeds = page.get_by_test_id("study-seeds")
    seeds.fill("1 1")
    page.get_by_test_id("submit-study").click()
    expect(page.get_by_test_id("error-seeds")).to_contain_text("seeds must be distinct")
    seeds.fill("0")
    page.get_by_test_id("arm-group").check()
    page.get_by_test_id("study-sync-groups").fill("3")  # 3 does not divide 2 workers
    page.get_by_test_id("submit-study").click()
    expect(page.get_by_test_id("error-arms")).to_contain_text(
        "arms.2.overrides.sync_group_size: Value error, 3 does not divide workers=2"
    )
    page.get_by_test_id("study-sync-groups").fill("")
    page.get_by_test_id("submit-study").click()
    expect(page).to_have_url(re.compile(r"#/studies/s-"))
    study_id = page.url.rsplit("/", 1)[-1]
    try:
        expect(page.get_by_test_id("study-title")).to_contain_text(study_id)
        state = page.get_by_test_id("study-state")
        ended = re.compile("succeeded|failed|cancelled")
        expect(state).to_have_text(ended, timeout=STUDY_TIMEOUT_MS)
        study = service.client.get(f"/v1/studies/{study_id}").json()
        check_one_seed_study(service, study)
        expect(page.get_by_test_id("study-verdict")).to_have_text(study["verdict"])
        expect(page.get_by_test_id("study-cancel")).to_be_hidden()
        advice = study["recommendation"]
        expect(page.get_by_test_id("recommended-arm")).to_have_text(advice["arm"])
        expect(page.get_by_test_id("recommendation-reason")).to_have_text(advice["reason"])
        cost = page.get_by_test_id("study-cost-chart")
        expect(cost.locator("circle.point")).to_have_count(len(ARMS))  # one point per arm
        for arm in ARMS:
            row = page.locator(f'[data-testid="arm-row"][data-arm="{arm}"]')
            metric = re.compile(r"\d+\.\d\d ± 0\.00 %")  # one seed: no spread
            expect(row.get_by_test_id("arm-metric")).to_have_text(metric)
            bytes_cell = row.get_by_test_id("arm-bytes")
            expect(bytes_cell).to_have_text(re.compile(r"\d" if arm == "sync" else r"^0 B$"))
            if arm == "sync":
                expect(bytes_cell).not_to_have_text("0 B")
            curve = page.get_by_test_id("study-chart").locator(f'path[data-series="{arm}"]')
            expect(curve).to_have_attribute("data-points", "1")
            expect(cost.locator(f'path[data-series="{arm}"]')).to_have_attribute("data-points", "1")
        expect(cost.locator(".legend")).to_contain_text("group")

        local, sync = (study["arms"][i]["jobs"][0]["id"] for i in (0, 1))
        page.get_by_test_id("nav-jobs").click()
        for job_id in (local, sync):
            page.locator(f'tr[data-job-id="{job_id}"]').get_by_test_id("job-select").check()
        page.get_by_test_id("compare-button").click()
        legend = page.get_by_test_id("compare-chart").locator(".legend")
        expect(legend).to_contain_text(f"{local} · local · 2 \u00d7 8")
        expect(legend).to_contain_text(f"{sync} · sync · 2 \u00d7 8")
        expect(page.get_by_test_id("compare-chart").locator("path.series")).to_have_count(2)

        page.get_by_test_id("nav-studies").click()
        page.locator(f'[data-study-id="{study_id}"]').get_by_test_id("study-link").click()
        page.locator(f'[data-testid="study-job-link"][data-job-id="{sync}"]').click()
        expect(page.get_by_test_id("job-title")).to_contain_text(sync)
        expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
        expect(page.get_by_test_id("worker-bytes").first).not_to_have_text("0 B")

        group = study["arms"][2]["jobs"][0]["id"]
        page.go_back()
        page.locator(f'[data-testid="study-job-link"][data-job-id="{group}"]').click()
        expect(page.get_by_test_id("job-title")).to_contain_text(group)
        expect(page.get_by_test_id("bn-none")).to_contain_text("No BatchNorm statistics")
        expect(page.get_by_test_id("worker-bytes")).to_have_text(["0 B", "0 B"])
    finally:
        service.client.post(f"/v1/studies/{study_id}/cancel")  # never leave jobs behind
