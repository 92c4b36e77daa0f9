"""The API the service serves does not change by accident: ``/openapi.json`` is byte for byte
the snapshot in ``tests/snapshots/openapi.json``.

A deliberate change of the API updates the snapshot in the same commit:

    .venv/bin/python tests/unit/test_openapi_snapshot.py   # rewrites the snapshot
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SNAPSHOT = TESTS / "snapshots" / "openapi.json"


def served_openapi() -> bytes:
    from inprocess import local_client, new_app

    with tempfile.TemporaryDirectory() as home:
        return local_client(new_app(Path(home))).get("/openapi.json").content


def test_operation_ids_are_short_and_unique():
    """Generated clients name their functions after them (``jobs_submit``, not
    ``submit_job_v1_jobs_post``)."""
    paths = json.loads(served_openapi())["paths"]
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids)) >= 25
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+){1,2}", i) and len(i) <= 24 for i in ids), ids
    assert paths["/v1/jobs"]["post"]["operationId"] == "jobs-submit"


def test_the_served_api_is_the_snapshot():
    served = served_openapi()
    assert served == SNAPSHOT.read_bytes(), (
        "/openapi.json changed: if on purpose, run python tests/unit/test_openapi_snapshot.py"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(TESTS))
    SNAPSHOT.write_bytes(served_openapi())
    print(f"wrote {SNAPSHOT}")
