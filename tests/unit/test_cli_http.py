"""client.http.Client: a busy service's 429 (with Retry-After) is retried, a full queue's 429
(without) is reported at once."""

from __future__ import annotations

import httpx
import pytest

from client.http import ApiError, Client


def client_answering(answers: list[httpx.Response]) -> tuple[Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers.pop(0)

    client = Client("http://127.0.0.1:8000", token="t" * 32)
    client.http = httpx.Client(
        base_url="http://127.0.0.1:8000", transport=httpx.MockTransport(handler)
    )
    return client, sent


def test_a_busy_429_is_retried_after_its_retry_after() -> None:
    busy = httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "busy"})
    client, sent = client_answering([busy, busy, httpx.Response(200, json={"ok": True})])
    assert client.request("GET", "/v1/jobs") == {"ok": True}
    assert len(sent) == 3


def test_a_full_queue_429_without_retry_after_is_reported_at_once() -> None:
    full = httpx.Response(429, json={"detail": "the queue is full (SYNCBN_MAX_QUEUED_JOBS=2)"})
    client, sent = client_answering([full])
    with pytest.raises(ApiError) as error:
        client.request("POST", "/v1/jobs", json={})
    assert error.value.status == 429 and "queue is full" in str(error.value)
    assert len(sent) == 1


def test_the_cli_defaults_to_the_url_the_service_of_its_home_recorded(tmp_path, monkeypatch):
    """``PORT=8123 make run``: the banner's own CLI command must reach it with no flag."""
    from client.cli import DEFAULT_URL, build_parser
    from contract.layout import Layout, local_service_url

    monkeypatch.delenv("SYNCBN_URL", raising=False)
    monkeypatch.setenv("SYNCBN_HOME", str(tmp_path))
    assert build_parser().parse_args(["list"]).url == DEFAULT_URL
    Layout.of(tmp_path).service_url.write_text("http://127.0.0.1:8123\n")
    assert build_parser().parse_args(["list"]).url == "http://127.0.0.1:8123"
    monkeypatch.setenv("SYNCBN_URL", "http://127.0.0.1:9000")
    assert build_parser().parse_args(["list"]).url == "http://127.0.0.1:9000"
    Layout.of(tmp_path).service_url.write_text("http://syncbn.example:8123\n")
    assert local_service_url() is None  # a recorded URL is for this machine only
