"""The dashboard's jobs in real headless Chromium, against the real service (``service``: a real
uvicorn subprocess with a real local Ray cluster, with the API token on). Nothing is mocked:
the jobs below really train.

- a small ``synthetic`` job submitted through the form appears in the list; its page fills
  the per-worker table with both ranks from the live event stream, draws the test-accuracy
  curve, the BN view and the timeline, and shows the accuracy the API reports; its Model panel
  downloads the trained model file (with the token) of the last epoch;
- a longer job (submitted over the API) is cancelled from its page, then deleted;
- server-side validation errors appear next to the right field (submitted with the keyboard);
- the token dialog rejects a wrong token and remembers the right one; the page fits a
  narrow window;
- the form is built from the ``JobSpec`` schema;
- a ``shapes`` (segmentation) job shows its mean IoU in the header, the list and as a curve.

The ``browser`` and ``page`` fixtures are in ``conftest.py`` (on a failure the page's
screenshot and HTML go to the test's ``tmp_path``), the shared steps in ``pagekit.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pagekit import (
    FINAL,
    JOB_TIMEOUT_MS,
    base_url,
    field,
    job_reason,
    open_dashboard,
    percent,
    wait_until_final,
)
from playwright.sync_api import Page, expect
from safetensors import safe_open

SMALL_JOB = {"workers": "2", "batch_size_per_worker": "8", "epochs": "2"}
LONG_JOB = {
    "dataset": "synthetic",
    "workers": 2,
    "batch_size_per_worker": 8,
    "epochs": 200,
    "report_every_steps": 8,
}


def server_errors(service: Any, spec: dict[str, Any]) -> dict[str, str]:
    """What the API itself answers to ``spec``: {field: message}."""
    response = service.client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    return {str(e["loc"][-1]): e["msg"] for e in response.json()["detail"]}


def test_submit_a_job_and_watch_it_train(page: Page, service: Any, tmp_path: Path) -> None:
    open_dashboard(page, service)
    expect(page.get_by_test_id("jobs-table")).to_be_visible()

    field(page, "Dataset").select_option("synthetic")
    for name, value in (
        ("Workers", SMALL_JOB["workers"]),
        ("Batch per worker", SMALL_JOB["batch_size_per_worker"]),
        ("Epochs", SMALL_JOB["epochs"]),
    ):
        field(page, name).fill(value)
    page.get_by_text("Optimizer, reporting and resources").click()
    field(page, "Report every k steps").fill("8")
    expect(field(page, "Precise BN batches")).to_have_value("0")  # JobSpec.precise_bn_batches
    page.get_by_test_id("submit-job").click()

    submitted = page.get_by_test_id("submitted-link")
    expect(submitted).to_be_visible()
    job_id = submitted.get_attribute("data-job-id")
    assert job_id and job_id.startswith("j-")
    spec = service.client.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert (spec["dataset"], spec["workers"], spec["batch_size_per_worker"]) == ("synthetic", 2, 8)
    assert (spec["epochs"], spec["report_every_steps"], spec["norm"]) == (2, 8, "sync")

    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row).to_be_visible()
    expect(row).to_contain_text("synthetic")
    expect(row).to_contain_text("2 \u00d7 8")  # workers x batch
    row.get_by_role("link").click()
    expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}$"))
    expect(page.get_by_test_id("job-title")).to_contain_text(job_id)

    # Both ranks, from the event stream while the job trains.
    workers = page.get_by_test_id("workers-table")
    state = page.get_by_test_id("job-state")
    failed = page.locator('[data-testid="job-state"][data-state="failed"]')
    expect(workers.locator('tr[data-rank="1"]').or_(failed)).to_be_visible(timeout=JOB_TIMEOUT_MS)
    assert not failed.is_visible(), f"the job failed: {job_reason(service, job_id)}"
    expect(workers.locator('tr[data-rank="0"]')).to_be_visible()
    report = page.get_by_test_id("workers-report")
    first_report = report.inner_text()
    if state.get_attribute("data-state") not in FINAL and "step report" in first_report:
        # A later report (at least the end of the epoch) replaces it, without a reload.
        expect(report).not_to_have_text(first_report, timeout=JOB_TIMEOUT_MS)
    rank0 = workers.locator('tr[data-rank="0"]')
    expect(rank0.locator("td").nth(1)).to_have_text("8")  # local batch size
    expect(rank0).to_contain_text("%")  # sync time share

    expect(state).to_have_text(re.compile("|".join(FINAL)), timeout=JOB_TIMEOUT_MS)
    assert state.inner_text() == "succeeded", f"the job failed: {job_reason(service, job_id)}"
    job = service.client.get(f"/v1/jobs/{job_id}").json()
    accuracy = job["result"]["test_accuracy"]
    shown = page.get_by_test_id("result-accuracy")
    expect(shown).to_have_text(re.compile(r"^\d+\.\d\d %$"))
    assert float(shown.get_attribute("data-value") or "nan") == accuracy
    assert percent(shown.inner_text()) == pytest.approx(accuracy * 100, abs=0.0051)

    # The test-accuracy curve: one point per epoch, drawn as a path with markers.
    curve = page.locator('[data-testid="acc-chart"] path.series[data-series="test"]')
    expect(curve).to_have_attribute("data-points", "2")
    assert re.fullmatch(r"M[\d.]+,[\d.]+L[\d.]+,[\d.]+", curve.get_attribute("d") or "")
    expect(page.locator('[data-testid="acc-chart"] circle[data-series="test"]')).to_have_count(2)
    for rank in (0, 1):
        loss = page.locator(f'[data-testid="loss-chart"] path.series[data-series="rank-{rank}"]')
        assert int(loss.get_attribute("data-points") or 0) >= 2

    # Per BN layer x rank: how far each worker's batch statistics are from the global ones.
    heat = page.get_by_test_id("bn-heatmap")
    expect(heat.locator("tbody tr").first).to_be_visible()
    for rank in (0, 1):
        value = heat.locator(f'td[data-rank="{rank}"]').first.get_attribute("data-value")
        assert value is not None and float(value) >= 0

    timeline = page.get_by_test_id("timeline")
    for name in ("queued", "running", "succeeded"):
        expect(timeline.locator(f'li[data-state="{name}"]')).to_have_count(1)
    expect(page.get_by_test_id("logs")).not_to_be_empty()

    # The trained model: a button per kept epoch, downloaded with the token (fetch -> blob).
    models = service.client.get(f"/v1/jobs/{job_id}/models").json()["models"]
    last = int(SMALL_JOB["epochs"])
    assert models and models[-1]["epoch"] == last, models
    expect(page.get_by_test_id("model-panel")).to_be_visible()
    expect(page.get_by_test_id("model-download")).to_have_count(len(models))
    expect(page.get_by_test_id("model-bn")).to_contain_text(models[-1]["bn_statistics"])
    newest = page.locator(f'li[data-epoch="{last}"]')
    expect(newest.get_by_test_id("model-metric")).to_have_text(
        re.compile(r"^test accuracy \d+\.\d\d %$")
    )
    button = newest.get_by_role("button", name=f"Download epoch {last} (.safetensors, ")
    expect(button).to_have_text(re.compile(r"\(\.safetensors, \d+(\.\d)? kB\)$"))
    with page.expect_download() as download:
        button.click()
    assert download.value.suggested_filename == f"{job_id}-epoch{last}.safetensors"
    path = tmp_path / "model.safetensors"
    download.value.save_as(path)
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["syncbn.recipe"])["epoch"] == last

    page.get_by_role("link", name="← Jobs").click()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row.get_by_test_id("job-state")).to_have_text("succeeded")
    cell = row.get_by_test_id("job-accuracy")
    expect(cell).to_have_text(re.compile(r"^\d+\.\d %$"))
    assert percent(cell.inner_text()) == pytest.approx(accuracy * 100, abs=0.051)


def test_cancel_a_running_job_from_its_page(page: Page, service: Any) -> None:
    response = service.client.post("/v1/jobs", json=LONG_JOB)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    try:
        open_dashboard(page, service, f"#/jobs/{job_id}")
        state = page.get_by_test_id("job-state")
        started = re.compile("|".join(("running", *FINAL)))
        expect(state).to_have_text(started, timeout=JOB_TIMEOUT_MS)
        assert state.inner_text() == "running", f"not running: {job_reason(service, job_id)}"

        page.get_by_test_id("cancel-button").click()
        page.get_by_test_id("cancel-confirm").click()
        expect(state).to_have_text("cancelled", timeout=60_000)
        expect(page.get_by_test_id("cancel-button")).to_be_hidden()
        timeline = page.get_by_test_id("timeline")
        expect(timeline.locator('li[data-state="cancelled"]')).to_be_visible()
        assert service.client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"

        page.get_by_role("link", name="← Jobs").click()
        page.get_by_label("State", exact=True).select_option("cancelled")
        row = page.locator(f'tr[data-job-id="{job_id}"]')
        expect(row.get_by_test_id("job-state")).to_have_text("cancelled")
        others = page.locator('[data-testid="job-row"] [data-state]:not([data-state="cancelled"])')
        expect(others).to_have_count(0)

        # Over now: its page deletes it (once Ray has stopped it), with its files.
        row.get_by_role("link").first.click()
        expect(page.get_by_test_id("delete-button")).to_be_visible()
        delete_when_stopped(page, service, job_id)
        expect(page.get_by_test_id("jobs-table")).to_be_visible()
        assert service.client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not (service.home / "runs" / job_id).exists()
    finally:
        service.client.post(f"/v1/jobs/{job_id}/cancel")  # never leave it hogging the cluster


def delete_when_stopped(page: Page, service: Any, job_id: str) -> None:
    """Delete the job from its page; while Ray still stops it the page says so (409): again."""
    for _ in range(30):
        page.get_by_test_id("delete-button").click()
        with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
            page.get_by_test_id("delete-confirm").click()
        if answer.value.status == 204:
            return
        assert answer.value.status == 409, answer.value.text()
        expect(page.get_by_test_id("job-error")).to_contain_text("still stopping")
        page.wait_for_timeout(1000)
    raise AssertionError(f"job {job_id} was never deletable: {job_reason(service, job_id)}")


def test_server_validation_errors_appear_next_to_their_field(page: Page, service: Any) -> None:
    total = service.client.get("/v1/jobs").json()["total"]
    open_dashboard(page, service)
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    field(page, "Dataset").select_option("synthetic")

    workers = field(page, "Workers")
    workers.fill("0")
    workers.press("Enter")  # submitted with the keyboard
    expected = server_errors(service, {"dataset": "synthetic", "workers": 0})["workers"]
    expect(page.get_by_test_id("error-workers")).to_have_text(expected)
    expect(workers).to_have_attribute("aria-invalid", "true")
    expect(workers).to_be_focused()
    expect(page.get_by_test_id("form-error")).to_be_visible()

    workers.fill("2")
    group = field(page, "Sync group size")
    group.fill("3")
    group.press("Enter")
    spec = {"dataset": "synthetic", "workers": 2, "sync_group_size": 3}
    expected = server_errors(service, spec)["sync_group_size"]
    expect(page.get_by_test_id("error-sync_group_size")).to_have_text(expected)
    expect(page.get_by_test_id("error-workers")).to_be_empty()
    expect(workers).not_to_have_attribute("aria-invalid", "true")
    expect(page.get_by_test_id("submit-status")).to_be_empty()
    assert service.client.get("/v1/jobs").json()["total"] == total  # nothing was submitted


def test_token_is_asked_once_and_the_page_fits_a_narrow_window(page: Page, service: Any) -> None:
    assert service.token, "the service fixture runs with an API token"
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base_url(service)}/")
    dialog = page.get_by_test_id("token-dialog")
    expect(dialog).to_be_visible()
    token = field(page, "Token")
    expect(token).to_be_focused()
    token.fill(f"{service.token}-wrong")
    token.press("Enter")
    expect(page.get_by_test_id("token-message")).to_contain_text("rejected")
    token.fill(service.token)
    token.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    expect(page.get_by_test_id("jobs-error")).to_be_hidden()

    page.reload()  # the token is kept in the browser's storage
    expect(page.get_by_test_id("jobs-count")).not_to_be_empty()
    expect(dialog).to_be_hidden()

    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 390px"
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_focused()


def test_the_form_is_built_from_the_jobspec_schema(page: Page, service: Any) -> None:
    """Every JobSpec property of /openapi.json has a labelled control with its default and range."""
    response = httpx.get(f"{base_url(service)}/openapi.json", timeout=30)  # open: no token
    assert response.status_code == 200, response.text
    properties = response.json()["components"]["schemas"]["JobSpec"]["properties"]
    open_dashboard(page, service)
    form = page.get_by_test_id("job-form")
    # nothing hard-coded; the form also holds the study's seeds and arms ("Run as a study")
    spec_fields = form.locator('[data-field]:not([data-field="seeds"]):not([data-field="arms"])')
    expect(spec_fields).to_have_count(len(properties))
    for name, prop in properties.items():
        control = form.locator(f'[name="{name}"]')
        expect(control).to_have_count(1)
        expect(form.locator(f'label[for="{control.get_attribute("id")}"]')).to_have_count(1)
        # Optional[X] is anyOf [X, null]: ranges and choices are on X.
        inner = next((b for b in prop.get("anyOf", []) if b.get("type") != "null"), prop)
        kind = inner.get("type")
        choices = inner.get("enum") or [b["const"] for b in prop.get("anyOf", []) if "const" in b]
        if choices:
            values = control.locator("option").evaluate_all("els => els.map((o) => o.value)")
            assert {str(c) for c in choices} <= set(values), (name, values)
        if "default" in prop:
            default = prop["default"]
            if kind == "boolean":
                assert control.is_checked() is default, name
            elif kind in ("integer", "number") and default is not None:
                assert float(control.input_value()) == default, name
            else:
                assert control.input_value() == ("" if default is None else str(default)), name
        if kind in ("integer", "number"):
            assert control.get_attribute("type") == "number", name
            assert control.get_attribute("step") == ("1" if kind == "integer" else "any"), name
            for attr, keys in (
                ("min", ("minimum", "exclusiveMinimum")),
                ("max", ("maximum", "exclusiveMaximum")),
            ):
                bound = next((inner[k] for k in keys if k in inner), None)
                shown = control.get_attribute(attr)
                assert (None if shown is None else float(shown)) == bound, (name, attr, shown)
    dataset = field(page, "Dataset")  # a string in the schema, a select of datasets in the page
    assert {"digits", "synthetic"} <= set(
        dataset.locator("option").evaluate_all("els => els.map((o) => o.value)")
    )


def test_a_segmentation_job_shows_its_mean_iou(page: Page, service: Any) -> None:
    job_id = service.submit(
        dataset="shapes", model="auto", epochs=1, workers=2, batch_size_per_worker=4
    )["id"]
    open_dashboard(page, service, f"#/jobs/{job_id}")
    wait_until_final(page, service, job_id, "succeeded")
    miou = service.job(job_id)["result"]["test_miou"]
    assert miou is not None

    headline = page.get_by_test_id("headline-miou")  # next to the state badge
    expect(headline).to_have_text(re.compile(r"^\d+\.\d\d %$"))
    assert float(headline.get_attribute("data-value") or "nan") == miou
    assert percent(headline.inner_text()) == pytest.approx(miou * 100, abs=0.0051)
    expect(page.get_by_test_id("result-miou")).to_have_text(headline.inner_text())
    curve = page.get_by_test_id("miou-curve")  # one evaluation: one point
    expect(curve).to_have_attribute("data-points", "1")
    points = page.locator('[data-testid="acc-chart"] circle[data-series="test-miou"]')
    expect(points).to_have_count(1)

    page.get_by_role("link", name="← Jobs").click()
    cell = page.locator(f'tr[data-job-id="{job_id}"]').get_by_test_id("job-accuracy")
    expect(cell).to_have_text(re.compile(r"^mIoU \d+\.\d %$"))
    assert percent(cell.inner_text().removeprefix("mIoU")) == pytest.approx(miou * 100, abs=0.051)
