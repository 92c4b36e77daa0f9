"""The HTML pages' safety: the API description's pages from pinned local assets, and the
headers every HTML answer carries.

- ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) load nothing from a CDN: their scripts and
  styles are the files the pinned ``fastapi-offline`` package ships (``pyproject.toml``),
  served under ``/static/apidocs/``; each page's start is an external script of ours
  (``service/static/docs/``), never an inline ``<script>``.
- ``SecurityHeadersMiddleware``: every text/html answer gets a Content-Security-Policy without
  inline scripts (``CSP``; ``/redoc`` its own ``REDOC_CSP``, with inline styles),
  ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``; every answer
  ``X-Content-Type-Options: nosniff``. Headers only: a streamed body passes through untouched.

Assets of fastapi-offline 1.7.7 (read from the files themselves): Swagger UI 5.32.6
(``swagger-ui-bundle.js``, ``swagger-ui.css``), ReDoc 2.5.3 (``redoc.standalone.js``),
FastAPI's ``favicon.png``.
"""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
"""Swagger UI's and ReDoc's files, as the pinned fastapi-offline ships them."""
SWAGGER_UI_VERSION = "5.32.6"
REDOC_VERSION = "2.5.3"
"""The versions of those files (fastapi-offline 1.7.7; a unit test reads them in the files)."""
ASSETS_URL = "/static/apidocs"
"""Where they are served; mounted before ``/static`` (the dashboard), which would take it."""

DIRECTIVES = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",  # the dashboard's favicon and Swagger UI's icons are data: URLs
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}
"""The Content-Security-Policy of every HTML answer (the dashboard, ``/docs``): everything from
the service itself, no inline script or style (the dashboard sets styles through the CSSOM)."""


def content_security_policy(**changes: str) -> str:
    """``DIRECTIVES`` with ``changes`` (``style_src="'self'"`` sets ``style-src``), as a header."""
    directives = {**DIRECTIVES, **{k.replace("_", "-"): v for k, v in changes.items()}}
    return "; ".join(f"{name} {value}" for name, value in directives.items())


CSP = content_security_policy()
REDOC_CSP = content_security_policy(style_src="'self' 'unsafe-inline'", worker_src="'self' blob:")
"""``/redoc``'s: ReDoc (styled-components) writes <style> elements, and runs its search in a
worker made from a blob: URL. Scripts stay ``'self'`` only. (Its footer's logo, an image from
ReDoc's CDN, is blocked: ReDoc then leaves it out.)"""
HTML_HEADERS = {"x-frame-options": "DENY", "referrer-policy": "no-referrer"}
"""The headers of every text/html answer besides its CSP."""


class SecurityHeadersMiddleware:
    """Adds ``HTML_HEADERS`` and the CSP ``policy`` (unless the answer has its own, as
    ``/redoc``) to text/html answers and ``X-Content-Type-Options: nosniff`` to all, on
    ``http.response.start``; the body is never touched, so streamed answers stay streamed."""

    def __init__(self, app: ASGIApp, policy: str = CSP) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-content-type-options"] = "nosniff"
                if headers.get("content-type", "").lower().startswith("text/html"):
                    headers.update(HTML_HEADERS)
                    if "content-security-policy" not in headers:
                        headers["content-security-policy"] = self.policy
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(title: str, head: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{html.escape(title)}</title>
  <link rel="icon" type="image/png" href="static/apidocs/favicon.png">
{head}</head>
<body>
{body}</body>
</html>
"""


def swagger_ui_html(title: str, openapi_url: str) -> str:
    """``/docs``: Swagger UI, started by ``static/docs/swagger-init.js``. URLs are relative to
    the page (it works behind a proxy that mounts the service under a prefix)."""
    spec = html.escape(openapi_url.lstrip("/"), quote=True)
    return _page(
        f"{title} - Swagger UI",
        '  <link rel="stylesheet" href="static/apidocs/swagger-ui.css">\n',
        f'  <div id="swagger-ui" data-openapi-url="{spec}"></div>\n'
        '  <script src="static/apidocs/swagger-ui-bundle.js"></script>\n'
        '  <script src="static/docs/swagger-init.js"></script>\n',
    )


def redoc_html(title: str, openapi_url: str) -> str:
    """``/redoc``: ReDoc, started by ``static/docs/redoc-init.js`` (no web fonts)."""
    spec = html.escape(openapi_url.lstrip("/"), quote=True)
    return _page(
        f"{title} - ReDoc",
        "",
        f'  <div id="redoc" data-openapi-url="{spec}"></div>\n'
        '  <script src="static/apidocs/redoc.standalone.js"></script>\n'
        '  <script src="static/docs/redoc-init.js"></script>\n',
    )


def install_pages(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets, and add ``SecurityHeadersMiddleware``.
    Call it after the other middleware (so it is the outermost: it sees every answer) and
    before ``/static`` is mounted (so ``/static/apidocs`` is matched first). The app is made
    with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    docs = swagger_ui_html(app.title, openapi_url)
    redoc = redoc_html(app.title, openapi_url)

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="apidocs")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(docs)

    @app.get("/redoc", include_in_schema=False)
    async def redoc_page() -> HTMLResponse:
        return HTMLResponse(redoc, headers={"Content-Security-Policy": REDOC_CSP})

    app.add_middleware(SecurityHeadersMiddleware)
