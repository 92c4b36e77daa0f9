"""What idle event streams cost the real service (issue 27, "Caps"): 1,000 open
``GET /v1/jobs/{id}/events`` streams against ``python -m service`` (uvicorn, SQLite, a Ray head
of its own), every number beside a baseline measured in the same run.

    .venv/bin/python benchmarks/event_streams.py [--streams 1000] [--jobs 10]

With ``SYNCBN_MAX_RUNNING_JOBS=0`` the ``--jobs`` jobs stay queued: each has one event (its
``queued`` state) and no more, so their streams idle. Measured, without streams, then with
them open and idle (loopback only, about a minute and a half in all):

- the service process's CPU share over 20 s of idling (``/proc`` through psutil; aim < 5 % of
  a core): what the streams cost while nothing happens, their fallback reads included (one per
  stream per 15 s); 10 s without streams;
- ``GET /v1/jobs/{id}`` requests/s and p50 (a load generator in a subprocess, raw keep-alive
  sockets; aim: with streams at least 90 % of without);
- one more stream than ``--streams`` (the per-token cap, ``SYNCBN_MAX_EVENT_STREAMS_PER_TOKEN``,
  defaults to 1,000): its status;
- the latency of a new event: every job is cancelled at once (``POST /v1/jobs/{id}/cancel``
  writes a ``state`` event), and each stream notes the age of that event when it arrives, from
  the ``at`` its transaction gave it (same machine, same clock; aim: < 1 s at every stream);
  also the times from sending the cancels until every stream had the event and ``end``. The
  cancels' own answers take long on SQLite: 10 write transactions at once wait on its lock.

The streams are raw asyncio sockets in this process; the ``nofile`` limit is raised to its
hard limit first, for this process and the service it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil
from servicekit import ServiceProcess

from service.cluster.embedded_ray import RayHead, new_token, use_token

RAY_TOKEN = new_token()
use_token(RAY_TOKEN)  # the head's own token, as make run does: nothing comes from ~/.ray
JOB = {"dataset": "synthetic", "workers": 1, "batch_size_per_worker": 8, "epochs": 1}
IDLE_S = 20.0
"""The idle window with streams: longer than ``service.jobs.events.FALLBACK_S`` (15 s, x0.8-1.2
from each stream's last read), so it holds every stream's fallback read once."""
LOAD_S = 5.0
LOAD_CONNECTIONS = 8
EVENT_TIMEOUT_S = 20.0


class Stream:
    """One raw SSE connection: its status, and when it saw the first event, the cancel and
    ``end`` (monotonic times)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.status: int | None = None
        self.buffer = b""
        self.first = asyncio.Event()
        self.cancelled_at: float | None = None
        self.age: float | None = None
        """Seconds from the cancel event's own ``at`` (made in its transaction) to its arrival."""
        self.ended_at: float | None = None
        self.closed = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, token: str, timeout_s: float = 60.0) -> None:
        try:
            reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout_s
            )
            self.writer.write(
                f"GET /v1/jobs/{self.job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                return
            while data := await reader.read(65536):
                self.buffer += data
                now = time.monotonic()
                if not self.first.is_set() and b"event: state" in self.buffer:
                    self.first.set()
                if self.cancelled_at is None and b'"state": "cancelled"' in self.buffer:
                    self.cancelled_at, self.age = now, event_age(self.buffer, time.time())
                if self.ended_at is None and b"event: end" in self.buffer:
                    self.ended_at = now
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.first.set()  # a failed stream does not keep the opening phase waiting
            self.closed.set()
            if self.writer is not None:
                self.writer.close()


def event_age(buffer: bytes, arrived: float) -> float:
    """``arrived`` (wall clock) minus the ``at`` of the cancelled state event in ``buffer``."""
    line = next(x for x in buffer.split(b"\r\n") if x.startswith(b"data:") and b"cancelled" in x)
    at = datetime.fromisoformat(json.loads(line[5:])["at"]).timestamp()
    return arrived - at


# -- the load generator (a subprocess: its CPU is not the streams' process's) -------------------
async def _load_connection(port: int, request: bytes, until: float, out: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bad = 0
    try:
        while time.monotonic() < until:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            out.append(time.perf_counter() - start)
            bad += not head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    return bad


async def _load(port: int, token: str, path: str, seconds: float, connections: int) -> dict:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    start = time.monotonic()
    until = start + seconds
    bad = await asyncio.gather(
        *(_load_connection(port, request, until, latencies) for _ in range(connections))
    )
    elapsed = time.monotonic() - start
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else float("nan"),
        "non200": sum(bad),
    }


def load(port: int, token: str, path: str, seconds: float = LOAD_S) -> dict:
    """``GET path`` from ``LOAD_CONNECTIONS`` keep-alive connections for ``seconds``."""
    command = [sys.executable, __file__, "--load", str(port), token, path, str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout)


async def load_async(port: int, token: str, path: str) -> dict:
    return await asyncio.to_thread(load, port, token, path)


# -- measurements -----------------------------------------------------------------------------
async def cpu_share(process: psutil.Process, seconds: float) -> float:
    """The process's CPU time (user + system) over ``seconds`` of wall time, in % of a core."""
    before, start = process.cpu_times(), time.monotonic()
    await asyncio.sleep(seconds)
    after, wall = process.cpu_times(), time.monotonic() - start
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / wall


async def bench(service: ServiceProcess, n_streams: int, n_jobs: int) -> dict:
    assert service.process is not None and service.token
    port, token = service.port, service.token
    process = psutil.Process(service.process.pid)
    async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        jobs = []
        for _ in range(n_jobs):
            answer = await client.post("/v1/jobs", json=JOB)
            assert answer.status_code == 201, answer.text
            jobs.append(answer.json()["id"])
        path = f"/v1/jobs/{jobs[0]}"
        await load_async(port, token, path)  # warm-up: imports, caches, connections
        r: dict = {"cpu_idle": await cpu_share(process, IDLE_S / 2)}
        r["get"] = await load_async(port, token, path)

        streams = [Stream(jobs[i % n_jobs]) for i in range(n_streams)]
        opening = asyncio.Semaphore(100)

        async def open_one(stream: Stream) -> None:
            async with opening:
                task = asyncio.create_task(stream.run(port, token))
                tasks.append(task)
                await stream.first.wait()

        tasks: list[asyncio.Task] = []
        start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(open_one(s) for s in streams)), 90)
        r["open_s"] = time.monotonic() - start
        r["opened"] = sum(s.status == 200 for s in streams)
        await asyncio.sleep(1.0)  # let every stream settle into its idle wait

        r["cpu_streams"] = await cpu_share(process, IDLE_S)
        r["get_streams"] = await load_async(port, token, path)
        extra = Stream(jobs[0])
        extra_task = asyncio.create_task(extra.run(port, token, 10))
        await asyncio.wait_for(extra.first.wait(), 15)
        r["extra_status"] = extra.status
        extra_task.cancel()

        start = time.monotonic()
        cancels = await asyncio.gather(*(client.post(f"/v1/jobs/{j}/cancel") for j in jobs))
        assert all(c.status_code == 200 for c in cancels), [c.text for c in cancels]
        r["cancel_s"] = time.monotonic() - start
        deadline = start + EVENT_TIMEOUT_S
        live = [s for s in streams if s.status == 200]
        while time.monotonic() < deadline and any(s.ended_at is None for s in live):
            await asyncio.sleep(0.05)
        got = [s.cancelled_at - start for s in live if s.cancelled_at is not None]
        ages = [s.age for s in live if s.age is not None]
        ended = [s.ended_at - start for s in live if s.ended_at is not None]
        r["event"] = (len(got), max(got, default=float("nan")), statistics.median(got or [0]))
        r["age"] = (max(ages, default=float("nan")), statistics.median(ages or [0]))
        r["end"] = (len(ended), max(ended, default=float("nan")))
        r["live"] = len(live)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return r


