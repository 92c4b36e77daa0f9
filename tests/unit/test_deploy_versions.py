"""deploy/ against pyproject.toml and the Makefile, and its health checks run:

- the Ray, torch, Python and project versions of every image, base image and pin agree with
  pyproject.toml (and the torch pin with the Makefile's);
- the Kubernetes readiness probe and the Dockerfile's HEALTHCHECK run, against a local HTTP
  server standing in for the service (``/readyz`` with the token, ``/healthz``).

The loading is in ``deploykit.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from typing import Any

import pytest
from deploykit import (
    ENV_EXAMPLE,
    IMAGE_NAME,
    PROJECT,
    PYTHON_SPEC,
    RAY_IMAGE_RE,
    RAY_SPEC,
    REPO,
    SERVICE_DEPLOYMENT,
    SERVICES,
    TORCH_SPEC,
    all_containers,
    dockerfile_args,
    dockerfile_instructions,
    image_parts,
)


def _is_project_tag(tag: str) -> bool:
    """The project's version, or its CUDA build (``0.1.0-cu128``)."""
    return re.fullmatch(rf"{re.escape(PROJECT['version'])}(-cu\d+)?", tag) is not None


# --------------------------------------------------------------------------- versions


def _all_images() -> list[tuple[str, str]]:
    images = [(cid, container["image"]) for cid, container in all_containers()]
    images += [(f"compose:{name}", service["image"]) for name, service in SERVICES.items()]
    return images


def _expand_default(value: str) -> str:
    """``${VAR:-default}`` -> default (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def test_project_images_are_tagged_with_the_project_version():
    seen = []
    for where, image in _all_images():
        name, tag = image_parts(_expand_default(image))
        if name.rpartition("/")[2] == IMAGE_NAME:
            assert _is_project_tag(tag), (
                f"{where}: {image} is not tagged {PROJECT['version']}[-cuXXX]"
            )
            seen.append(where)
    assert len(seen) >= 5, f"expected the head, workers and service to run {IMAGE_NAME}: {seen}"


def _ray_base_images() -> list[tuple[str, str]]:
    args = dockerfile_args()
    found = [("Dockerfile BASE_IMAGE", args["BASE_IMAGE"])]
    for name, service in SERVICES.items():
        build = service.get("build") or {}
        if "BASE_IMAGE" in build.get("args", {}):
            found.append((f"compose:{name}", _expand_default(build["args"]["BASE_IMAGE"])))
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if value.startswith("rayproject/ray:"):
            found.append((f".env.example {key}", value))
    return found


@pytest.mark.parametrize("where,image", _ray_base_images(), ids=[w for w, _ in _ray_base_images()])
def test_ray_base_image_agrees_with_pyproject(where, image):
    match = RAY_IMAGE_RE.match(image)
    assert match, f"{where}: {image} is not rayproject/ray:<version>-py<XY>-<cpu|cuXXX>"
    assert match["ray"] in RAY_SPEC, (
        f"{where}: Ray {match['ray']} but pyproject wants ray{RAY_SPEC}"
    )
    assert match["ray"] == dockerfile_args()["RAY_VERSION"]
    python = f"{match['py']}.{match['py_minor']}"
    assert f"{python}.0" in PYTHON_SPEC, (
        f"{where}: Python {python} vs requires-python {PYTHON_SPEC}"
    )
    assert match["variant"] == "cpu" or "GPU" in where or "gpu" in where, f"{where}: {image}"


def test_torch_pin_agrees_with_pyproject_and_the_makefile():
    torch = dockerfile_args()["TORCH_VERSION"]
    assert torch in TORCH_SPEC, f"Dockerfile torch {torch} but pyproject wants torch{TORCH_SPEC}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    pinned = re.search(r"torch==([\w.]+)", makefile)
    assert pinned and pinned[1] == torch, "the image must run the torch the Makefile installs"


def test_torch_index_default_is_the_cpu_wheel_index_and_gpu_builds_use_cuda_ones():
    assert dockerfile_args()["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    gpu = SERVICES["ray-gpu-worker"]["build"]["args"]
    base = RAY_IMAGE_RE.match(_expand_default(gpu["BASE_IMAGE"]))
    assert base and base["variant"].startswith("cu")
    assert _expand_default(gpu["TORCH_INDEX"]).endswith(f"/whl/{base['variant']}")


# --------------------------------------------------------------------------- health checks


def test_service_readiness_probe_sends_the_token_and_fails_unless_ready():
    """Run the probe's exec command against a local stand-in for /readyz."""
    container = SERVICE_DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
    command = list(container["readinessProbe"]["exec"]["command"])
    assert command[0] == "python"
    with _stub_server(token="t0ken") as (port, state):
        command = [sys.executable, *[arg.replace(":8000/", f":{port}/") for arg in command[1:]]]
        assert _run(command, SYNCBN_API_TOKEN="t0ken") == 0
        assert state["paths"] == ["/readyz"]
        assert _run(command, SYNCBN_API_TOKEN="wrong") != 0  # 401
        state["ready"] = False
        assert _run(command, SYNCBN_API_TOKEN="t0ken") != 0  # 503


def test_dockerfile_healthcheck_command_passes_when_healthz_answers():
    instructions = dict(dockerfile_instructions())
    exec_form = json.loads(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert exec_form[0] == "python"
    with _stub_server(token=None) as (port, state):
        assert _run([sys.executable, *exec_form[1:]], PORT=str(port)) == 0
        assert state["paths"] == ["/healthz"]
        state["alive"] = False
        assert _run([sys.executable, *exec_form[1:]], PORT=str(port)) != 0


# --------------------------------------------------------------------------- helpers


class _Stub(http.server.BaseHTTPRequestHandler):
    state: dict[str, Any]

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state["paths"].append(self.path)
        if state["token"] and self.headers.get("Authorization") != f"Bearer {state['token']}":
            status = 401
        elif self.path == "/healthz":
            status = 200 if state["alive"] else 500
        elif self.path == "/readyz":
            status = 200 if state["ready"] else 503
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _StubServer:
    def __init__(self, token: str | None) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        self.httpd.state = {"token": token, "alive": True, "ready": True, "paths": []}  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> tuple[int, dict[str, Any]]:
        self.thread.start()
        return self.httpd.server_address[1], self.httpd.state  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _stub_server(token: str | None) -> _StubServer:
    return _StubServer(token)


def _run(command: list[str], **env: str) -> int:
    full_env = {**os.environ, **env}
    return subprocess.run(
        command, env=full_env, capture_output=True, timeout=30, cwd=REPO
    ).returncode
