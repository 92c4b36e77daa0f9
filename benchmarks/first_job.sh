#!/usr/bin/env bash
# Time from a fresh clone to the first finished job, as a new user gets it: a clone of this
# repository, an empty HOME (no pip cache, no ~/.ray), no RAY_* variables, then `make run` and
# the README's first job (digits, 2 workers x 8, 3 epochs) over REST, with the API token the
# service made in .syncbn/api-token.
#
#   bash benchmarks/first_job.sh            # prints the timings; leaves nothing running
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
port="${PORT:-18765}"
for name in $(compgen -e); do
    case "$name" in RAY_*) unset "$name" ;; esac
done
export HOME="$work/home" PORT="$port"
mkdir -p "$HOME"
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.0f} s')"; }

git clone -q "$repo" "$work/clone"
cd "$work/clone"
start="$(now)"
make run >"$work/make-run.log" 2>&1 &
runner=$!
cleanup() {  # SIGTERM to this clone's service (it stops its Ray head too), as Ctrl-C would
    for pid in $(pgrep -f '\.venv/bin/python -m service' || true); do
        if [ "$(readlink "/proc/$pid/cwd")" = "$work/clone" ]; then
            kill -TERM "$pid"
        fi
    done
    wait "$runner" 2>/dev/null || true
}
trap cleanup EXIT

until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
    if ! kill -0 "$runner" 2>/dev/null; then
        tail -30 "$work/make-run.log"
        exit 1
    fi
    sleep 1
done
up="$(since "$start")"
auth="Authorization: Bearer $(cat .syncbn/api-token)"  # made by the service on first start
job="$(curl -sf -X POST "http://127.0.0.1:$port/v1/jobs" -H "$auth" -H 'Content-Type: application/json' \
    -d '{"dataset": "digits", "workers": 2, "batch_size_per_worker": 8, "epochs": 3}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
submitted="$(now)"
while true; do
    state="$(curl -sf -H "$auth" "http://127.0.0.1:$port/v1/jobs/$job" |
        python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["state"])')"
    case "$state" in succeeded | failed | cancelled) break ;; esac
    sleep 1
done
accuracy="$(curl -sf -H "$auth" "http://127.0.0.1:$port/v1/jobs/$job" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["result"]["test_accuracy"])')"
echo "fresh clone -> service up (make run: venv, install, Ray head): $up"
echo "job $job: $state in $(since "$submitted"), test accuracy $accuracy"
echo "fresh clone -> first finished job: $(since "$start")"
