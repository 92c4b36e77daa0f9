"""``SYNCBN_LOG_FORMAT``: ``text`` lines for a person, ``json`` objects for a collector, and
``auto`` (the default) choosing text on a terminal and JSON otherwise; the service and
uvicorn log through the same handler (``service.api.observability.log_config``)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.api.observability import JsonFormatter, TextFormatter, log_config, resolve_format
from service.settings import Settings

LOG_ONE = (
    "import logging.config, sys\n"
    "from service.api.observability import log_config\n"
    "logging.config.dictConfig(log_config('INFO', sys.argv[1]))\n"
    "logging.getLogger('service.jobs').info('job submitted', extra={'job_id': 'j-1'})\n"
    "logging.getLogger('uvicorn.error').warning('shutting down')\n"
)


def record(**extra) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {
            "name": "service.jobs",
            "levelname": "INFO",
            "levelno": 20,
            "msg": "job %s",
            "args": ("submitted",),
        }
    )
    made.__dict__.update(extra)
    return made


def test_text_is_a_readable_line_with_the_extra_fields():
    line = TextFormatter().format(record(job_id="j-1", spec={"workers": 2}, note="two words"))
    assert " INFO    service.jobs: job submitted  " in line
    assert 'job_id=j-1 spec={"workers":2} note="two words"' in line
    assert "\n" not in line and not line.startswith("{")


def test_json_is_one_object_with_the_extra_fields():
    payload = json.loads(JsonFormatter().format(record(job_id="j-1")))
    assert payload["message"] == "job submitted" and payload["level"] == "info"
    assert payload["logger"] == "service.jobs" and payload["job_id"] == "j-1"


def test_text_keeps_the_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record()
        failed.exc_info = sys.exc_info()
    text = TextFormatter().format(failed)
    assert text.splitlines()[0].endswith("job submitted")
    assert "Traceback" in text and "ValueError: boom" in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_otherwise():
    assert resolve_format("auto", Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", Terminal()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"
    closed = io.StringIO()
    closed.close()
    assert resolve_format("auto", closed) == "json"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_config_gives_the_service_and_uvicorn_one_format(fmt):
    config = log_config("INFO", fmt)
    assert config["handlers"]["stderr"]["formatter"] == fmt
    assert {config["loggers"][n]["handlers"][0] for n in ("service", "uvicorn.access")} == {
        "stderr"
    }


def run(fmt: str, stderr: int | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOG_ONE, fmt],
        stderr=stderr if stderr is not None else subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stderr or ""


def test_a_pipe_gets_json_by_default_and_text_when_asked():
    lines = run("auto").splitlines()
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "job submitted" and first["job_id"] == "j-1"
    assert second["logger"] == "uvicorn.error" and second["level"] == "warning"
    text = run("text").splitlines()
    assert text[0].endswith("INFO    service.jobs: job submitted  job_id=j-1")
    assert "WARNING uvicorn.error: shutting down" in text[1]


def test_a_terminal_gets_text_by_default():
    leader, follower = pty.openpty()
    try:
        run("auto", stderr=follower)
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: all read
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    text = out.decode()
    assert "INFO    service.jobs: job submitted  job_id=j-1" in text and "{" not in text


def test_the_setting_takes_only_the_three_formats(monkeypatch):
    monkeypatch.setenv("SYNCBN_LOG_FORMAT", "text")
    assert Settings().log_format == "text"
    assert Settings(log_format="json").log_format == "json"
    assert Settings(log_format="auto").log_format == "auto"
    with pytest.raises(ValidationError, match="log_format"):
        Settings(log_format="xml")
