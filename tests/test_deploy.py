"""deploy/ checked without a cluster, a Docker engine or the network.

- every YAML file parses; the Kubernetes objects validate (strictly: unknown fields fail)
  against the schemas kubernetes-validate ships, for the oldest and a recent Kubernetes we
  target; the pod templates inside the RayCluster validate the same way;
- the RayCluster has what KubeRay requires, and token auth, shared storage, resources and the
  GPU group are in place;
- the objects reference each other consistently (Secrets and keys, PVCs, Service selectors,
  the service's RAY_ADDRESS / DATABASE_URL / SYNCBN_PUBLIC_URL hosts and ports);
- the compose file's services, volumes, dependencies, environment and variables agree;
- the Dockerfile's base image, torch pin, layer order, user, health check and build context;
- the Ray, torch, Python and project versions everywhere agree with pyproject.toml;
- the health checks and the readiness probe run, against a local HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
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


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")], key=lambda path: str(path))


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


K8S_DOCS = [
    (path, doc)
    for path in sorted(K8S.glob("*.yaml"))
    for doc in _load_all(path)
    if doc.get("kind") != "Kustomization"
]


def _doc_id(item: tuple[Path, dict]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def _objects(kind: str) -> list[dict]:
    return [doc for _, doc in K8S_DOCS if doc["kind"] == kind]


def _one(kind: str) -> dict:
    objects = _objects(kind)
    assert len(objects) == 1, f"expected one {kind} in deploy/k8s, found {len(objects)}"
    return objects[0]


def _dockerfile_instructions() -> list[tuple[str, str]]:
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


def _substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), value)


def _dockerfile_args() -> dict[str, str]:
    """Every ARG's default, resolved (global ARGs feed later ones and the stage's re-declares)."""
    args: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            if default:
                args[name] = _substitute(default.strip().strip('"'), args)
            else:
                args.setdefault(name, "")
    return args


def _runs() -> list[tuple[int, str]]:
    return [(i, rest) for i, (kw, rest) in enumerate(_dockerfile_instructions()) if kw == "RUN"]


RAYCLUSTER = _one("RayCluster")
SERVICE_DEPLOYMENT = next(
    doc for doc in _objects("Deployment") if doc["metadata"]["name"] == "syncbn-service"
)
POSTGRES = _one("StatefulSet")
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
SERVICES: dict[str, dict] = COMPOSE["services"]


def _ray_groups() -> list[tuple[str, dict]]:
    """(name, group) for the head group and every worker group of the RayCluster."""
    spec = RAYCLUSTER["spec"]
    return [("head", spec["headGroupSpec"])] + [
        (f"worker-{group.get('groupName')}", group) for group in spec.get("workerGroupSpecs", [])
    ]


def _pod_specs() -> list[tuple[str, dict]]:
    """(id, pod spec) of every workload in deploy/k8s, the RayCluster's groups included."""
    specs = [
        (f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        for _, doc in K8S_DOCS
        if doc["kind"] in ("Deployment", "StatefulSet")
    ]
    specs += [(f"RayCluster/{name}", group["template"]["spec"]) for name, group in _ray_groups()]
    return specs


def _containers() -> list[tuple[str, dict]]:
    return [
        (f"{pod_id}/{container['name']}", container)
        for pod_id, spec in _pod_specs()
        for container in spec["containers"]
    ]


def _env(container: dict) -> dict[str, dict]:
    """name -> env entry (value or valueFrom) of a Kubernetes container."""
    return {entry["name"]: entry for entry in container.get("env", [])}


def _secret_keys() -> dict[str, set[str]]:
    return {
        doc["metadata"]["name"]: set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for doc in _objects("Secret")
    }


def _image_parts(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":")
    return (name, tag) if name and "/" not in tag else (image, "latest")


def _is_project_tag(tag: str) -> bool:
    """The project's version, or its CUDA build (``0.1.0-cu128``)."""
    return re.fullmatch(rf"{re.escape(PROJECT['version'])}(-cu\d+)?", tag) is not None


# --------------------------------------------------------------------------- YAML files


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_file_parses(path):
    docs = _load_all(path)
    assert docs, f"{_rel(path)} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{_rel(path)}: a document is a {type(doc).__name__}"


def test_the_secret_is_the_users_own_and_its_example_holds_no_token():
    """`kubectl apply -k` never applies placeholder secrets: the user creates the Secret, and
    the service refuses the example's values if they are copied."""
    from service.api.credentials import weakness

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    assert "secret.example.yaml" not in kustomization["resources"]
    assert weakness(example["stringData"]["api-token"]) is not None


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    manifests -= {path.name for path in K8S.glob("*.example.yaml")}  # shapes the user fills in
    assert set(listed) == manifests, (
        f"not listed: {sorted(manifests - set(listed))}; missing: {sorted(set(listed) - manifests)}"
    )


def test_every_k8s_object_has_a_dns_name_and_no_namespace_of_its_own():
    for path, doc in K8S_DOCS:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), f"{path.name}: {name!r}"
        # kustomization.yaml sets the namespace for all of them
        assert "namespace" not in doc["metadata"], f"{path.name}: {name} pins a namespace"


