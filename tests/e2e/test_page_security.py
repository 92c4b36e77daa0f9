"""The pages under their Content-Security-Policy in real headless Chromium, against the real
service (``idle_service``: the pages need no job to run):

- ``/docs`` renders every operation with Swagger UI and ``/redoc`` with ReDoc, from the
  service's own files: no request leaves for a CDN (but ReDoc's footer logo, which the policy
  blocks) and the console has no Content Security Policy report (but that one);
- the login link ``/#token=...`` logs the dashboard in: the token is kept in sessionStorage,
  not localStorage, leaves the address bar and adds no history entry; the dashboard runs with
  no CSP report, its styles set through the CSSOM apply, and an injected inline script does
  not run (the policy is in force).

The headers themselves are checked in process by ``tests/unit/test_pages_security.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pagekit import base_url
from playwright.sync_api import Page, expect

from service.api import pages

REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
"""The one outside URL ReDoc 2.5.3 asks for (its footer's logo): blocked by the policy, ReDoc
then drops it."""
TOKEN_KEY = "syncbn.apiToken"  # service/static/js/config.js


class Watch:
    """The console messages and the requests of a page."""

    def __init__(self, page: Page) -> None:
        self.console: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda message: self.console.append(message.text))
        page.on("pageerror", lambda error: self.console.append(str(error)))
        page.on("request", lambda request: self.requests.append(request.url))

    def csp_reports(self, *allowed: str) -> list[str]:
        """Console messages about the Content Security Policy that mention none of ``allowed``."""
        return [
            text
            for text in self.console
            if "Content Security Policy" in text and not any(a in text for a in allowed)
        ]

    def foreign(self, origin: str) -> set[str]:
        """Requested URLs outside ``origin`` (data: and blob: URLs are the page's own)."""
        return {
            url for url in self.requests if not url.startswith((f"{origin}/", "data:", "blob:"))
        }


@pytest.fixture
def watch(page: Page) -> Iterator[Watch]:
    yield Watch(page)


def operations(service: Any) -> list[str]:
    description = service.client.get("/openapi.json").json()
    return [op["operationId"] for path in description["paths"].values() for op in path.values()]


def test_the_api_docs_render_from_local_files_under_the_policy(
    page: Page, watch: Watch, idle_service: Any
) -> None:
    origin = base_url(idle_service)
    ids = operations(idle_service)
    assert "jobs-submit" in ids

    page.goto(f"{origin}/docs")
    expect(page.locator("#operations-jobs-jobs-submit")).to_be_visible()
    expect(page.locator(".opblock")).to_have_count(len(ids))
    page.locator("#operations-jobs-jobs-submit .opblock-summary-control").click()
    expect(page.locator("#operations-jobs-jobs-submit .opblock-body")).to_be_visible()
    assert watch.csp_reports() == [], watch.console
    assert watch.foreign(origin) == set(), watch.requests
    assert f"{origin}/static/apidocs/swagger-ui-bundle.js" in watch.requests

    page.goto(f"{origin}/redoc")
    expect(page.locator('[data-section-id="operation/jobs-submit"]')).to_be_attached()
    expect(page.get_by_role("heading", level=1)).to_contain_text("syncbn-service")
    page.get_by_placeholder("Search...").fill("submit")  # the search's worker (a blob:) runs
    expect(page.get_by_role("search").locator("xpath=..")).to_contain_text("Submit Job")
    assert watch.csp_reports(REDOC_LOGO) == [], watch.console
    assert watch.foreign(origin) <= {REDOC_LOGO}, watch.requests
    assert f"{origin}/static/apidocs/redoc.standalone.js" in watch.requests


def test_the_login_link_keeps_the_token_in_the_tab_and_out_of_the_history(
    page: Page, watch: Watch, idle_service: Any
) -> None:
    origin, token = base_url(idle_service), idle_service.token
    assert token, "the service runs with an API token"
    page.add_init_script("window.historyAtStart = history.length")  # before the page's scripts

    with page.expect_response(lambda r: "/v1/jobs?" in r.url and r.status == 200):
        page.goto(f"{origin}/#token={token}")  # the list is read with the link's token
    expect(page.get_by_test_id("jobs-table")).to_be_visible()
    expect(page.get_by_test_id("token-dialog")).to_be_hidden()
    assert page.evaluate("location.hash") == "#/" and token not in page.url
    assert page.evaluate("history.length") == page.evaluate("window.historyAtStart")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == token
    assert page.evaluate(f"localStorage.getItem('{TOKEN_KEY}')") is None
    assert page.evaluate("localStorage.length") == 0

    # The dashboard's styles go through the CSSOM (dom.js), which the policy allows.
    colors = page.evaluate(
        """async () => {
          const { h, s } = await import("./static/js/dom.js");
          const span = h("span", { style: "--c: rgb(1, 2, 3); color: var(--c)" }, "x");
          const svg = s("svg", {}, s("circle", { r: 2, style: "fill: rgb(4, 5, 6)" }));
          document.body.append(span, svg);
          return [getComputedStyle(span).color, getComputedStyle(svg.firstChild).fill];
        }"""
    )
    assert colors == ["rgb(1, 2, 3)", "rgb(4, 5, 6)"]
    assert watch.csp_reports() == [], watch.console
    assert watch.foreign(origin) == set(), watch.requests

    # The policy is in force: an inline script does not run (and is reported).
    ran = page.evaluate(
        """() => {
          const script = document.createElement("script");
          script.textContent = "window.inlineRan = true";
          document.head.append(script);
          return window.inlineRan === true;
        }"""
    )
    assert ran is False
    for _ in range(50):  # the report reaches the console a moment later
        if watch.csp_reports():
            break
        page.wait_for_timeout(100)
    assert any("script-src" in text for text in watch.csp_reports()), watch.console
    assert page.request.get(f"{origin}/").headers["content-security-policy"] == pages.CSP
