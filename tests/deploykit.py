"""deploy/ loaded once for its tests (``tests/unit/test_deploy_*.py``): the paths, the versions
pyproject.toml asks for, every YAML document, the Kubernetes objects by kind, the compose
services, and the Dockerfile's instructions and ARG defaults. Nothing here needs a cluster, a
Docker engine or the network.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S_VERSIONS = ("1.29.0", "1.33.0")
"""Oldest and a recent Kubernetes the manifests target (kubernetes-validate ships both)."""
DATA_MOUNT = "/data"
IMAGE_NAME = "syncbn-service"
CUSTOM_KINDS = {"RayCluster", "Kustomization"}

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
REQUIREMENTS = {Requirement(dep).name: Requirement(dep) for dep in PROJECT["dependencies"]}
RAY_SPEC: SpecifierSet = REQUIREMENTS["ray"].specifier
TORCH_SPEC: SpecifierSet = REQUIREMENTS["torch"].specifier
PYTHON_SPEC = SpecifierSet(PROJECT["requires-python"])
RAY_IMAGE_RE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<py_minor>\d+)-(?P<variant>cpu|cu\d+)$"
)


# --------------------------------------------------------------------------- loading


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")], key=lambda path: str(path))


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


K8S_DOCS = [
    (path, doc)
    for path in sorted(K8S.glob("*.yaml"))
    for doc in load_all(path)
    if doc.get("kind") != "Kustomization"
]


def doc_id(item: tuple[Path, dict]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def objects_of(kind: str) -> list[dict]:
    return [doc for _, doc in K8S_DOCS if doc["kind"] == kind]


def one_of(kind: str) -> dict:
    objects = objects_of(kind)
    assert len(objects) == 1, f"expected one {kind} in deploy/k8s, found {len(objects)}"
    return objects[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    instructions, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    return instructions


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def dockerfile_args() -> dict[str, str]:
    """Every ARG's default, resolved (global ARGs feed later ones and the stage's re-declares)."""
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if default:
                args[name] = substitute(default.strip().strip('"'), args)
            else:
                args.setdefault(name, "")
    return args


def dockerfile_runs() -> list[tuple[int, str]]:
    return [(i, rest) for i, (kw, rest) in enumerate(dockerfile_instructions()) if kw == "RUN"]


RAYCLUSTER = one_of("RayCluster")
SERVICE_DEPLOYMENT = next(
    doc for doc in objects_of("Deployment") if doc["metadata"]["name"] == "syncbn-service"
)
POSTGRES = one_of("StatefulSet")
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
SERVICES: dict[str, dict] = COMPOSE["services"]


def ray_groups() -> list[tuple[str, dict]]:
    """(name, group) for the head group and every worker group of the RayCluster."""
    spec = RAYCLUSTER["spec"]
    return [("head", spec["headGroupSpec"])] + [
        (f"worker-{group.get('groupName')}", group) for group in spec.get("workerGroupSpecs", [])
    ]


def pod_specs() -> list[tuple[str, dict]]:
    """(id, pod spec) of every workload in deploy/k8s, the RayCluster's groups included."""
    specs = [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        for _, doc in K8S_DOCS
        if doc["kind"] in ("Deployment", "StatefulSet")
    ]
    specs += [(f"RayCluster/{name}", group["template"]["spec"]) for name, group in ray_groups()]
    return specs


def all_containers() -> list[tuple[str, dict]]:
    return [
        (f"{pod_id}/{container['name']}", container)
        for pod_id, spec in pod_specs()
        for container in spec["containers"]
    ]


def container_env(container: dict) -> dict[str, dict]:
    """name -> env entry (value or valueFrom) of a Kubernetes container."""
    return {entry["name"]: entry for entry in container.get("env", [])}


def image_parts(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "latest")
