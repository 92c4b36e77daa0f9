"""What hostile requests cost the service: issue 20's table, replayed against the real service
as ``make run`` starts it (``python -m service``: its own embedded Ray head, SQLite, default
limits), each beside a benign request of the same route measured in the same run.

    .venv/bin/python benchmarks/abuse.py [--skip-models]

For each request: the answer, the service process's peak RSS above its RSS before (``VmHWM``,
reset first through ``/proc/PID/clear_refs``), its CPU seconds and the wall time, and the
ratios to the benign request of its route. The hostile payloads are ``tests/hostile.py``'s, the
ones the end-to-end tests assert on. Unless ``--skip-models``, two small jobs are trained
first for the prediction rows: an image-folder model of 256x256 images (row 4) and a code
bundle's model (row 8: 45 concurrent predictions while ``/healthz`` is timed). Rows 27.x are
issue 27's: bodies without the token, made-up methods, the API pages, and (with models) a job
that prints a look-alike outcome and 24 MiB of log, and bodies held open. Rows 28.x are issue
28's: hostile user bodies, the audit log's filters, 2,000 guessed tokens. Needs Linux
(``/proc``); runs from a fresh clone with an empty ``HOME`` (nothing is read from ``~``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hostile
import httpx
import numpy as np
from servicekit import ServiceProcess, made_run

TINY_NET = b"""
import torch
from torch import nn