# --------------------------------------------------------------------------- schemas


CORE_DOCS = [item for item in K8S_DOCS if item[1]["kind"] not in CUSTOM_KINDS]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", CORE_DOCS, ids=_doc_id)
def test_kubernetes_object_is_valid(item, version):
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{_doc_id(item)} invalid for Kubernetes {version} at {where}: {exc.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,group", _ray_groups(), ids=[name for name, _ in _ray_groups()])
def test_raycluster_pod_template_is_valid(name, group, version):
    """KubeRay hands each group's template to Kubernetes as is: it must be a valid pod."""
    template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": f"raycluster-{name}"},
        "template": group["template"],
    }
    try:
        kubernetes_validate.validate(template, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"RayCluster {name} template, Kubernetes {version}, at {where}: {exc.message}")


# --------------------------------------------------------------------------- RayCluster


def _check_ray_start_params(params: Any, where: str) -> None:
    assert isinstance(params, dict), f"{where}: rayStartParams must be a mapping (may be {{}})"
    for key, value in params.items():
        # The CRD types them map[string]string: an unquoted number is rejected by the API.
        assert isinstance(value, str), f"{where}: rayStartParams.{key} must be a string"
        assert not key.startswith("-"), f"{where}: write {key.lstrip('-')!r}, without dashes"


def _check_template(template: Any, where: str) -> None:
    containers = (template or {}).get("spec", {}).get("containers")
    assert containers, f"{where}: template.spec.containers is required"
    for container in containers:
        assert container.get("name") and container.get("image"), f"{where}: name and image"


def test_raycluster_has_the_fields_kuberay_requires():
    assert RAYCLUSTER["apiVersion"] == "ray.io/v1"
    assert RAYCLUSTER["kind"] == "RayCluster"
    spec = RAYCLUSTER["spec"]
    assert isinstance(spec["rayVersion"], str)
    assert spec["rayVersion"] in RAY_SPEC, f"rayVersion {spec['rayVersion']} not ray{RAY_SPEC}"
    head = spec["headGroupSpec"]
    _check_ray_start_params(head.get("rayStartParams"), "headGroupSpec")
    _check_template(head.get("template"), "headGroupSpec")
    assert spec.get("workerGroupSpecs"), "no worker groups"
    names = [group.get("groupName") for group in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)), f"groupName must be unique: {names}"


@pytest.mark.parametrize(
    "group",
    RAYCLUSTER["spec"]["workerGroupSpecs"],
    ids=[group.get("groupName", "?") for group in RAYCLUSTER["spec"]["workerGroupSpecs"]],
)
def test_raycluster_worker_group(group):
    where = f"workerGroupSpecs[{group.get('groupName')}]"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", group.get("groupName") or ""), where
    counts = [group.get(key) for key in ("minReplicas", "replicas", "maxReplicas")]
    assert all(isinstance(count, int) for count in counts), f"{where}: integer replica counts"
    low, replicas, high = counts
    assert 0 <= low <= replicas <= high, f"{where}: need min <= replicas <= max, got {counts}"
    assert high >= 1, f"{where}: maxReplicas 0 can never run anything"
    _check_ray_start_params(group.get("rayStartParams"), where)
    _check_template(group.get("template"), where)


def test_raycluster_has_a_cpu_and_a_gpu_worker_group_scaling_from_zero():
    def gpus(group: dict) -> int:
        limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        return int(limits.get("nvidia.com/gpu", 0))

    groups = RAYCLUSTER["spec"]["workerGroupSpecs"]
    gpu_groups = [group for group in groups if gpus(group) > 0]
    cpu_groups = [group for group in groups if gpus(group) == 0]
    assert cpu_groups and gpu_groups, "want a CPU and a GPU worker group"
    for group in gpu_groups:
        assert group["minReplicas"] == 0, "GPU nodes are expensive: let the group scale to 0"
        image = group["template"]["spec"]["containers"][0]["image"]
        assert re.search(r"-cu\d+$", _image_parts(image)[1]), f"GPU group runs {image}"
    assert RAYCLUSTER["spec"].get("enableInTreeAutoscaling") is True, (
        "a group with minReplicas 0 only grows with the autoscaler"
    )


