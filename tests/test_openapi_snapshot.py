"""The API the service serves does not change by accident: ``/openapi.json`` is byte for byte
the snapshot in ``tests/snapshots/openapi.json``.

A deliberate change of the API updates the snapshot in the same commit:

    .venv/bin/python tests/test_openapi_snapshot.py   # rewrites the snapshot
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

SNAPSHOT = Path(__file__).parent / "snapshots" / "openapi.json"


def served_openapi() -> bytes:
    from fakeray import FakeRay
    from inprocess import local_client

    from service.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), database_url="sqlite://", api_token="t")
        return local_client(create_app(settings, ray=FakeRay())).get("/openapi.json").content


def test_the_served_api_is_the_snapshot():
    served = served_openapi()
    assert served == SNAPSHOT.read_bytes(), (
        "/openapi.json changed: if on purpose, run python tests/test_openapi_snapshot.py"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    SNAPSHOT.write_bytes(served_openapi())
    print(f"wrote {SNAPSHOT}")
