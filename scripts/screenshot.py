"""A PNG of a dashboard page, taken with the page tests' headless Chromium (Playwright).

    .venv/bin/python scripts/screenshot.py '#/studies/s-da57be5729dc' docs/dashboard.png \
        [--url http://127.0.0.1:8000] [--width 1280]

The token comes from ``--token``, ``$SYNCBN_API_TOKEN`` or ``$SYNCBN_HOME/api-token`` (the
login link hands it to the page, as ``make run``'s does). The page is shot once its charts
are drawn; ``docs/dashboard.png`` in the README was made this way.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from playwright.sync_api import sync_playwright

from contract.layout import Layout, read_token_file

CHROMIUM = Path(os.environ.get("SYNCBN_CHROMIUM", "/usr/bin/chromium"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("route", help="a hash route of the dashboard, like '#/studies/s-…'")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--url", default=os.environ.get("SYNCBN_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("SYNCBN_API_TOKEN"))
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels")
    args = parser.parse_args()
    token = args.token or read_token_file(Layout.of().api_token)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.goto(f"{args.url}/#token={token}")
        page.wait_for_load_state("networkidle")
        page.goto(f"{args.url}/{args.route}")
        page.wait_for_selector("svg path.series", timeout=30_000)
        page.wait_for_timeout(500)  # the charts' resize redraw
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
