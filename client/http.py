"""The REST API over httpx: requests (a busy service is asked again), errors as text, the
token of a local service, a job's Server-Sent Events and a streamed download to a file."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import httpx

from contract.layout import Layout, is_loopback, read_token_file


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def describe_error(response: httpx.Response) -> str:
    """The service's error as text: one ``field: message`` line per validation problem."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    if isinstance(detail, list):
        lines = []
        for error in detail:
            loc = [str(p) for p in error.get("loc", []) if p != "body"]
            lines.append(f"  {'.'.join(loc) or '(body)'}: {error.get('msg')}")
        return f"HTTP {response.status_code}:\n" + "\n".join(lines)
    return f"HTTP {response.status_code}: {detail}"


def local_token(url: str) -> str | None:
    """The token ``make run`` made, when ``url`` is a service on this machine (a token file is
    never sent elsewhere): ``$SYNCBN_HOME/api-token`` (default ``.syncbn``)."""
    if not is_loopback(httpx.URL(url).host):
        return None
    return read_token_file(Layout.of().api_token)


def output_path(output: Path | None, disposition: str | None, fallback: str) -> Path:
    """Where a download goes: ``output`` (a file, or a folder for the server's file name),
    else the server's file name (``Content-Disposition``) in the current directory."""
    header = Message()
    header["content-disposition"] = disposition or ""
    name = Path(header.get_filename() or fallback).name
    if output is None:
        return Path(name)
    return output / name if output.is_dir() else output


@dataclass(frozen=True)
class Download:
    """A file saved by ``Client.download``: where, its response headers, size and SHA-256."""

    path: Path
    headers: httpx.Headers
    size_bytes: int
    sha256: str


class Client:
    """A thin httpx client for the REST API; a 429 with ``Retry-After`` (the service is busy
    for a moment) is retried after it, a few times; one without (a full queue) is reported."""

    RETRIES = 5

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.RETRIES + 1):
            response = self.http.request(method, path, **kwargs)
            retry_after = response.headers.get("Retry-After")
            if response.status_code != 429 or retry_after is None or attempt == self.RETRIES:
                break
            for upload in (kwargs.get("files") or {}).values():
                upload[1].seek(0)  # an upload is sent again from its start
            time.sleep(float(retry_after))
        if response.status_code >= 400:
            raise ApiError(response.status_code, describe_error(response))
        return response.json() if response.content else None

    @contextmanager
    def stream(self, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """``GET path`` as a stream; an error status raises ``ApiError``."""
        with self.http.stream("GET", path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, describe_error(response))
            yield response

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(event, data)`` from the job's Server-Sent Events stream until it ends."""
        timeout = httpx.Timeout(30.0, read=None)
        with self.stream(f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            kind, data = "message", []
            for line in response.iter_lines():
                if line == "":
                    if data:
                        yield kind, json.loads("\n".join(data))
                    kind, data = "message", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())

    def download(
        self, path: str, where: Callable[[httpx.Headers], Path], **kwargs: Any
    ) -> Download:
        """Stream ``GET path`` to the file ``where(headers)`` (through a ``.part`` file) and
        check it against its ETag (the SHA-256), if any."""
        timeout = httpx.Timeout(30.0, read=300.0)
        with self.stream(path, timeout=timeout, **kwargs) as response:
            target = where(response.headers)
            partial, digest, size = target.with_name(target.name + ".part"), hashlib.sha256(), 0
            try:
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                if response.headers.get("etag", "").strip('"') not in ("", digest.hexdigest()):
                    raise OSError(f"{target}: the download does not match its ETag (incomplete?)")
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
        return Download(target, response.headers, size, digest.hexdigest())
