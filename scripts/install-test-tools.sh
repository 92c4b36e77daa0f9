#!/usr/bin/env bash
# What `make test` needs besides the venv, from the Debian archive: Chromium for the dashboard's
# browser tests (tests/e2e/test_page_*.py; Playwright drives /usr/bin/chromium because it cannot
# download its own browser here) and the PostgreSQL 15 server binaries for the PostgreSQL tests
# (initdb, pg_ctl: a throwaway cluster per test session). Idempotent: installs only what is
# missing. Needs root (or sudo) and the Debian archive when something is missing.
set -euo pipefail

PG_BIN="${SYNCBN_PG_BIN:-/usr/lib/postgresql/15/bin}"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-tools: ${missing[*]} missing and this is not root (no sudo)." >&2
        echo "install-test-tools: run 'apt-get install -y ${missing[*]}' as root." >&2
        exit 1
    fi
fi

echo "install-test-tools: installing ${missing[*]} (apt-get) ..."
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# postgresql-15 without its recommends: the binaries only, no cluster is created or started
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
