"""The dashboard's uploads in real headless Chromium, against the real service (``service``):

- a code bundle uploaded through the page is selected with its builder suggested, and a
  ``digits`` job with that builder trains; a bad upload shows the server's message;
- an image-folder ``.zip`` uploaded through the page (resized) is selected, with its classes;
- a bundle whose builder raises fails the job with the user's traceback, shown preformatted.

The ``browser`` and ``page`` fixtures are in ``conftest.py``, the shared steps in
``pagekit.py``.
"""

from __future__ import annotations

import io
import re
import textwrap
import zipfile
from pathlib import Path
from typing import Any

from pagekit import field, open_dashboard, wait_until_final
from playwright.sync_api import Page, expect

# A user's model builder (as in bundlekit.py): BatchNorm2d under its own names.
USER_NETWORK = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, channels, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
            self.stem_norm = nn.BatchNorm2d(8)
            self.classifier = nn.Linear(8, num_classes)

        def forward(self, x):
            if x.dim() == 3:
                x = x.unsqueeze(1)
            return self.classifier(torch.relu(self.stem_norm(self.stem(x))).mean(dim=(2, 3)))


    def build_model(input_shape, num_classes):
        channels = input_shape[0] if len(input_shape) == 3 else 1
        return TinyNet(channels, num_classes)
    """
)
RAISING_BUILDER = textwrap.dedent(
    """
    def build_model(s, n):
        raise RuntimeError("boom in my builder")
    """
)


def png_bytes(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_upload_a_code_bundle_and_train_its_model(page: Page, service: Any, tmp_path: Path) -> None:
    open_dashboard(page, service)
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    page.get_by_text("Upload a code bundle").click()
    status = page.get_by_test_id("code-upload-status")

    # A bundle without Python files: the server's message, not an uploaded bundle.
    empty = tmp_path / "empty.zip"
    empty.write_bytes(zip_bytes({"README.txt": "no code here"}))
    answer = service.client.post("/v1/code", files={"file": ("empty.zip", empty.read_bytes())})
    assert answer.status_code == 422, answer.text
    page.get_by_test_id("code-file").set_input_files(empty)
    page.get_by_test_id("code-upload").click()
    expect(status).to_contain_text("Upload failed: ")
    for error in answer.json()["detail"]:
        expect(status).to_contain_text(error["msg"])

    bundle = tmp_path / "mynet.zip"
    bundle.write_bytes(zip_bytes({"mynet.py": USER_NETWORK}))
    page.get_by_test_id("code-file").set_input_files(bundle)
    page.get_by_test_id("code-upload").click()
    expect(status).to_contain_text("modules mynet")
    code_id = status.get_attribute("data-code-id")
    assert code_id and code_id.startswith("code-")
    expect(field(page, "Code bundle")).to_have_value(code_id)  # selected at once
    model = field(page, "Model")
    expect(model).to_have_value("mynet:build_model")  # the builder is suggested and filled in
    suggestions = page.get_by_test_id("options-model").locator("option")
    assert "mynet:build_model" in suggestions.evaluate_all("els => els.map((o) => o.value)")

    field(page, "Dataset").select_option("digits")
    model.fill("mynet:build_model")
    for name, value in (("Workers", "2"), ("Batch per worker", "16"), ("Epochs", "1")):
        field(page, name).fill(value)
    page.get_by_test_id("submit-job").click()
    submitted = page.get_by_test_id("submitted-link")
    # The service hands the bundle to Ray (its working_dir) before it answers: seconds.
    form_error = page.locator('[data-testid="form-error"]:not([hidden])')
    expect(submitted.or_(form_error)).to_be_visible(timeout=60_000)
    expect(form_error).to_have_count(0)
    job_id = submitted.get_attribute("data-job-id")
    spec = service.client.get(f"/v1/jobs/{job_id}").json()["spec"]
    assert (spec["dataset"], spec["code"]) == ("digits", code_id)
    assert spec["model"] == "mynet:build_model"
    assert (spec["workers"], spec["batch_size_per_worker"], spec["epochs"]) == (2, 16, 1)

    submitted.click()
    expect(page.get_by_test_id("job-title")).to_contain_text(str(job_id))
    expect(page.get_by_test_id("job-model")).to_have_text("mynet:build_model")
    wait_until_final(page, service, str(job_id), "succeeded")
    expect(page.get_by_test_id("result-accuracy")).to_have_text(re.compile(r"^\d+\.\d\d %$"))
    # The user's own BatchNorm layer, by its name, in the BN view.
    expect(page.get_by_test_id("bn-heatmap").locator('tr[data-layer="stem_norm"]')).to_be_visible()

    page.get_by_role("link", name="← Jobs").click()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row.get_by_test_id("job-model")).to_have_text("mynet:build_model")


def test_upload_an_image_folder_resized(page: Page, service: Any, tmp_path: Path) -> None:
    images: dict[str, str | bytes] = {}
    for i in range(5):  # sizes differ: the upload must resize them
        images[f"pets/cat/{i}.png"] = png_bytes(10 + i, 12, (200, 40 * i, 30))
        images[f"pets/dog/{i}.png"] = png_bytes(9, 9 + i, (20, 40 * i, 220))
    folder = tmp_path / "pets.zip"
    folder.write_bytes(zip_bytes(images))
    open_dashboard(page, service)
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    page.get_by_text("Upload a dataset").click()
    status = page.get_by_test_id("upload-status")
    page.get_by_test_id("upload-file").set_input_files(folder)
    size = page.get_by_label("Resize images to", exact=True)
    size.fill("8 by 8")  # refused by the server, with its message
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(status).to_contain_text(re.compile(r"^Upload failed: image_size: .+"))

    size.fill("8x8")
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(status).to_contain_text("Uploaded as ds-")
    dataset = field(page, "Dataset")
    dataset_id = dataset.input_value()
    assert dataset_id.startswith("ds-"), dataset_id
    expect(dataset.locator("option:checked")).to_have_text(
        f"pets.zip ({dataset_id}) — 8 train, 3\u00d78\u00d78, 2 classes: cat, dog"
    )


def test_a_failing_builder_shows_its_traceback(page: Page, service: Any) -> None:
    bundle = zip_bytes({"boomnet.py": RAISING_BUILDER})
    response = service.client.post("/v1/code", files={"file": ("boom.zip", bundle)})
    assert response.status_code == 201, response.text
    job_id = service.submit(
        dataset="digits",
        code=response.json()["id"],
        model="boomnet:build_model",
        epochs=1,
        workers=2,
        batch_size_per_worker=8,
    )["id"]
    open_dashboard(page, service, f"#/jobs/{job_id}")
    wait_until_final(page, service, job_id, "failed")

    reason = page.get_by_test_id("job-reason")
    expect(reason).to_be_visible()
    expect(reason).to_contain_text("your code (boomnet:build_model)")
    expect(reason).to_contain_text("Traceback (most recent call last):")
    expect(reason).to_contain_text("RuntimeError: boom in my builder")
    style = reason.evaluate(
        "el => { const s = getComputedStyle(el);"
        " return [el.tagName, s.whiteSpace, s.overflowY, s.maxHeight]; }"
    )
    assert style[:3] == ["PRE", "pre-wrap", "auto"] and style[3] != "none", style
    # The traceback keeps its lines (the first one, what happened, stands out).
    text = reason.inner_text()
    assert "\n" in text and "boomnet.py" in text, text
    expect(reason.locator("strong")).to_contain_text("the builder raised an exception")