def report(r: dict, n_streams: int, n_jobs: int, label: str) -> None:
    g0, g1 = r["get"], r["get_streams"]
    print(f"\n{label}: {n_streams} idle streams over {n_jobs} queued jobs "
          f"({r['opened']} opened in {r['open_s']:.1f} s), one uvicorn worker, "
          f"load: {LOAD_CONNECTIONS} keep-alive connections x {LOAD_S:.0f} s\n")  # fmt: skip
    print("| measure | without streams | with streams | ratio | aim |")
    print("|---|---|---|---|---|")
    print(f"| service CPU, % of a core (idle) | {r['cpu_idle']:.1f} | {r['cpu_streams']:.1f} | "
          f"+{r['cpu_streams'] - r['cpu_idle']:.1f} pts | < 5 |")  # fmt: skip
    print(f"| `GET /v1/jobs/{{id}}` req/s | {g0['rps']:.0f} | {g1['rps']:.0f} | "
          f"{g1['rps'] / g0['rps']:.2f} | >= 0.90 |")  # fmt: skip
    print(f"| `GET /v1/jobs/{{id}}` p50 ms | {g0['p50_ms']:.2f} | {g1['p50_ms']:.2f} | "
          f"{g1['p50_ms'] / g0['p50_ms']:.2f} | |")  # fmt: skip
    print(f"| non-200 answers (load) | {g0['non200']} | {g1['non200']} | | 0 |")
    count, worst, median = r["event"]
    print(
        f"| new event (a cancel's `state`): its age at each stream, max / p50 s | | "
        f"{r['age'][0]:.2f} / {r['age'][1]:.2f} ({count}/{r['live']} got it) | | < 1 s |"
    )
    print(f"| the {n_jobs} cancels sent at once -> event at every stream: max / p50 s | | "
          f"{worst:.2f} / {median:.2f} | | |")  # fmt: skip
    count, worst = r["end"]
    print(f"| the {n_jobs} cancels sent at once -> `end` at every stream: max s | | "
          f"{worst:.2f} ({count}/{r['live']}) | | |")  # fmt: skip
    print(f"| the {n_jobs} cancels themselves (their answers), s | | {r['cancel_s']:.2f} | | |")
    print(f"| stream {n_streams + 1} (past the per-token cap): status | | "
          f"{r['extra_status']} | | 429 |")  # fmt: skip


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        port, token, path, seconds = sys.argv[2:6]
        result = asyncio.run(_load(int(port), token, path, float(seconds), LOAD_CONNECTIONS))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * args.streams + 256:
        sys.exit(f"nofile hard limit {hard} is too low for {args.streams} streams")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the service inherits it

    with (
        tempfile.TemporaryDirectory() as tmp,
        RayHead(Path(tmp) / "ray", num_cpus=1, token=RAY_TOKEN) as head,
    ):
        home = Path(tmp) / "home"
        env = {"SYNCBN_MAX_RUNNING_JOBS": "0", "SYNCBN_LOG_LEVEL": "WARNING"}
        service = ServiceProcess(home, head.dashboard_url, env=env)
        service.start()
        try:
            result = asyncio.run(bench(service, args.streams, args.jobs))
        finally:
            service.stop()
    report(result, args.streams, args.jobs, args.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
