"""The API the service serves does not change by accident: ``/openapi.json`` is byte for byte
the snapshot in ``tests/snapshots/openapi.json``.

A deliberate change of the API updates the snapshot in the same commit:

    .venv/bin/python tests/unit/test_openapi_snapshot.py   # rewrites the snapshot
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SNAPSHOT = TESTS / "snapshots" / "openapi.json"


def served_openapi() -> bytes:
    from inprocess import local_client, new_app

    with tempfile.TemporaryDirectory() as home:
        return local_client(new_app(Path(home))).get("/openapi.json").content


def test_the_served_api_is_the_snapshot():
    served = served_openapi()
    assert served == SNAPSHOT.read_bytes(), (
        "/openapi.json changed: if on purpose, run python tests/unit/test_openapi_snapshot.py"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    SNAPSHOT.write_bytes(served_openapi())
    print(f"wrote {SNAPSHOT}")
