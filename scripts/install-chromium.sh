#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (tests/e2e/test_page_*.py): Playwright drives
# /usr/bin/chromium because it cannot download its own browser here. Idempotent: does nothing
# when /usr/bin/chromium exists. Needs root (or sudo) and the Debian archive.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-chromium: /usr/bin/chromium is missing and this is not root (no sudo)." >&2
        echo "install-chromium: run 'apt-get install -y chromium' as root." >&2
        exit 1
    fi
fi

echo "install-chromium: installing Debian's chromium (apt-get) ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version