def build_model(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, num_classes))
"""


def png(side: int, value: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npz(n: int = 200) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.normal(size=(n, 16)).astype(np.float32), y=np.arange(n) % 4)
    return buffer.getvalue()


class Bench:
    def __init__(self, service: ServiceProcess) -> None:
        self.service, self.pid = service, hostile.service_pid(service)
        self.rows: list[tuple[str, str, int, hostile.Cost, hostile.Cost | None]] = []
        self.baselines: dict[str, hostile.Cost] = {}
        self.jobs: dict[str, str] = {}

    def baseline(self, route: str, send: Any) -> None:
        self.baselines[route] = hostile.measure(self.pid, send)

    def row(self, number: str, what: str, route: str, wire: int, send: Any) -> hostile.Cost:
        cost = hostile.measure(self.pid, send)
        self.rows.append((number, what, wire, cost, self.baselines.get(route)))
        return cost

    def upload(self, path: str, blob: bytes, **form: str) -> Any:
        return lambda: self.service.client.post(path, files={"file": ("f", blob)}, data=form)

    def print(self) -> None:
        print("\n| # | request | wire bytes | answer | peak RSS MiB | CPU s | wall s | vs benign |")
        print("|---|---|---|---|---|---|---|---|")
        for number, what, wire, cost, base in self.rows:
            ratio = "-"
            if base is not None:
                rss = cost.rss_mib / max(base.rss_mib, 0.5)
                cpu = cost.cpu_s / max(base.cpu_s, 0.01)
                ratio = f"{rss:.1f}x, {cpu:.1f}x"
            answer = f"{cost.status} {cost.detail[:60]}".replace("|", "/").replace("\n", " ")
            print(f"| {number} | {what} | {wire} | {answer} | {cost.rss_mib:.1f} | "
                  f"{cost.cpu_s:.2f} | {cost.wall_s:.2f} | {ratio} |")  # fmt: skip
        print("\nbenign requests (the baselines):")
        for route, cost in self.baselines.items():
            print(f"- {route}: {cost.status}, {cost.rss_mib:.1f} MiB, {cost.cpu_s:.2f} s CPU")


def uploads(bench: Bench) -> None:
    client = bench.service.client
    good_zip = hostile.zip_bytes({"net.py": TINY_NET})
    bench.baseline("code", bench.upload("/v1/code", good_zip))
    bench.baseline("datasets", bench.upload("/v1/datasets", npz()))
    folder = hostile.zip_bytes({f"{c}/{i}.png": png(32, i) for c in "ab" for i in range(10)})
    bench.baseline("images", bench.upload("/v1/datasets", folder))

    rebound = {"Host": "rebound.attacker.example", "Origin": "http://rebound.attacker.example"}
    bench.row("1", "code upload, rebound Host + Origin", "code", len(good_zip),
              lambda: client.post("/v1/code", files={"file": ("b.zip", good_zip)},
                                  headers=rebound))  # fmt: skip
    bench.row("1", "submit without the token", "-", 60, lambda: httpx.post(
        bench.service.url + "/v1/jobs", json={"dataset": "digits"}))  # fmt: skip
    for number, what, route, blob, form in (
        ("3", "zip, module x=[1,1,...] of 3 MiB", "code", hostile.ast_bomb_zip(), {}),
        ("3", "zip, expression nested 100000 deep", "code", hostile.nested_zip(), {}),
        ("5", ".npz, 63 MiB of zeros", "datasets", hostile.zeros_npz(), {}),
        ("5", ".npz, header claiming (1e10, 1)", "datasets", hostile.lying_npz(), {}),
        ("7", "image folder, 40 flat 4096² PNGs at image_size=1", "images",
         hostile.png_bomb_folder(), {"image_size": "1"}),
        ("10", "tar.gz, pax header of 256 MiB", "code", hostile.pax_bomb_tar_gz(), {}),
    ):  # fmt: skip
        path = "/v1/code" if route == "code" else "/v1/datasets"
        bench.row(number, what, route, len(blob), bench.upload(path, blob, **form))
    asset = np.random.default_rng(0).bytes(3 << 20)
    big = hostile.zip_bytes({"net.py": TINY_NET, "weights.bin": asset})
    bench.row("11", "code bundle of 3 MiB (JSON limit is 1 MiB)", "code", len(big),
              bench.upload("/v1/code", big))  # fmt: skip
    bench.row("11", "chunked upload of 40 MiB", "code", 40 << 20, lambda: client.post(
        "/v1/code", content=hostile.chunked(40 << 20, head=hostile.FILE_PART),
        headers={"Content-Type": hostile.MULTIPART}))  # fmt: skip
    benign = {"dataset": "digits", "workers": 2, "batch_size_per_worker": 2, "epochs": 1}
    bench.baseline("json", lambda: client.post("/v1/jobs", json={**benign, "lr": -1}))
    for route, what in (
        ("/v1/jobs", "job spec with 70,000 unknown fields"),
        ("/v1/studies/base", "study base with 70,000 unknown fields"),
        ("/v1/studies/arms", "8 study arms, 8,750 unknown overrides each"),
    ):
        blob, path = hostile.unknown_fields_json(route), route.split("/base")[0].split("/arms")[0]
        bench.row("-", what, "json", len(blob), lambda path=path, blob=blob: client.post(
            path, content=blob, headers={"Content-Type": "application/json"}))  # fmt: skip
    job = bench.service.submit(dataset="digits", workers=1, epochs=1)
    bench.row("13", "events, Last-Event-ID of 5000 digits", "-", 5000, lambda: client.get(
        f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "9" * 5000}))  # fmt: skip
    client.post(f"/v1/jobs/{job['id']}/cancel")


def team(bench: Bench) -> None:
    """Issue 28: hostile user bodies, the audit log's filters, and a flood of guessed tokens
    (each a 401, counted in one audit row per address and minute)."""
    service, client = bench.service, bench.service.client
    json_type = {"Content-Type": "application/json"}
    bench.baseline("users", lambda: client.post("/v1/users", json={"name": "alice"}))
    unknown = {f"k{i:06d}": 0 for i in range(70_000)}
    for what, body in (
        ("user name of 900 kB", json.dumps({"name": "a" * 900_000}).encode()),
        ("a quota of 10^5000", b'{"name": "bob", "quotas": {"max_upload_bytes": 1'
         + b"0" * 5000 + b"}}"),
        ("70,000 unknown quotas", json.dumps({"name": "bob", "quotas": unknown}).encode()),
        ("quotas nested 50,000 deep", b'{"name": "bob", "quotas": ' + b'{"a":' * 50_000 + b"1"
         + b"}" * 50_000 + b"}"),
    ):  # fmt: skip
        bench.row("28.1", what, "users", len(body), lambda body=body: client.post(
            "/v1/users", content=body, headers=json_type))  # fmt: skip
    for what, query in (
        ("audit since 9999-12-31T23:59:59-23:59", {"since": "9999-12-31T23:59:59-23:59"}),
        ("audit status of 5,000 digits", {"status": "9" * 5000}),
        ("audit actor of 60 kB", {"actor": "a" * 60_000}),
    ):
        bench.row("28.2", what, "-", len(str(query)), lambda query=query: client.get(
            "/v1/audit", params=query))  # fmt: skip
    stranger = httpx.Client(base_url=service.url, timeout=60)

    def guesses() -> Any:
        for i in range(2000):
            stranger.get("/v1/jobs", headers={"Authorization": f"Bearer guess-{i:040d}"})
        rows = client.get("/v1/audit", params={"action": "sign-in"}).json()["entries"]
        counts = sorted(row["count"] for row in rows)
        return httpx.Response(401, json={"detail": f"{len(rows)} audit row(s), counts {counts}"})

    bench.row("28.3", "2,000 guessed tokens from one address", "-", 2000 * 60, guesses)


def trained(service: ServiceProcess, spec: dict[str, Any]) -> str:
    job = service.submit(**spec)
    done = service.wait_final(job["id"], timeout_s=900)
    if done["state"] != "succeeded":
        raise RuntimeError(f"training for the predict rows failed: {done}")
    return job["id"]


def predictions(bench: Bench) -> None:
    service, client = bench.service, bench.service.client
    folder = hostile.zip_bytes({f"{c}/{i}.png": png(256, i) for c in "ab" for i in range(4)})
    dataset = client.post("/v1/datasets", files={"file": ("f.zip", folder)}).json()
    image_job = trained(service, {"dataset": dataset["id"], "workers": 1, "epochs": 1,
                                  "batch_size_per_worker": 4})  # fmt: skip
    few = [("files", (f"{i}.png", png(256, i))) for i in range(2)]
    url = f"/v1/jobs/{image_job}/predict/images"
    bench.baseline("predict", lambda: client.post(url, files=few))
    for count in (10, 32):  # within SYNCBN_MAX_PREDICT_VALUES (2 Mi), then past it
        small = [("files", (f"{i}.png", png(64, i))) for i in range(count)]
        bench.row("4", f"predict {count} PNGs of 64², 256x256 model", "predict",
                  sum(len(f[1][1]) for f in small),
                  lambda small=small: client.post(url, files=small))  # fmt: skip
    flat = hostile.flat_png()
    bombs = [("files", (f"{i}.png", flat)) for i in range(9)]  # 151 Mpx to decode
    bench.row("4", "predict 9 flat 4096² PNGs", "predict", 9 * len(flat),
              lambda: client.post(url, files=bombs))  # fmt: skip

    bundle = client.post(
        "/v1/code", files={"file": ("n.zip", hostile.zip_bytes({"net.py": TINY_NET}))}
    ).json()
    code_job = trained(service, {"dataset": "digits", "workers": 1, "epochs": 1,
                                 "code": bundle["id"], "model": "net:build_model"})  # fmt: skip
    inputs = {"inputs": np.zeros((4, 8, 8)).tolist()}

    def flood() -> Any:
        def one(_: int) -> int:
            return client.post(f"/v1/jobs/{code_job}/predict", json=inputs, timeout=300).status_code

        return _with_health(service, lambda pool: [pool.submit(one, i) for i in range(45)], 45)

    bench.row("8", "45 concurrent predicts, code bundle model", "-", 45 * 1000, flood)


def strangers(bench: Bench) -> None:
    """Issue 27, rows 2 and 5: tokenless bodies, made-up methods, the API pages."""
    service = bench.service
    tokenless = httpx.Client(base_url=service.url, timeout=60)
    json_type = {"Content-Type": "application/json"}
    bench.baseline("tokenless", lambda: tokenless.post("/v1/jobs", json={"dataset": "digits"}))
    for path, size, what in (
        ("/v1/jobs/j-1/predict", 16 << 20, "predict body of 16 MiB, no token"),
        ("/v1/internal/jobs/j-1/events", 8 << 20, "ingest body of 8 MiB, a wrong token"),
    ):
        body = b"[" + b"1," * (size // 2 - 1) + b"1]"
        headers = (
            {**json_type, "Authorization": "Bearer wrong"} if "internal" in path else json_type
        )
        bench.row("27.2", what, "tokenless", len(body),
                  lambda path=path, body=body, headers=headers: tokenless.post(
                      path, content=body, headers=headers))  # fmt: skip
    body = b"[" + b"1," * (4 << 20) + b"1]"

    def four_ingests() -> Any:
        def one(_: int) -> int:
            return httpx.post(service.url + "/v1/internal/jobs/j-1/events", content=body,
                              headers=json_type, timeout=60).status_code  # fmt: skip

        return _with_health(service, lambda pool: [pool.submit(one, i) for i in range(4)])

    bench.row("27.2", "4 concurrent tokenless ingest posts of 8 MiB", "tokenless", 4 * len(body),
              four_ingests)  # fmt: skip

    def methods() -> Any:
        for i in range(200):
            tokenless.request(f"M{i}", "/healthz")
        text = service.client.get("/metrics").text
        series = {line.split("method=")[1].split(",")[0] for line in text.splitlines()
                  if line.startswith("syncbn_http_request") and "method=" in line}  # fmt: skip
        return httpx.Response(200, json={"detail": f"method labels {sorted(series)}"})

    bench.row("27.5", "200 made-up HTTP methods", "-", 200 * 40, methods)

    def docs() -> Any:
        html = tokenless.get("/docs")
        external = [u for u in ("http://", "https://") if u in html.text]
        csp = html.headers.get("content-security-policy", "")
        return httpx.Response(200, json={"detail": f"external URLs {external}; CSP {csp[:40]}"})

    bench.row("27.5", "GET /docs: scripts and policy", "-", 0, docs)


def _with_health(service: ServiceProcess, start: Any, threads: int = 8) -> Any:
    """Run ``start(pool)``'s futures while timing ``/healthz``; a summary answer."""
    health: list[float] = []
    with ThreadPoolExecutor(threads) as pool:
        futures = start(pool)
        while not all(f.done() for f in futures):
            started = time.perf_counter()
            httpx.get(f"{service.url}/healthz", timeout=30)
            health.append(time.perf_counter() - started)
            time.sleep(0.2)
    codes = [f.result() for f in futures]
    summary = {code: codes.count(code) for code in sorted(set(codes))}
    median = statistics.median(health) if health else 0.0
    worst = max(health, default=0.0)
    return httpx.Response(200, json={"detail": f"answers {summary}; /healthz median "
                                               f"{median * 1000:.0f} ms, worst "
                                               f"{worst * 1000:.0f} ms"})  # fmt: skip


