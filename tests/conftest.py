"""The test suite in three tiers, one folder each; a test's folder is its marker.

- ``unit/`` (``-m unit``; ``make test-fast``, under 40 s on a 2-core machine): no Ray, no
  uvicorn subprocess, no browser, no spawned ranks. Pure functions, the app in this process
  (``TestClient``, ``FakeRay``), short subprocesses (a token race, a refused start, a probe
  command). Its conftest has the one in-process app fixture, ``make_app(**settings)``
  (``inprocess.new_app`` on ``tmp_path``), and the ``app``, ``client`` and ``ray`` built with it.
- ``ranks/`` (``-m ranks``): real ``torch.distributed`` gloo process groups on spawned local
  ranks (``syncbn.launch.run_on_ranks``). It imports no Ray.
- ``e2e/`` (``-m e2e``): a real Ray head, the real service (uvicorn, SQLite or PostgreSQL),
  headless Chromium, ``python -m service`` with an empty ``HOME``, two Ray nodes; and the checks
  that examine a fresh Python process, seconds each: what a hostile input costs it
  (``test_bundle_costs.py``, ``test_dataset_costs.py``) and what importing a package loads
  (``test_imports.py``). Its conftest sets the test cluster's Ray token before Ray is imported
  and has the ``ray_head``, ``ray_cluster``, ``service``, ``idle_service``, ``browser`` and
  ``page`` fixtures.

``make test`` (plain ``pytest``) runs all three. Helpers shared across files and tiers live
here, beside this file (``pythonpath = ["tests"]``): ``fakeray``, ``inprocess`` (the app in
process), ``servicekit`` (the real service as a subprocess), ``hostile`` (issue 20's payloads
and meters, also used by ``benchmarks/``), ``rankkit`` (the distributed cases), and one
``*kit`` module per subject whose tests span files or tiers (``deploykit``, ``pagekit``,
``imagekit``, ``bundlekit``, ``limitkit``, ``migrationkit``, ``precisekit``, ``compilekit``,
``convertkit``). Data: ``fixtures/``, ``snapshots/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "ranks", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier, the first folder under ``tests/``."""
    for item in items:
        try:
            parts = item.path.resolve().relative_to(TESTS).parts
        except ValueError:
            continue  # not under tests/
        if len(parts) < 2 or parts[0] not in TIERS:
            folders = ", ".join(f"tests/{tier}/" for tier in TIERS)
            raise pytest.UsageError(f"{item.nodeid}: every test lives in a tier folder: {folders}")
        item.add_marker(getattr(pytest.mark, parts[0]))
