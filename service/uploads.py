"""Receiving an uploaded file: streamed to disk in chunks, with a size limit and a digest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, status

CHUNK = 1 << 20


def receive(source: BinaryIO, target: Path, limit: int) -> tuple[int, str]:
    """Copy ``source`` to ``target``; (bytes, sha256 hex). A 413 past ``limit`` bytes (the
    caller removes ``target``)."""
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPException(
                    status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes"
                )
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()