def test_ray_token_auth_on_every_ray_container_the_autoscaler_and_the_service():
    spec = RAYCLUSTER["spec"]
    envs = {
        f"RayCluster/{name}/{c['name']}": _env(c)
        for name, group in _ray_groups()
        for c in group["template"]["spec"]["containers"]
    }
    if spec.get("enableInTreeAutoscaling"):
        envs["autoscaler"] = {
            e["name"]: e for e in spec.get("autoscalerOptions", {}).get("env", [])
        }
    for container in SERVICE_DEPLOYMENT["spec"]["template"]["spec"]["containers"]:
        envs[f"Deployment/syncbn-service/{container['name']}"] = _env(container)
    refs = set()
    for where, env in envs.items():
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE"
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{where}: RAY_AUTH_TOKEN must come from a Secret"
        refs.add((ref["name"], ref["key"]))
    assert len(refs) == 1, f"every Ray node and the service need the same token: {refs}"


def test_raycluster_rayversion_matches_the_dockerfile_ray_version():
    assert RAYCLUSTER["spec"]["rayVersion"] == _dockerfile_args()["RAY_VERSION"]


# --------------------------------------------------------------------------- references


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_every_secret_reference_names_a_defined_secret_and_key():
    secrets = _secret_keys()
    refs = [
        (path.name, value)
        for path, doc in K8S_DOCS
        for key, value in _walk(doc)
        if key == "secretKeyRef"
    ]
    assert refs, "no secretKeyRef at all: where do the tokens come from?"
    for file, ref in refs:
        assert ref["name"] in secrets, f"{file}: no Secret {ref['name']!r}"
        assert ref["key"] in secrets[ref["name"]], (
            f"{file}: Secret {ref['name']} has no {ref['key']}"
        )


def test_shared_storage_is_one_readwritemany_claim_mounted_at_data_everywhere():
    claims = {doc["metadata"]["name"]: doc for doc in _objects("PersistentVolumeClaim")}
    mounted_claims = set()
    for pod_id, spec in _pod_specs():
        volumes = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in spec.get("volumes", [])
            if "persistentVolumeClaim" in volume
        }
        for claim in volumes.values():
            assert claim in claims, f"{pod_id}: no PersistentVolumeClaim {claim!r}"
        if pod_id.startswith("StatefulSet/"):
            continue  # PostgreSQL has its own volume
        data = [
            volumes.get(mount["name"])
            for container in spec["containers"]
            for mount in container.get("volumeMounts", [])
            if mount["mountPath"] == DATA_MOUNT
        ]
        assert data and all(data), f"{pod_id}: {DATA_MOUNT} must be mounted from a PVC"
        mounted_claims.update(data)
    assert len(mounted_claims) == 1, f"service and Ray nodes must share ONE claim: {mounted_claims}"
    (claim,) = mounted_claims
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"], "pods on many nodes mount it"


def test_ray_containers_have_shared_memory_for_the_object_store():
    for name, group in _ray_groups():
        spec = group["template"]["spec"]
        memory_volumes = {
            volume["name"]
            for volume in spec.get("volumes", [])
            if volume.get("emptyDir", {}).get("medium") == "Memory"
        }
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0].get("volumeMounts", [])}
        assert mounts.get("/dev/shm") in memory_volumes, f"{name}: /dev/shm from a Memory emptyDir"


@pytest.mark.parametrize("container_id,container", _containers(), ids=[c for c, _ in _containers()])
def test_container_has_cpu_and_memory_requests_and_limits(container_id, container):
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources.get(kind, {}), f"{container_id}: {kind}.{resource}"


def test_selectors_match_their_pods():
    workloads = {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for kind in ("Deployment", "StatefulSet")
        for doc in _objects(kind)
    }
    pod_labels = []
    for workload_id, doc in workloads.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{workload_id}: selector misses its pods"
        pod_labels.append(labels)
    for service in _objects("Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), (
            f"Service {service['metadata']['name']} selects no pods"
        )
    service_names = {service["metadata"]["name"] for service in _objects("Service")}
    assert POSTGRES["spec"]["serviceName"] in service_names


