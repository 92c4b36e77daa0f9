"""client.http.Transport (the SDK's): a busy service's 429 (with Retry-After) is retried, a
full queue's 429 (without) is reported at once; the CLI's default URL."""

from __future__ import annotations

import httpx
import pytest

from client.errors import ApiError, Busy
from client.http import Transport


def client_answering(answers: list[httpx.Response]) -> tuple[Transport, list[httpx.Request]]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers.pop(0)

    client = Transport(
        "http://127.0.0.1:8000", "t" * 32, http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    client.version_checked = True  # no /healthz among the answers
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
    assert isinstance(error.value, Busy) and error.value.setting == "SYNCBN_MAX_QUEUED_JOBS"
    assert len(sent) == 1


def test_the_cli_defaults_to_the_url_the_service_of_its_home_recorded(tmp_path, monkeypatch):
    """``PORT=8123 make run``: the banner's own CLI command must reach it with no flag (the
    SDK's ``Client`` picks the URL the CLI leaves unset)."""
    from client.cli import DEFAULT_URL, Client, build_parser
    from contract.layout import Layout, local_service_url

    def cli_url(*argv: str) -> str:
        return Client(build_parser().parse_args([*argv, "list"]).url).url

    monkeypatch.delenv("SYNCBN_URL", raising=False)
    monkeypatch.setenv("SYNCBN_HOME", str(tmp_path))
    assert cli_url() == DEFAULT_URL
    Layout.of(tmp_path).service_url.write_text("http://127.0.0.1:8123\n")
    assert cli_url() == "http://127.0.0.1:8123"
    monkeypatch.setenv("SYNCBN_URL", "http://127.0.0.1:9000")
    assert cli_url() == "http://127.0.0.1:9000"
    assert cli_url("--url", "http://127.0.0.1:9001") == "http://127.0.0.1:9001"
    Layout.of(tmp_path).service_url.write_text("http://syncbn.example:8123\n")
    assert local_service_url() is None  # a recorded URL is for this machine only
