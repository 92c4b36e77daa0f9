"""deploy/Dockerfile checked without a Docker engine: its base image, torch pin, layer order,
user, health check and command, and what its build context (``Dockerfile.dockerignore``)
sends. The parsing is in ``deploykit.py``; the health check command runs in
``test_deploy_versions.py``.
"""

from __future__ import annotations

import fnmatch
import json
import re

from deploykit import (
    DATA_MOUNT,
    DOCKERIGNORE,
    PYPROJECT,
    RAY_IMAGE_RE,
    RAY_SPEC,
    dockerfile_args,
    dockerfile_instructions,
    dockerfile_runs,
    substitute,
)


def test_dockerfile_from_is_the_pinned_ray_image():
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1, "one stage"
    image = substitute(froms[0], dockerfile_args())
    match = RAY_IMAGE_RE.match(image)
    assert match and match["variant"] == "cpu", f"FROM {image}"
    assert match["ray"] in RAY_SPEC


def test_dockerfile_installs_pinned_torch_before_the_project():
    args = dockerfile_args()
    runs = [(i, substitute(cmd, args)) for i, cmd in dockerfile_runs()]
    torch_runs = [
        i for i, cmd in runs if f"torch=={args['TORCH_VERSION']}" in cmd and "pip install" in cmd
    ]
    assert torch_runs, "no `pip install torch==<pinned>`"
    torch_run = next(cmd for i, cmd in runs if i == torch_runs[0])
    assert f"--index-url {args['TORCH_INDEX']}" in torch_run.replace('"', "")
    project_runs = [
        i for i, cmd in runs if re.search(r"pip install [^&]*(\s|\")\.(\[|\s|\"|$)", cmd)
    ]
    assert project_runs, "no `pip install .`"
    assert torch_runs[0] < min(project_runs), "torch must be installed before the project"


def test_dockerfile_copies_only_what_it_needs_with_dependencies_cached_apart():
    instructions = dockerfile_instructions()
    copies = [(i, rest.split()) for i, (kw, rest) in enumerate(instructions) if kw == "COPY"]
    sources = {}
    for i, parts in copies:
        parts = [p for p in parts if not p.startswith("--")]
        for source in parts[:-1]:
            sources[source.rstrip("/")] = i
    assert "." not in sources, "COPY . copies the whole context: copy pyproject and packages"
    packages = [
        pattern.rstrip("*")
        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    for package in ["pyproject.toml", *packages]:
        assert package in sources, f"the image does not copy {package}"
    # The dependency layer depends on pyproject.toml alone: it comes before any package source.
    assert all(sources["pyproject.toml"] < sources[package] for package in packages)
    install_deps = [
        i
        for i, cmd in dockerfile_runs()
        if "pip install" in cmd and "--no-deps" not in cmd and "torch==" not in cmd
    ]
    assert install_deps and sources["pyproject.toml"] < install_deps[0] < min(
        sources[p] for p in packages
    ), "install the dependencies between COPY pyproject.toml and COPY of the packages"


def test_dockerfile_runs_as_a_non_root_user():
    users = [rest for keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_has_a_healthcheck_on_healthz_and_runs_the_service():
    instructions = dict(dockerfile_instructions())
    assert "/healthz" in instructions["HEALTHCHECK"]
    assert json.loads(instructions["CMD"]) == ["python", "-m", "service"]
    env = substitute(instructions["ENV"], {})
    assert f"SYNCBN_HOME={DATA_MOUNT}" in env and "SYNCBN_HOST=0.0.0.0" in env


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, simplified: the last pattern matching the path or one of
    its parent directories decides; ``!`` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_the_sources_and_keeps_venv_and_secrets_out():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = [
        "pyproject.toml",
        "README.md",
        "syncbn/__init__.py",
        "workers/loop.py",
        "service/__init__.py",
    ]
    for path in needed:
        assert not _ignored(path, patterns), f"{path} is needed by the build but ignored"
    for path in [
        ".venv/bin/python",
        ".syncbn/runs/x",
        "deploy/.env",
        ".git/HEAD",
        "syncbn/__pycache__/x.pyc",
    ]:
        assert _ignored(path, patterns), f"{path} would be sent to the Docker daemon"