def jobs_output(bench: Bench) -> None:
    """Issue 27, rows 1, 3 and 4: a lying job, then a plain one; held bodies; a huge log."""
    service, client = bench.service, bench.service.client
    liar = client.post("/v1/code", files={"file": ("l.zip", hostile.zip_bytes(
        {"liar.py": hostile.liar_net(24 << 20)}))}).json()  # fmt: skip
    small = {"dataset": "digits", "workers": 1, "epochs": 1, "batch_size_per_worker": 64}

    def lying_then_plain() -> Any:
        lying = service.submit(**small, code=liar["id"], model="liar:build_model")
        ended = service.wait_final(lying["id"], timeout_s=600)
        plain = service.submit(**small)
        done = service.wait_final(plain["id"], timeout_s=600)
        bench.jobs = {"liar": lying["id"], "plain": plain["id"]}
        return httpx.Response(200, json={"detail": f"liar {ended['state']}, the next job "
                                                   f"{done['state']}"})  # fmt: skip

    bench.row("27.1", "a job prints a look-alike outcome at exit (+24 MiB of log)", "-", 0,
              lying_then_plain)  # fmt: skip
    logs = f"/v1/jobs/{bench.jobs['liar']}/logs"
    bench.baseline("logs", lambda: client.get(f"/v1/jobs/{bench.jobs['plain']}/logs"))
    bench.row("27.4", "GET /logs?tail=1 of a 24 MiB log", "logs", 0,
              lambda: client.get(logs, params={"tail": 1}))  # fmt: skip
    plain = bench.jobs["plain"]
    inputs = {"inputs": np.zeros((4, 8, 8)).tolist()}

    def held(token: str | None) -> Any:
        paths = ["/v1/datasets", f"/v1/jobs/{plain}/predict"] * 2
        sockets = [hostile.hold_body(service.port, path, token) for path in paths]
        time.sleep(1.0)  # the service has taken them in (and, with the token, their slots)
        try:
            started = time.perf_counter()
            predicted = _until_served(lambda: client.post(f"/v1/jobs/{plain}/predict", json=inputs))
            uploaded = _until_served(
                lambda: client.post("/v1/datasets", files={"file": ("d.npz", npz())})
            )
            took = time.perf_counter() - started
        finally:
            for sock in sockets:
                sock.close()
        return httpx.Response(200, json={"detail": f"predict {predicted}, upload {uploaded} "
                                                   f"in {took:.1f} s"})  # fmt: skip

    bench.row("27.3", "2 upload + 2 predict bodies held open, no token", "-", 4, lambda: held(None))
    bench.row("27.3", "the same with the token (a slow client): 408 frees the slots", "-", 4,
              lambda: held(service.token))  # fmt: skip


def _until_served(send: Any, timeout_s: float = 90.0) -> int:
    """``send()`` again while it gets 429 (every slot taken); the last status."""
    deadline = time.monotonic() + timeout_s
    status = send().status_code
    while status == 429 and time.monotonic() < deadline:
        time.sleep(0.5)
        status = send().status_code
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-models", action="store_true", help="no prediction rows")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        made_run(Path(tmp) / ".syncbn", timeout_s=240) as service,
    ):
        bench = Bench(service)
        uploads(bench)
        strangers(bench)
        team(bench)
        if not args.skip_models:
            predictions(bench)
            jobs_output(bench)
    bench.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
