"""deploy/k8s checked without a cluster or the network.

- every YAML file of deploy/ parses; the Kubernetes objects validate (strictly: unknown fields
  fail) against the schemas kubernetes-validate ships, for the oldest and a recent Kubernetes
  we target; the pod templates inside the RayCluster validate the same way;
- the RayCluster has what KubeRay requires, and token auth, shared storage, resources and the
  GPU group are in place;
- the objects reference each other consistently (Secrets and keys, PVCs, Service selectors,
  the service's RAY_ADDRESS / DATABASE_URL / SYNCBN_PUBLIC_URL hosts and ports, its probes).

The loading is in ``deploykit.py``; the health checks that run are in
``test_deploy_versions.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from deploykit import (
    CUSTOM_KINDS,
    DATA_MOUNT,
    K8S,
    K8S_DOCS,
    K8S_VERSIONS,
    POSTGRES,
    RAY_SPEC,
    RAYCLUSTER,
    SERVICE_DEPLOYMENT,
    YAML_FILES,
    all_containers,
    container_env,
    doc_id,
    dockerfile_args,
    image_parts,
    load_all,
    objects_of,
    pod_specs,
    ray_groups,
    rel,
)


def _secret_keys() -> dict[str, set[str]]:
    return {
        doc["metadata"]["name"]: set(doc.get("stringData", {})) | set(doc.get("data", {}))
        for doc in objects_of("Secret")
    }


# --------------------------------------------------------------------------- YAML files


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_file_parses(path):
    docs = load_all(path)
    assert docs, f"{rel(path)} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{rel(path)}: a document is a {type(doc).__name__}"


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
@pytest.mark.parametrize("item", CORE_DOCS, ids=doc_id)
def test_kubernetes_object_is_valid(item, version):
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{doc_id(item)} invalid for Kubernetes {version} at {where}: {exc.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name,group", ray_groups(), ids=[name for name, _ in ray_groups()])
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
        assert re.search(r"-cu\d+$", image_parts(image)[1]), f"GPU group runs {image}"
    assert RAYCLUSTER["spec"].get("enableInTreeAutoscaling") is True, (
        "a group with minReplicas 0 only grows with the autoscaler"
    )


def test_ray_token_auth_on_every_ray_container_the_autoscaler_and_the_service():
    spec = RAYCLUSTER["spec"]
    envs = {
        f"RayCluster/{name}/{c['name']}": container_env(c)
        for name, group in ray_groups()
        for c in group["template"]["spec"]["containers"]
    }
    if spec.get("enableInTreeAutoscaling"):
        envs["autoscaler"] = {
            e["name"]: e for e in spec.get("autoscalerOptions", {}).get("env", [])
        }
    for container in SERVICE_DEPLOYMENT["spec"]["template"]["spec"]["containers"]:
        envs[f"Deployment/syncbn-service/{container['name']}"] = container_env(container)
    refs = set()
    for where, env in envs.items():
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE"
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{where}: RAY_AUTH_TOKEN must come from a Secret"
        refs.add((ref["name"], ref["key"]))
    assert len(refs) == 1, f"every Ray node and the service need the same token: {refs}"


def test_raycluster_rayversion_matches_the_dockerfile_ray_version():
    assert RAYCLUSTER["spec"]["rayVersion"] == dockerfile_args()["RAY_VERSION"]


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
    claims = {doc["metadata"]["name"]: doc for doc in objects_of("PersistentVolumeClaim")}
    mounted_claims = set()
    for pod_id, spec in pod_specs():
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
    for name, group in ray_groups():
        spec = group["template"]["spec"]
        memory_volumes = {
            volume["name"]
            for volume in spec.get("volumes", [])
            if volume.get("emptyDir", {}).get("medium") == "Memory"
        }
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0].get("volumeMounts", [])}
        assert mounts.get("/dev/shm") in memory_volumes, f"{name}: /dev/shm from a Memory emptyDir"


@pytest.mark.parametrize(
    "container_id,container", all_containers(), ids=[c for c, _ in all_containers()]
)
def test_container_has_cpu_and_memory_requests_and_limits(container_id, container):
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources.get(kind, {}), f"{container_id}: {kind}.{resource}"


def test_selectors_match_their_pods():
    workloads = {
        f"{doc['kind']}/{doc['metadata']['name']}": doc
        for kind in ("Deployment", "StatefulSet")
        for doc in objects_of(kind)
    }
    pod_labels = []
    for workload_id, doc in workloads.items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{workload_id}: selector misses its pods"
        pod_labels.append(labels)
    for service in objects_of("Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), (
            f"Service {service['metadata']['name']} selects no pods"
        )
    service_names = {service["metadata"]["name"] for service in objects_of("Service")}
    assert POSTGRES["spec"]["serviceName"] in service_names


def _service_for(doc: dict) -> dict:
    labels = doc["spec"]["template"]["metadata"]["labels"]
    matches = [s for s in objects_of("Service") if s["spec"]["selector"].items() <= labels.items()]
    assert len(matches) == 1, f"{doc['metadata']['name']}: {len(matches)} Services select it"
    return matches[0]


def _service_port(service: dict, port: int) -> bool:
    return any(entry["port"] == port for entry in service["spec"]["ports"])


def test_service_env_points_at_the_ray_head_postgres_and_itself():
    container = SERVICE_DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]
    env = container_env(container)
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