def _service_for(doc: dict) -> dict:
    labels = doc["spec"]["template"]["metadata"]["labels"]
    matches = [s for s in _objects("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert len(matches) == 1, f"{doc['metadata']['name']}: {len(matches)} Services select it"
    return matches[0]


def _service_port(service: dict, port: int) -> bool:
    return any(entry["port"] == port for entry in service["spec"]["ports"])


def test_service_env_points_at_the_ray_head_postgres_and_itself():
    container = SERVICE_DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    names = [entry["name"] for entry in container["env"]]
    values = {name: entry.get("value") for name, entry in env.items()}

    # KubeRay names the head's Service <cluster>-head-svc; the Jobs API is the dashboard port.
    ray = urlsplit(values["RAY_ADDRESS"])
    head_ports = {
        port["name"]: port["containerPort"]
        for port in RAYCLUSTER["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
            "ports"
        ]
    }
    assert ray.scheme == "http"
    assert ray.hostname == f"{RAYCLUSTER['metadata']['name']}-head-svc"
    assert ray.port == head_ports["dashboard"] == 8265

    db = urlsplit(values["DATABASE_URL"])
    postgres_env = {
        entry["name"]: entry.get("value")
        for entry in POSTGRES["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert db.scheme == "postgresql+psycopg"
    assert db.hostname == _service_for(POSTGRES)["metadata"]["name"]
    assert _service_port(_service_for(POSTGRES), db.port)
    assert db.username == postgres_env["POSTGRES_USER"]
    assert db.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    for variable in re.findall(r"\$\((\w+)\)", values["DATABASE_URL"]):
        # Kubernetes expands $(VAR) only from variables defined EARLIER in the list.
        assert variable in names[: names.index("DATABASE_URL")], f"$({variable}) undefined"
    password_ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    postgres_password = next(
        e
        for e in POSTGRES["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "POSTGRES_PASSWORD"
    )
    assert password_ref == postgres_password["valueFrom"]["secretKeyRef"]

    public = urlsplit(values["SYNCBN_PUBLIC_URL"])
    own_service = _service_for(SERVICE_DEPLOYMENT)
    assert public.hostname == own_service["metadata"]["name"]
    assert _service_port(own_service, public.port)
    assert values["SYNCBN_HOST"] == "0.0.0.0"
    container_ports = {port["containerPort"] for port in container["ports"]}
    assert int(values["PORT"]) in container_ports
    assert env["SYNCBN_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert values["SYNCBN_HOME"] == DATA_MOUNT


def test_service_probes_liveness_on_healthz_and_readiness_on_readyz_with_the_token():
    container = SERVICE_DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert liveness["port"] in port_names or liveness["port"] in port_names.values()
    readiness = container["readinessProbe"]
    command = " ".join(readiness["exec"]["command"])
    assert "/readyz" in command and "SYNCBN_API_TOKEN" in command and "Bearer" in command
    assert readiness["timeoutSeconds"] >= 2


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


# --------------------------------------------------------------------------- images, versions


def _all_images() -> list[tuple[str, str]]:
    images = [(cid, container["image"]) for cid, container in _containers()]
    images += [(f"compose:{name}", service["image"]) for name, service in SERVICES.items()]
    return images


def _expand_default(value: str) -> str:
    """``${VAR:-default}`` -> default (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", value)


def test_project_images_are_tagged_with_the_project_version():
    seen = []
    for where, image in _all_images():
        name, tag = _image_parts(_expand_default(image))
        if name.rpartition("/")[2] == IMAGE_NAME:
            assert _is_project_tag(tag), (
                f"{where}: {image} is not tagged {PROJECT['version']}[-cuXXX]"
            )
            seen.append(where)
    assert len(seen) >= 5, f"expected the head, workers and service to run {IMAGE_NAME}: {seen}"


def _ray_base_images() -> list[tuple[str, str]]:
    args = _dockerfile_args()
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
    assert match["ray"] == _dockerfile_args()["RAY_VERSION"]
    python = f"{match['py']}.{match['py_minor']}"
    assert f"{python}.0" in PYTHON_SPEC, (
        f"{where}: Python {python} vs requires-python {PYTHON_SPEC}"
    )
    assert match["variant"] == "cpu" or "GPU" in where or "gpu" in where, f"{where}: {image}"


def test_torch_pin_agrees_with_pyproject_and_the_makefile():
    torch = _dockerfile_args()["TORCH_VERSION"]
    assert torch in TORCH_SPEC, f"Dockerfile torch {torch} but pyproject wants torch{TORCH_SPEC}"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    pinned = re.search(r"torch==([\w.]+)", makefile)
    assert pinned and pinned[1] == torch, "the image must run the torch the Makefile installs"


def test_torch_index_default_is_the_cpu_wheel_index_and_gpu_builds_use_cuda_ones():
    assert _dockerfile_args()["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    gpu = SERVICES["ray-gpu-worker"]["build"]["args"]
    base = RAY_IMAGE_RE.match(_expand_default(gpu["BASE_IMAGE"]))
    assert base and base["variant"].startswith("cu")
    assert _expand_default(gpu["TORCH_INDEX"]).endswith(f"/whl/{base['variant']}")


# --------------------------------------------------------------------------- compose


def _compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def _ray_command(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _flag(command: list[str], name: str) -> str | None:
    for arg in command:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _ray_services() -> dict[str, dict]:
    return {n: s for n, s in SERVICES.items() if _ray_command(s)[:2] == ["ray", "start"]}


def _head_name() -> str:
    heads = [name for name, s in _ray_services().items() if "--head" in _ray_command(s)]
    assert len(heads) == 1, f"want exactly one Ray head service, found {heads}"
    return heads[0]


def test_compose_has_a_ray_head_workers_postgres_and_the_service():
    workers = [name for name, s in _ray_services().items() if "--head" not in _ray_command(s)]
    cpu_workers = [name for name in workers if "gpu" not in SERVICES[name].get("profiles", [])]
    replicas = sum(SERVICES[name].get("deploy", {}).get("replicas", 1) for name in cpu_workers)
    assert _head_name() and replicas >= 2, f"want two Ray workers, have {cpu_workers}"
    assert any(str(s.get("image", "")).startswith("postgres:") for s in SERVICES.values())
    assert SERVICES["service"].get("command", ["python", "-m", "service"]) == [
        "python",
        "-m",
        "service",
    ]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_compose_depends_on_names_defined_services(name):
    depends = SERVICES[name].get("depends_on", {})
    for target in depends:
        assert target in SERVICES, f"{name} depends on undefined service {target!r}"
        if isinstance(depends, dict):
            condition = depends[target].get("condition")
            assert condition in (
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            )
            if condition == "service_healthy":
                assert SERVICES[target].get("healthcheck"), (
                    f"{name} waits for {target} to be healthy, but it has no healthcheck"
                )


def test_compose_named_volumes_are_declared_and_used():
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith((".", "/", "~", "$")):
                continue  # a bind mount
            assert source in declared, f"{name} mounts undeclared volume {source!r}"
            used.add(source)
    assert declared == used, f"declared but unused: {sorted(declared - used)}"


def _mounts(service: dict) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_compose_ray_nodes_and_service_share_the_data_volume_and_token_auth():
    shared = {_mounts(service).get(DATA_MOUNT) for service in SERVICES.values()} - {None}
    assert len(shared) == 1, f"one volume at {DATA_MOUNT} for all: {shared}"
    tokens = set()
    for name in [*_ray_services(), "service"]:
        service = SERVICES[name]
        env = _compose_env(service)
        assert _mounts(service).get(DATA_MOUNT), f"{name}: {DATA_MOUNT} not mounted"
        assert env.get("SYNCBN_HOME") == DATA_MOUNT, f"{name}: SYNCBN_HOME"
        assert env.get("RAY_AUTH_MODE") == "token", f"{name}: RAY_AUTH_MODE"
        tokens.add(env.get("RAY_AUTH_TOKEN"))
    assert len(tokens) == 1 and None not in tokens, f"one Ray token for all: {tokens}"
    (token,) = tokens
    assert re.fullmatch(r"\$\{RAY_AUTH_TOKEN:\?[^}]+\}", token), "no default token: require one"


@pytest.mark.parametrize("name", sorted(_ray_services()))
def test_compose_ray_node(name):
    service = SERVICES[name]
    command = _ray_command(service)
    assert "--block" in command, f"{name}: `ray start` must block to keep the container up"
    assert service.get("shm_size"), f"{name}: shm_size for Ray's object store"
    # The image's own HEALTHCHECK polls the service's /healthz, which a Ray node doesn't serve.
    probe = " ".join(service.get("healthcheck", {}).get("test", []))
    assert "healthz" in probe and ":8000/" not in probe, f"{name}: a Ray health check of its own"
    head = SERVICES[_head_name()]
    if name != _head_name():
        address = _flag(command, "--address")
        assert address, f"{name}: --address of the head"
        host, _, port = address.partition(":")
        assert host == _head_name() and port == _flag(_ray_command(head), "--port")
        assert _head_name() in service.get("depends_on", {})
    else:
        assert _flag(command, "--dashboard-host") == "0.0.0.0"


def test_compose_service_env_points_at_the_head_postgres_and_itself():
    service = SERVICES["service"]
    env = _compose_env(service)
    head = _ray_command(SERVICES[_head_name()])
    ray = urlsplit(env["RAY_ADDRESS"])
    assert ray.scheme == "http" and ray.hostname == _head_name()
    assert str(ray.port) == _flag(head, "--dashboard-port")

    postgres_name = next(
        n for n, s in SERVICES.items() if str(s.get("image")).startswith("postgres")
    )
    postgres_env = _compose_env(SERVICES[postgres_name])
    db = urlsplit(env["DATABASE_URL"])
    assert db.scheme == "postgresql+psycopg"
    assert db.hostname == postgres_name and db.port == 5432
    assert db.username == postgres_env["POSTGRES_USER"]
    assert db.path.lstrip("/") == postgres_env["POSTGRES_DB"]
    password_var = re.match(r"\$\{(\w+)", postgres_env["POSTGRES_PASSWORD"])
    assert password_var and db.password == f"${{{password_var[1]}}}"

    public = urlsplit(env["SYNCBN_PUBLIC_URL"])
    assert public.hostname == "service" and str(public.port) == env["PORT"]
    assert env["SYNCBN_HOST"] == "0.0.0.0"
    assert re.fullmatch(r"\$\{SYNCBN_API_TOKEN:\?[^}]+\}", env["SYNCBN_API_TOKEN"])
    assert {"postgres", _head_name()} <= set(service["depends_on"])
    for target in ("postgres", _head_name()):
        assert service["depends_on"][target]["condition"] == "service_healthy"


def test_compose_builds_deploy_dockerfile_from_the_repository_root():
    for name, service in SERVICES.items():
        build = service.get("build")
        if not build:
            continue
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO, f"{name}: build context {context}"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_variables_are_all_documented_in_env_example():
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    text = "\n".join(
        line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    used = set(re.findall(r"\$\{(\w+)", text))
    documented = {
        line.partition("=")[0]
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"
    assert documented <= used, f"documented but unused: {sorted(documented - used)}"
    assert "RAY_AUTH_TOKEN" in used and "POSTGRES_PASSWORD" in used


def test_local_secrets_are_git_ignored():
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_from_is_the_pinned_ray_image():
    froms = [rest for keyword, rest in _dockerfile_instructions() if keyword == "FROM"]
    assert len(froms) == 1, "one stage"
    image = _substitute(froms[0], _dockerfile_args())
    match = RAY_IMAGE_RE.match(image)
    assert match and match["variant"] == "cpu", f"FROM {image}"
    assert match["ray"] in RAY_SPEC


def test_dockerfile_installs_pinned_torch_before_the_project():
    args = _dockerfile_args()
    runs = [(i, _substitute(cmd, args)) for i, cmd in _runs()]
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
    instructions = _dockerfile_instructions()
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
        for i, cmd in _runs()
        if "pip install" in cmd and "--no-deps" not in cmd and "torch==" not in cmd
    ]
    assert install_deps and sources["pyproject.toml"] < install_deps[0] < min(
        sources[p] for p in packages
    ), "install the dependencies between COPY pyproject.toml and COPY of the packages"


def test_dockerfile_runs_as_a_non_root_user():
    users = [rest for keyword, rest in _dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_has_a_healthcheck_on_healthz_and_runs_the_service():
    instructions = dict(_dockerfile_instructions())
    assert "/healthz" in instructions["HEALTHCHECK"]
    assert json.loads(instructions["CMD"]) == ["python", "-m", "service"]
    env = _substitute(instructions["ENV"], {})
    assert f"SYNCBN_HOME={DATA_MOUNT}" in env and "SYNCBN_HOST=0.0.0.0" in env


def test_dockerfile_healthcheck_command_passes_when_healthz_answers():
    instructions = dict(_dockerfile_instructions())
    exec_form = json.loads(instructions["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert exec_form[0] == "python"
    with _stub_server(token=None) as (port, state):
        assert _run([sys.executable, *exec_form[1:]], PORT=str(port)) == 0
        assert state["paths"] == ["/healthz"]
        state["alive"] = False
        assert _run([sys.executable, *exec_form[1:]], PORT=str(port)) != 0


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
