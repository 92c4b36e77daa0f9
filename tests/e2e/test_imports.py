"""What importing each package loads, each in a fresh Python process (a second or two each,
most of it torch's own import):

- ``syncbn`` imports torch alone (no Ray, FastAPI, pydantic or SQLAlchemy), and neither timm
  nor its timm converters until a timm layer is converted; its modules import in either order;
- the service, building its app and scheduling a job with ``FakeRay``, never imports
  ``ray.train`` or the workers' reporting (only ``contract.protocol`` ties it to the workers);
- the ``syncbn`` CLI is an HTTP client: no server, worker, Ray, torch, image or numpy code.

The packages' behaviour is tested in process in ``tests/unit/``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_syncbn_imports_with_torch_alone() -> None:
    code = (
        "import sys, syncbn, syncbn.launch\n"
        "heavy = {'ray', 'fastapi', 'pydantic', 'starlette', 'sqlalchemy'}\n"
        "loaded = sorted(heavy & {m.split('.')[0] for m in sys.modules})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_syncbn_does_not_import_timm_or_its_converters() -> None:
    code = (
        "import sys, torch, syncbn\n"
        "syncbn.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(2)))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('timm', 'syncbn._timm')))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "order",
    [
        ("syncbn._timm", "syncbn.convert", "syncbn.converters"),
        ("syncbn.convert", "syncbn.converters", "syncbn._timm"),
    ],
)
def test_timm_converters_and_convert_import_in_either_order(order) -> None:
    code = "".join(f"import {name}\n" for name in order) + (
        "import syncbn\n"
        "assert syncbn.convert.convert_sync_batchnorm is syncbn.convert_sync_batchnorm\n"
        "assert syncbn._timm.timm_converters() == []  # no timm here\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_service_never_imports_ray_train(tmp_path):
    """Only ``contract.protocol`` ties the service to the workers: no ``ray.train`` in it."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from fakeray import FakeRay
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
settings = Settings(home={str(tmp_path)!r}, database_url="sqlite://", api_token="t")
app = create_app(settings, ray=FakeRay())
client = TestClient(app, base_url="http://127.0.0.1", headers={{"Authorization": "Bearer t"}})
assert client.post("/v1/jobs", json={{"dataset": "digits", "workers": 1}}).status_code == 201
app.state.services.scheduler.tick()
print(sorted(m for m in sys.modules if m.startswith(("ray.train", "workers.reporting"))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_client_imports_no_server_worker_or_array_code():
    """``syncbn`` is an HTTP client (httpx, rich and the pure ``contract``): importing it and
    building its parser loads no server, worker, Ray, torch, image or numpy code."""
    code = """
import sys
import client.cli
client.cli.parse_args(["list"])
client.cli.parse_args(["predict", "j-1", "x.npy"])
heavy = {"torch", "fastapi", "sqlalchemy", "PIL", "ray", "service", "workers", "numpy"}
print(sorted({name.split(".")[0] for name in sys.modules} & heavy))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
