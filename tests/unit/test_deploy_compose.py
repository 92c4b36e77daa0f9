"""deploy/docker-compose.yml checked without a Docker engine: its services (a Ray head, workers,
PostgreSQL and the service), volumes, dependencies, environment and variables agree with each
other, with the Dockerfile and with .env.example. The loading is in ``deploykit.py``.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit

import pytest
from deploykit import (
    COMPOSE,
    COMPOSE_FILE,
    DATA_MOUNT,
    DEPLOY,
    DOCKERFILE,
    ENV_EXAMPLE,
    REPO,
    SERVICES,
)


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
