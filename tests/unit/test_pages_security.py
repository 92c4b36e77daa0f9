"""The HTML pages' safety (``service.api.pages``), in process:

- ``/``, ``/docs`` and ``/redoc`` answer 200 with a Content-Security-Policy whose scripts come
  from the service alone, ``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and
  ``nosniff``; only ``/redoc`` allows inline styles (ReDoc writes <style> elements);
- the docs pages load no script or stylesheet from another origin and have no inline script;
  every asset they reference answers 200, without the token, and is the pinned one;
- JSON answers get ``nosniff`` and nothing else; the middleware passes a streamed body through
  as it comes (it only adds headers to ``http.response.start``).

The same pages in real Chromium: ``tests/e2e/test_page_security.py``.
"""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from fastapi.testclient import TestClient
from inprocess import LOCAL

from service.api import pages

PAGES = ("/", "/docs", "/redoc")


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: [sources]}."""
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name.lower(): sources for name, *sources in directives}


class References(HTMLParser):
    """The scripts (src, or None for an inline one) and stylesheets of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.stylesheets: list[str] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes.get("src"))
        elif tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(str(attributes.get("href")))
        elif tag == "link" and attributes.get("rel") == "icon":
            self.icons.append(str(attributes.get("href")))


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    return parser


@pytest.fixture
def anonymous(app) -> TestClient:
    """A browser's view: on loopback, without the API token."""
    return TestClient(app, base_url=LOCAL)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_strict_policy_and_frame_and_referrer_headers(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = policy(response.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no CDN
    assert csp["default-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert all(not s.startswith(("http:", "https:")) for sources in csp.values() for s in sources)
    if path == "/redoc":  # styled-components writes <style> elements; the search runs in a blob
        assert csp["style-src"] == ["'self'", "'unsafe-inline'"]
        assert csp["worker-src"] == ["'self'", "blob:"]
    else:  # the dashboard sets styles through the CSSOM, Swagger UI needs none inline
        assert csp["style-src"] == ["'self'"]
        assert "worker-src" not in csp


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_load_only_local_assets_and_no_inline_script(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 200
    page = references(response.text)
    assert page.scripts, "the page starts its viewer with scripts"
    assert None not in page.scripts, "an inline <script> (the CSP would block it)"
    assert "http://" not in response.text and "https://" not in response.text
    assets = [*page.scripts, *page.stylesheets, *page.icons]
    for asset in assets:
        url = urljoin(f"{LOCAL}{path}", asset)
        assert url.startswith(f"{LOCAL}/static/"), url
        answer = anonymous.get(url)  # the browser loads them without the token
        assert answer.status_code == 200, url
        assert answer.content, url
        assert answer.headers["x-content-type-options"] == "nosniff"
        if url.endswith(".js"):
            assert "javascript" in answer.headers["content-type"], url
        if url.endswith(".css"):
            assert answer.headers["content-type"].startswith("text/css"), url
    viewer = "swagger-ui-bundle.js" if path == "/docs" else "redoc.standalone.js"
    assert any(a.endswith(f"static/apidocs/{viewer}") for a in assets)


def test_the_served_assets_are_the_pinned_versions(anonymous):
    swagger = anonymous.get("/static/apidocs/swagger-ui-bundle.js").text
    assert f'PACKAGE_VERSION:"{pages.SWAGGER_UI_VERSION}"' in swagger
    redoc = anonymous.get("/static/apidocs/redoc.standalone.js").text
    assert f'ReDoc Version: ","{pages.REDOC_VERSION}"' in redoc
    assert "swagger-ui" in anonymous.get("/static/apidocs/swagger-ui.css").text
    init = anonymous.get("/static/docs/swagger-init.js")
    assert init.status_code == 200 and "SwaggerUIBundle(" in init.text


def test_json_answers_get_nosniff_only(client):
    for path in ("/healthz", "/openapi.json", "/v1/jobs"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("application/json")
        assert response.headers["x-content-type-options"] == "nosniff"
        for header in ("content-security-policy", "x-frame-options", "referrer-policy"):
            assert header not in response.headers, (path, header)


def test_a_refusal_gets_nosniff_too(anonymous):
    response = anonymous.get("/v1/jobs")  # no token
    assert response.status_code == 401
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_docs_pages_are_not_in_the_api_description(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/docs", "/redoc", "/docs/oauth2-redirect"} & set(paths)


async def _through(content_type: bytes, chunks: list[bytes]) -> list[dict]:
    """What ``SecurityHeadersMiddleware`` sends for an app that streams ``chunks``; each chunk
    must be sent on before the app makes the next one."""
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        for index, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks)}
            )
            assert sent[-1]["body"] == chunk, "the middleware held a chunk back"
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    await pages.SecurityHeadersMiddleware(app)(scope, receive, send)
    return sent


@pytest.mark.parametrize("content_type", [b"text/html; charset=utf-8", b"text/event-stream"])
def test_the_middleware_adds_headers_and_never_buffers_a_body(content_type):
    chunks = [b"<p>one</p>", b"<p>two</p>", b"<p>three</p>"]
    sent = asyncio.run(_through(content_type, chunks))
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 4
    assert [m["body"] for m in sent[1:]] == [*chunks, b""]
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-type"] == content_type.decode()
    if content_type.startswith(b"text/html"):
        assert headers["content-security-policy"] == pages.CSP
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    else:
        assert "content-security-policy" not in headers


def test_websocket_and_lifespan_scopes_pass_untouched():
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])
        await send({"type": "lifespan.startup.complete"})

    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    middleware = pages.SecurityHeadersMiddleware(app)
    asyncio.run(middleware({"type": "lifespan"}, None, send))
    assert seen == ["lifespan"] and messages == [{"type": "lifespan.startup.complete"}]
