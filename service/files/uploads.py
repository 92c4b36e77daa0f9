"""Receiving an uploaded file: streamed to disk in chunks, with a size limit and a digest, and
flushed to disk (the caller renames it into place with ``housekeeping.publish``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, status

from service.settings import Settings

CHUNK = 1 << 20


def receive(source: BinaryIO, target: Path, limit: int, setting: str) -> tuple[int, str]:
    """Copy ``source`` to ``target``; (bytes, sha256 hex). A 413 past ``limit`` bytes, naming
    the ``setting`` that sets it (the caller removes ``target``)."""
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE,
                    f"upload larger than {limit} bytes ({Settings.env_name(setting)})",
                )
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()
