"""Load check of the REST API with 1000 stored jobs, measured with ``wrk`` (a real HTTP load
generator) against the real service (``python -m service``: uvicorn, SQLite, a Ray head).

    .venv/bin/python benchmarks/api_load.py [--jobs 1000] [--duration 15] [--connections 16]

Prints p50/p99 latency and requests/s for ``GET /v1/jobs/{id}`` (random ids; with the
service's own token, and with a member's token, found by its digest and then cached),
``GET /v1/jobs?state=...`` (first page of 50) and, as the baseline measured in the same run,
``GET /healthz`` (the framework's floor: no auth, no database), with ratios to it.
Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servicekit import ServiceProcess

from contract.spec import JobSpec
from contract.states import JobState
from service.cluster.embedded_ray import RayHead, new_token, use_token
from service.storage import store
from service.storage.db import Database

# The head's own token, given to this process before Ray reads it (as make run does): nothing
# comes from ~/.ray, so it runs from a fresh clone with an empty HOME.
RAY_TOKEN = new_token()
use_token(RAY_TOKEN)

FINAL = ("succeeded", "failed", "cancelled")
LUA_IDS = """
ids = {%s}
token = "%s"
request = function()
  local path = "/v1/jobs/" .. ids[math.random(#ids)]
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
end
"""
LUA_FIXED = """
wrk.headers["Authorization"] = "Bearer %s"
"""


def seed(db_path: Path, n: int) -> list[str]:
    """``n`` jobs through queued -> pending -> running -> a final state, with results."""
    db = Database(f"sqlite:///{db_path}")
    rng = random.Random(0)
    ids = []
    with db.session() as session:
        for i in range(n):
            spec = JobSpec(
                dataset=rng.choice(["digits", "synthetic"]),
                workers=rng.choice([1, 2, 4]),
                batch_size_per_worker=rng.choice([2, 8, 32]),
                norm=rng.choice(["sync", "local"]),
            )
            job = store.create_job(session, spec, 64, JobState.QUEUED)
            store.transition(session, job, JobState.PENDING, "submitted to Ray")
            store.transition(session, job, JobState.RUNNING)
            final = FINAL[i % 10 // 7] if i % 10 < 9 else "cancelled"
            if final == "succeeded":
                job.epoch, job.step, job.test_accuracy, job.test_loss = 3, 192, 0.97, 0.1
            store.transition(
                session, job, JobState(final), None if final == "succeeded" else "seeded"
            )
            ids.append(job.id)
    db.close()
    return ids


def wrk(url: str, script: str, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s",
               handle.name, url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    os.unlink(handle.name)

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": ms("50"), "p99": ms("99"), "rps": rps, "non2xx": int(errors.group(1)) if
            errors else 0}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    with (
        tempfile.TemporaryDirectory() as tmp,
        RayHead(Path(tmp) / "ray", num_cpus=1, token=RAY_TOKEN) as head,
    ):
        home = Path(tmp) / "home"
        home.mkdir()
        ids = seed(home / "syncbn.db", args.jobs)
        service = ServiceProcess(home, head.dashboard_url, env={"SYNCBN_MAX_RUNNING_JOBS": "0"})
        service.start()
        try:
            fixed = LUA_FIXED % service.token
            member = service.client.post("/v1/users", json={"name": "load", "role": "member"})
            user_token = member.raise_for_status().json()["token"]["token"]
            by_id = ",".join(f'"{i}"' for i in ids)
            cases = {
                "GET /healthz (baseline)": (f"{service.url}/healthz", fixed),
                "GET /v1/jobs/{id}": (service.url, LUA_IDS % (by_id, service.token)),
                "GET /v1/jobs/{id} (a member's token)": (
                    service.url,
                    LUA_IDS % (by_id, user_token),
                ),
                "GET /v1/jobs?state=succeeded": (f"{service.url}/v1/jobs?state=succeeded", fixed),
                "GET /v1/jobs?state=failed": (f"{service.url}/v1/jobs?state=failed", fixed),
            }
            wrk(f"{service.url}/healthz", fixed, 3, args.connections)  # warm-up
            results = {name: wrk(url, script, args.duration, args.connections)
                       for name, (url, script) in cases.items()}  # fmt: skip
        finally:
            service.stop()

    base = results["GET /healthz (baseline)"]
    print(f"\n{args.jobs} jobs stored, wrk -t1 -c{args.connections} -d{args.duration}s, "
          "one uvicorn worker\n")  # fmt: skip
    print("| endpoint | p50 ms | p99 ms | req/s | req/s vs healthz | non-2xx |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| `{name}` | {r['p50']:.2f} | {r['p99']:.2f} | {r['rps']:.0f} | "
              f"{r['rps'] / base['rps']:.2f}x | {r['non2xx']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
