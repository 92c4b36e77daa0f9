"""Fair share against FIFO: user A queues 10 jobs, then user B queues 2. When does B's first
job start? Measured on the real service (``python -m service`` as ``make run`` starts it: its
own embedded Ray head, SQLite) with one job on Ray at a time (``SYNCBN_MAX_RUNNING_JOBS=1``),
so every start is one freed slot.

    .venv/bin/python benchmarks/fair_share.py [--jobs-a 10] [--jobs-b 2]

Two runs in one service, the baseline first:

- ``one token (FIFO)``: A and B share the service's token, as before users existed: one
  queue, first come first served;
- ``two users (fair share)``: A and B are members with their own tokens: the next job comes
  from the user with the fewest running workers.

Prints, per run, how many of A's jobs started before B's first, and the seconds from B's
submission to its start; then the audit log's entries for the run's writes (every submit,
cancel and user change is there). Each run cancels what is left before the next.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servicekit import ServiceProcess, made_run

SPEC = {"dataset": "synthetic", "workers": 1, "batch_size_per_worker": 64, "epochs": 1}
"""A job of a few seconds (most of it Ray starting its driver)."""


def as_user(service: ServiceProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def submit(client: httpx.Client, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = client.post("/v1/jobs", json=SPEC)
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


def started(admin: httpx.Client, ids: list[str]) -> dict[str, float]:
    """The ids among ``ids`` that have started, with when (seconds since the epoch)."""
    out = {}
    for job_id in ids:
        job = admin.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["started_at"] is not None:
            out[job_id] = _seconds(job["started_at"])
    return out


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def one_run(
    name: str, admin: httpx.Client, a: httpx.Client, b: httpx.Client, n_a: int, n_b: int
) -> dict[str, Any]:
    a_ids = submit(a, n_a)
    b_submitted = time.time()
    b_ids = submit(b, n_b)
    deadline = time.monotonic() + 60 * (n_a + n_b)
    while time.monotonic() < deadline:
        b_started = started(admin, b_ids[:1])
        if b_started:
            break
        time.sleep(0.5)
    else:
        raise TimeoutError(f"{name}: B's first job did not start")
    b_start = b_started[b_ids[0]]
    a_before = sum(1 for t in started(admin, a_ids).values() if t < b_start)
    for job_id in a_ids + b_ids:
        admin.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
    _wait_idle(admin, a_ids + b_ids)
    return {
        "run": name,
        "a_jobs_started_first": a_before,
        "b_waited_s": round(b_start - b_submitted, 1),
        "ids": a_ids + b_ids,
    }


def _wait_idle(admin: httpx.Client, ids: list[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [admin.get(f"/v1/jobs/{i}").json()["state"] for i in ids]
        if all(s in ("succeeded", "failed", "cancelled") for s in states):
            return
        time.sleep(0.5)
    raise TimeoutError("jobs still not over")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs-a", type=int, default=10)
    parser.add_argument("--jobs-b", type=int, default=2)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fair-share-")) / ".syncbn"
    with made_run(home, env={"SYNCBN_MAX_RUNNING_JOBS": "1"}) as service:
        admin = service.client
        tokens = {}
        for user in ("alice", "bob"):
            created = admin.post("/v1/users", json={"name": user, "role": "member"})
            tokens[user] = created.raise_for_status().json()["token"]["token"]
        shared = as_user(service, str(service.token))
        results = [
            one_run("one token (FIFO)", admin, shared, shared, args.jobs_a, args.jobs_b),
            one_run(
                "two users (fair share)",
                admin,
                as_user(service, tokens["alice"]),
                as_user(service, tokens["bob"]),
                args.jobs_a,
                args.jobs_b,
            ),
        ]
        print(f"A queues {args.jobs_a} jobs, then B queues {args.jobs_b}; one job on Ray at a time")
        print(f"{'run':<24} {'A jobs started before B':>24} {'B waited (s)':>13}")
        for row in results:
            print(f"{row['run']:<24} {row['a_jobs_started_first']:>24} {row['b_waited_s']:>13}")
        base, fair = results
        if base["b_waited_s"]:
            print(f"B's wait, fair share / FIFO: {fair['b_waited_s'] / base['b_waited_s']:.2f}x")
        ids = {i for row in results for i in row["ids"]}
        audit = admin.get("/v1/audit", params={"limit": 500}).raise_for_status().json()
        entries = [e for e in audit["entries"] if e["object_id"] in ids]
        actions: dict[str, int] = {}
        for entry in entries:
            actions[entry["action"]] = actions.get(entry["action"], 0) + 1
        users = [e for e in audit["entries"] if e["action"].startswith("users-")]
        print(
            f"audit log: {len(entries)} entries on the runs' jobs {actions}; "
            f"{len(users)} user changes"
        )
        expected = 2 * 2 * (args.jobs_a + args.jobs_b)  # a submit and a cancel per job
        if len(entries) < expected:
            print(f"MISSING audit entries: {len(entries)} < {expected}")
            return 1
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
