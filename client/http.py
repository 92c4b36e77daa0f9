"""The SDK's transport over httpx: requests with the token (a busy service is asked again),
error statuses as ``client.errors`` exceptions, the service's version checked once, streamed
responses, and a streamed download to a file checked against its ETag; also the token of a
local service. ``client.sdk.Client`` is the API on top of it."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import httpx

from client import paths
from client.errors import Unreachable, error_for
from contract.layout import Layout, is_loopback, read_token_file
from contract.version import major, package_version

RETRIES = 5
"""How many times a 429 with ``Retry-After`` is asked again."""
UPLOAD_TIMEOUT_S = 300.0
"""Uploads, predictions and downloads may take this long."""


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
    """A file saved by a download: where, its response headers, size and SHA-256."""

    path: Path
    headers: httpx.Headers
    size_bytes: int
    sha256: str

    @property
    def epoch(self) -> int | None:
        """A model file's checkpoint epoch (``X-Syncbn-Epoch``)."""
        epoch = self.headers.get("x-syncbn-epoch")
        return None if epoch is None else int(epoch)


def _rewind(files: Any) -> None:
    """Uploads are sent again from their start (``files`` as a mapping or a list)."""
    entries = files.values() if isinstance(files, Mapping) else [f for _, f in files or []]
    for entry in entries:
        if isinstance(entry, tuple) and hasattr(entry[1], "seek"):
            entry[1].seek(0)


def _retry_after(response: httpx.Response) -> float | None:
    """A 429's ``Retry-After`` in seconds (None: absent, so not worth asking again)."""
    if response.status_code != 429:
        return None
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


class Transport:
    """httpx for the REST API: ``token`` as a bearer token on every request, a 429 with
    ``Retry-After`` (the service is busy for a moment) retried after it, a few times; one
    without (a full queue) raised. ``http``: an httpx client to use instead of a new one with
    ``timeout_s`` (e.g. a ``fastapi.testclient.TestClient``); without a base URL it gets
    ``url``."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = http or httpx.Client(timeout=timeout_s)
        if not str(self.http.base_url):
            self.http.base_url = httpx.URL(self.url)
        self.version_checked = False

    def close(self) -> None:
        self.http.close()

    def send(
        self,
        method: str,
        path: str,
        stream: bool = False,
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """The response to ``method path``; an error status (but one in ``accept``) raises its
        ``ApiError``."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        for attempt in range(RETRIES + 1):
            try:
                request = self.http.build_request(method, path, headers=headers, **kwargs)
                response = self.http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise Unreachable(self.url, exc) from exc
            wait = _retry_after(response)
            if wait is None or attempt == RETRIES:
                break
            response.close()
            _rewind(kwargs.get("files"))
            time.sleep(wait)
        self.check_version(response)
        if response.status_code >= 400 and response.status_code not in accept:
            response.read()
            response.close()
            raise error_for(response)
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer to ``method path`` (None when empty)."""
        response = self.send(method, path, **kwargs)
        return response.json() if response.content else None

    @contextmanager
    def stream(self, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """``GET path`` as a stream, closed afterwards; an error status raises."""
        response = self.send("GET", path, stream=True, **kwargs)
        try:
            yield response
        except httpx.HTTPError as exc:
            raise Unreachable(self.url, exc) from exc
        finally:
            response.close()

    def download(
        self, path: str, where: Callable[[httpx.Headers], Path], **kwargs: Any
    ) -> Download:
        """Stream ``GET path`` to the file ``where(headers)`` (through a ``.part`` file) and
        check it against its ETag (the SHA-256), if any."""
        timeout = httpx.Timeout(30.0, read=UPLOAD_TIMEOUT_S)
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

    def check_version(self, response: httpx.Response) -> None:
        """Once per transport, on its first answer: warn (``RuntimeWarning``) when the
        service's major version (``/healthz``) is not the client's. Never fails."""
        if self.version_checked:
            return
        self.version_checked = True
        try:
            if response.status_code != 200 or not response.url.path.endswith(paths.HEALTH):
                response = self.http.send(self.http.build_request("GET", paths.HEALTH))
            theirs = str(response.json()["version"])
        except Exception:  # an old or odd service: nothing to compare
            return
        ours = package_version()
        if major(theirs) != major(ours):
            warnings.warn(
                f"the service at {self.url} runs syncbn-service {theirs}, this client is "
                f"{ours}: requests or answers may not match (upgrade the older one)",
                RuntimeWarning,
                stacklevel=4,
            )
