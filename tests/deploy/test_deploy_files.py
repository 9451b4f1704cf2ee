"""The Dockerfile, compose.yaml and the Kubernetes manifests, checked by parsing them.

`make compose-test` builds and runs them for real (docs/deployment.md); these tests are the fast
half, needing no container engine, that hold the files to what an operator relies on: the image
runs as non-root and can migrate, `docker compose up` starts in the right order with matching
credentials, and every variable the manifests set is one taskapi reads (a misspelt name would be
silently ignored, leaving a default in production).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from taskapi import cli
from taskapi.kit.config import Settings, resolve_secret_key
from tests.conftest import ROOT, database_url
from tests.deploy.test_cli_and_socket import (
    _plain_dsn,
    cli_env,
    database_exists,
    dropped_afterwards,
    free_port,
    run_cli,
)

ROOT_PATH = Path(ROOT)
DOCKERFILE = ROOT_PATH / "Dockerfile"
COMPOSE = ROOT_PATH / "compose.yaml"
K8S_DIR = ROOT_PATH / "deploy" / "k8s"
SECRET_EXAMPLE = ROOT_PATH / "deploy" / "secret.example.yaml"
HADOLINT = ROOT_PATH / ".venv" / "bin" / "hadolint"

# Names read by something other than Settings: the S3 client (AWS_*) and Python/Prometheus.
NON_SETTINGS_VARIABLES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "PYTHONUNBUFFERED",
        "PROMETHEUS_MULTIPROC_DIR",
    }
)
KNOWN_VARIABLES = frozenset(name.upper() for name in Settings.model_fields) | NON_SETTINGS_VARIABLES

APP_SERVICES = ("migrate", "api", "worker")
UVICORN_GRACEFUL_SECONDS = 30


# --- parsing helpers -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def args_of(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for key, rest in stage if key == keyword]


def final_stage_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in args_of(dockerfile_stages()[-1], "ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def image_user() -> str:
    users = args_of(dockerfile_stages()[-1], "USER")
    assert users, "the final stage sets no USER: the container would run as root"
    return users[-1]


def healthcheck_command() -> list[str]:
    (rest,) = args_of(dockerfile_stages()[-1], "HEALTHCHECK")
    options, _, command = rest.partition("CMD ")
    assert "--interval" in options
    parsed: list[str] = json.loads(command)
    return parsed


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def service_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {name: str(value) for name, value in environment.items()}


def compose_default(value: str) -> str:
    """The value `${NAME:-default}` takes when NAME is not exported."""
    if value.startswith("${") and ":-" in value:
        return value[value.index(":-") + 2 : -1]
    return value


def k8s_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def k8s_one(kind: str, name: str) -> dict[str, Any]:
    matches = [
        doc for doc in k8s_documents() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(matches) == 1, f"expected exactly one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(workload)["containers"]
    return container  # type: ignore[no-any-return]


def container_command(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def secret_example() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SECRET_EXAMPLE.read_text())
    return loaded


def api_deployment() -> dict[str, Any]:
    return k8s_one("Deployment", "taskapi-api")


def api_pod_labels() -> dict[str, str]:
    labels: dict[str, str] = api_deployment()["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_builds_in_two_stages_on_python_3_11_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        (base,) = args_of(stage, "FROM")
        assert base.split()[0] == "python:3.11-slim"


def test_builder_installs_the_runtime_lock_then_the_package_without_dependencies() -> None:
    runs = " ".join(args_of(dockerfile_stages()[0], "RUN"))
    assert "--requirement requirements.lock" in runs or "-r requirements.lock" in runs
    assert "requirements-dev.lock" not in DOCKERFILE.read_text()
    assert "pip install --no-cache-dir --no-deps ." in runs


def test_final_stage_copies_only_the_virtualenv_from_the_builder() -> None:
    copies = args_of(dockerfile_stages()[-1], "COPY")
    from_builder = [rest for rest in copies if rest.startswith("--from=")]
    assert from_builder == ["--from=builder /opt/venv /opt/venv"]
    assert final_stage_env()["PATH"].startswith("/opt/venv/bin:")


def test_final_stage_has_no_compilers_or_package_installs() -> None:
    final = " ".join(rest for _, rest in dockerfile_stages()[-1]).lower()
    for tool in ("gcc", "build-essential", "apt-get", "apk ", "make ", "pip install"):
        assert tool not in final, f"{tool!r} in the runtime stage"


def test_image_runs_as_a_numeric_non_root_user() -> None:
    uid, _, gid = image_user().partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without the image's passwd file.
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_image_ships_the_migrations_where_alembic_config_points() -> None:
    final = dockerfile_stages()[-1]
    (workdir,) = args_of(final, "WORKDIR")
    copied: dict[str, str] = {}
    for rest in args_of(final, "COPY"):
        if rest.startswith("--from="):
            continue
        source, destination = rest.split()
        target = PurePosixPath(workdir, destination)
        if destination.endswith("/"):  # into a directory: keeps the source's name
            target = target / PurePosixPath(source).name
        copied[os.path.normpath(target.as_posix())] = source
    ini = PurePosixPath(final_stage_env()["ALEMBIC_CONFIG"])
    assert copied[ini.as_posix()] == "alembic.ini"
    assert copied[(ini.parent / "migrations").as_posix()] == "migrations"


def test_image_environment_serves_production_on_all_interfaces() -> None:
    env = final_stage_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["ENVIRONMENT"] == "production"
    assert env["HOST"] == "0.0.0.0"  # noqa: S104  (in a container, that is the point)
    assert env["PORT"] == "8000"
    final = dockerfile_stages()[-1]
    assert args_of(final, "EXPOSE") == ["8000"]
    assert [json.loads(rest) for rest in args_of(final, "CMD")] == [["taskapi", "serve"]]
    own = {"PATH", "PYTHONDONTWRITEBYTECODE"}
    assert set(env) - own <= KNOWN_VARIABLES


class _Health(BaseHTTPRequestHandler):
    paths: list[str] = []  # noqa: RUF012  (shared on purpose: the test reads what was asked)

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(200 if self.path == "/ops/health" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[int]:
    _Health.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    program, *args = healthcheck_command()
    assert program == "python", "the slim image has no curl: the check must use python"
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run(  # noqa: S603  (our own Dockerfile's command)
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_asks_ops_health_on_port(health_server: int) -> None:
    result = run_healthcheck(health_server)
    assert result.returncode == 0, result.stderr
    assert _Health.paths == ["/ops/health"]


def test_healthcheck_fails_when_nothing_answers() -> None:
    assert run_healthcheck(free_port()).returncode != 0


# The project's image, and the offline stand-ins for its base images (deploy/offline-images).
LINTED_DOCKERFILES = [
    "Dockerfile",
    *sorted(
        path.relative_to(ROOT_PATH).as_posix()
        for path in (ROOT_PATH / "deploy" / "offline-images").glob("*/Dockerfile")
    ),
]


@pytest.mark.parametrize("dockerfile", LINTED_DOCKERFILES)
def test_hadolint_finds_nothing_to_report(dockerfile: str) -> None:
    result = subprocess.run(  # noqa: S603  (the linter from the dev lock on our Dockerfiles)
        [str(HADOLINT), dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerignore_keeps_local_state_out_and_the_sources_in() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT_PATH / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "var", "reports", ".pytest_cache", ".env"} <= patterns
    needed = {"requirements.lock", "pyproject.toml", "README.md", "src", "alembic.ini"}
    assert not needed & patterns
    assert "migrations" not in patterns


# --- compose.yaml --------------------------------------------------------------------------------


def test_every_compose_service_has_an_image_or_a_build() -> None:
    for name, service in compose_services().items():
        assert "image" in service or "build" in service, name


def test_app_services_share_one_image_built_from_this_repository() -> None:
    services = compose_services()
    assert {services[name]["build"] for name in APP_SERVICES} == {"."}
    assert len({services[name]["image"] for name in APP_SERVICES}) == 1
    for name in APP_SERVICES:
        # The image's non-root user must not be overridden.
        assert services[name].get("user") in (None, image_user())


@pytest.mark.parametrize("name", ["postgres", "redis", "minio", "api"])
def test_long_running_services_have_healthchecks(name: str) -> None:
    healthcheck = compose_services()[name]["healthcheck"]
    assert not healthcheck.get("disable")
    assert healthcheck["test"][0] in ("CMD", "CMD-SHELL")


def test_api_healthcheck_asks_ops_health() -> None:
    assert any("/ops/health" in part for part in compose_services()["api"]["healthcheck"]["test"])


def test_services_without_http_do_not_inherit_the_image_healthcheck() -> None:
    # The worker serves no HTTP: the image's check would mark it unhealthy forever.
    for name in ("migrate", "worker"):
        assert compose_services()[name]["healthcheck"] == {"disable": True}


def test_depends_on_waits_for_health_or_completion() -> None:
    services = compose_services()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for target, rule in depends_on.items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "test" in services[target]["healthcheck"], f"{name} -> {target}"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}"
                assert services[target]["restart"] == "no", f"{target} must be one-shot"


def test_startup_order_migrates_before_the_api_and_the_worker() -> None:
    services = compose_services()
    assert services["migrate"]["command"] == ["taskapi", "migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully"
        assert depends_on["minio-init"]["condition"] == "service_completed_successfully"
        assert depends_on["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["worker"]["command"] == ["taskapi", "worker"]


def test_the_proxy_is_the_one_published_address_of_the_api_replicas() -> None:
    services = compose_services()
    api, proxy = services["api"], services["proxy"]
    # Replicas publish nothing (`--scale api=3` would fight over one host port); they expose 8000.
    assert "ports" not in api
    assert api["expose"] == ["8000"]
    published = proxy["ports"][0]
    host, _, container_port = published.rpartition(":")
    assert compose_default(host.partition(":")[2]) == "8000"
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    (mount,) = proxy["volumes"]
    source, target, mode = mount.split(":")
    assert mode == "ro"
    config = (ROOT_PATH / source).read_text()
    assert target == "/usr/local/etc/haproxy/haproxy.cfg"
    assert f"bind :{container_port}" in config
    # Every replica, found by the service's DNS name, on the port the image listens on.
    assert f"api:{final_stage_env()['PORT']}" in config
    assert "option httpchk GET /ops/health" in config


def test_postgres_has_room_for_the_scaled_api_and_the_worker() -> None:
    # make scale-test runs three API replicas; at the settings' default pool sizes they ran
    # PostgreSQL out of connections ("too many clients already", answered 503).
    services = compose_services()
    command = services["postgres"]["command"]
    options = dict(command[i + 1].split("=") for i, arg in enumerate(command) if arg == "-c")
    reserved = 3  # superuser_reserved_connections' default
    api = service_env(services["api"])
    per_replica = int(api["WEB_CONCURRENCY"]) * (
        int(api["DATABASE_POOL_SIZE"]) + int(api["DATABASE_MAX_OVERFLOW"])
    )
    worker = service_env(services["worker"])
    per_worker = int(worker["DATABASE_POOL_SIZE"]) + int(worker["DATABASE_MAX_OVERFLOW"])
    assert 3 * per_replica + per_worker <= int(options["max_connections"]) - reserved


def test_published_ports_listen_on_loopback_only() -> None:
    # Development credentials: nothing of this stack may be reachable from the network.
    for name, service in compose_services().items():
        for published in service.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name}: {published}"


def test_the_api_trusts_forwarded_for_only_from_private_networks_and_the_proxy_sets_it() -> None:
    trusted = service_env(compose_services()["api"])["TRUSTED_PROXIES"].split(",")
    assert all(ipaddress.ip_network(network).is_private for network in trusted)
    config = (ROOT_PATH / "deploy" / "compose" / "haproxy.cfg").read_text()
    # Replaced, never appended: a client cannot choose the address its login limit is counted on.
    assert "http-request set-header X-Forwarded-For %[src]" in config
    assert "option forwardfor" not in config


def test_app_service_variables_are_settings_taskapi_reads() -> None:
    for name in APP_SERVICES:
        unknown = set(service_env(compose_services()[name])) - KNOWN_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)} are not taskapi settings"


def test_api_runs_two_processes_with_separate_workers_on_s3() -> None:
    env = service_env(compose_services()["api"])
    assert env["WEB_CONCURRENCY"] == "2"
    assert env["WORKER_EMBEDDED"] == "false"
    assert env["STORAGE_BACKEND"] == "s3"
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    for name in ("S3_BUCKET", "S3_REGION", "REDIS_URL", "DATABASE_URL", "SECRET_KEY"):
        assert env[name], name


def test_database_url_matches_the_postgres_service() -> None:
    services = compose_services()
    postgres = service_env(services["postgres"])
    for name in APP_SERVICES:
        url = make_url(service_env(services[name])["DATABASE_URL"])
        assert url.drivername == "postgresql+asyncpg"
        assert (url.username, url.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert (url.host, url.port, url.database) == ("postgres", 5432, postgres["POSTGRES_DB"])
        assert urlsplit(service_env(services[name])["REDIS_URL"]).hostname == "redis"


def test_s3_credentials_and_bucket_match_minio() -> None:
    services = compose_services()
    minio = service_env(services["minio"])
    init_script = " ".join(services["minio-init"]["entrypoint"])
    for name in ("api", "worker"):
        env = service_env(services[name])
        assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
        assert f"mc mb --ignore-existing local/{env['S3_BUCKET']}" in init_script
    assert f"{minio['MINIO_ROOT_USER']} {minio['MINIO_ROOT_PASSWORD']}" in init_script


def test_compose_secret_key_default_is_marked_and_starts_in_production() -> None:
    raw = service_env(compose_services()["api"])["SECRET_KEY"]
    assert raw.startswith("${SECRET_KEY"), "the key must be overridable from the environment"
    if ":?" in raw:
        return  # required: compose itself refuses to start without it
    default = compose_default(raw)
    assert "INSECURE" in default
    assert "dev" in default.lower()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, environment="production", secret_key=SecretStr(default)
    )
    # Production refuses weak keys at start-up; the default must pass, or `compose up` fails.
    assert resolve_secret_key(settings).signing_key == default


def test_api_stop_grace_outlasts_uvicorn_graceful_shutdown() -> None:
    grace = compose_services()["api"]["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > UVICORN_GRACEFUL_SECONDS


def test_compose_declares_the_named_volumes_it_mounts() -> None:
    declared = set(compose()["volumes"])
    for name in ("postgres", "minio"):
        volume = compose_services()[name]["volumes"][0].split(":")[0]
        assert volume in declared


# --- Kubernetes ----------------------------------------------------------------------------------


def test_every_manifest_names_its_api_kind_and_name() -> None:
    documents = [*k8s_documents(), secret_example()]
    assert len(documents) >= 7
    for document in documents:
        assert document["apiVersion"], document
        assert document["kind"], document
        assert document["metadata"]["name"], document


def test_the_secret_is_only_an_example_outside_the_applied_directory() -> None:
    assert not [doc for doc in k8s_documents() if doc["kind"] == "Secret"]
    example = secret_example()
    assert example["kind"] == "Secret"
    for key, value in example["stringData"].items():
        assert value.count("<") >= 1, f"{key} looks like a real value, not a placeholder"
    assert {"SECRET_KEY", "DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(
        example["stringData"]
    )


def test_api_deployment_probes_the_ops_endpoints_on_its_port() -> None:
    container = only_container(api_deployment())
    (port,) = container["ports"]
    assert port["containerPort"] == 8000
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/ops/ready"
    assert liveness["path"] == "/ops/health"
    assert readiness["port"] in (port["name"], 8000)
    assert liveness["port"] in (port["name"], 8000)


def test_api_deployment_has_replicas_resources_and_runs_the_server() -> None:
    deployment = api_deployment()
    assert deployment["spec"]["replicas"] >= 2
    container = only_container(deployment)
    assert container_command(container) == ["taskapi", "serve"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][section]), section


@pytest.mark.parametrize(
    ("kind", "name"),
    [("Deployment", "taskapi-api"), ("Deployment", "taskapi-worker"), ("Job", "taskapi-migrate")],
)
def test_pods_run_as_the_image_user_and_never_root(kind: str, name: str) -> None:
    workload = k8s_one(kind, name)
    pod = pod_spec(workload)["securityContext"]
    container = only_container(workload)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert str(pod["runAsUser"]) == image_user().split(":")[0]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(
    ("kind", "name"),
    [("Deployment", "taskapi-api"), ("Deployment", "taskapi-worker"), ("Job", "taskapi-migrate")],
)
def test_workloads_read_the_configmap_and_the_secret(kind: str, name: str) -> None:
    container = only_container(k8s_one(kind, name))
    (config_ref,) = container["envFrom"]
    k8s_one("ConfigMap", config_ref["configMapRef"]["name"])
    secret = secret_example()
    refs = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert {"SECRET_KEY", "DATABASE_URL"} <= set(refs)
    for variable, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"], variable
        assert ref["key"] in secret["stringData"], variable


def test_api_pods_never_run_jobs_themselves() -> None:
    env = {item["name"]: item.get("value") for item in only_container(api_deployment())["env"]}
    assert env["WORKER_EMBEDDED"] == "false"
    assert k8s_one("ConfigMap", "taskapi-config")["data"]["WORKER_EMBEDDED"] == "false"


def test_api_shutdown_outlasts_prestop_and_uvicorn_graceful_timeout() -> None:
    spec = pod_spec(api_deployment())
    pre_stop = only_container(api_deployment())["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + UVICORN_GRACEFUL_SECONDS


def test_hpa_scales_the_api_deployment_on_cpu() -> None:
    (hpa,) = [doc for doc in k8s_documents() if doc["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", api_deployment()["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_pdb_and_service_select_the_api_pods_only() -> None:
    worker_labels = k8s_one("Deployment", "taskapi-worker")["spec"]["template"]["metadata"]
    (pdb,) = [doc for doc in k8s_documents() if doc["kind"] == "PodDisruptionBudget"]
    (service,) = [doc for doc in k8s_documents() if doc["kind"] == "Service"]
    for selector in (pdb["spec"]["selector"]["matchLabels"], service["spec"]["selector"]):
        assert selects(selector, api_pod_labels())
        assert not selects(selector, worker_labels["labels"])
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", 8000)


def test_migration_job_runs_taskapi_migrate_once() -> None:
    job = k8s_one("Job", "taskapi-migrate")
    assert container_command(only_container(job)) == ["taskapi", "migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_worker_deployment_runs_taskapi_worker() -> None:
    worker = k8s_one("Deployment", "taskapi-worker")
    assert container_command(only_container(worker)) == ["taskapi", "worker"]
    grace = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert grace > UVICORN_GRACEFUL_SECONDS


def test_every_variable_the_manifests_set_is_a_setting() -> None:
    names: set[str] = set(k8s_one("ConfigMap", "taskapi-config")["data"])
    names |= set(secret_example()["stringData"])
    for document in k8s_documents():
        if document["kind"] in ("Deployment", "Job"):
            for container in pod_spec(document)["containers"]:
                names |= {item["name"] for item in container.get("env", [])}
    unknown = names - KNOWN_VARIABLES
    assert not unknown, f"{sorted(unknown)} are not taskapi settings"


def test_configmap_values_are_strings_and_valid_settings() -> None:
    data = k8s_one("ConfigMap", "taskapi-config")["data"]
    # Kubernetes rejects a ConfigMap with a non-string value (`PORT: 8000`).
    assert all(isinstance(value, str) for value in data.values())
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, **{name.lower(): value for name, value in data.items()}
    )
    assert settings.is_production
    assert settings.storage_backend == "s3"
    assert settings.worker_embedded is False
    assert settings.trusted_proxies


def test_all_workloads_run_the_same_image() -> None:
    images = {
        container["image"]
        for document in k8s_documents()
        if document["kind"] in ("Deployment", "Job")
        for container in pod_spec(document)["containers"]
    }
    assert len(images) == 1


# --- `taskapi migrate` outside a source checkout (the image) -------------------------------------


def test_migrate_defaults_to_the_checkout_alembic_ini() -> None:
    settings = Settings(_env_file=None, environment="test")  # type: ignore[call-arg]
    ini = cli._alembic_ini(settings)
    assert ini == ROOT_PATH / "alembic.ini"
    assert (ini.parent / "migrations" / "env.py").is_file()


def image_layout(tmp_path: Path) -> Path:
    """alembic.ini and migrations/ copied as the Dockerfile copies them into /app."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "alembic.ini").write_text((ROOT_PATH / "alembic.ini").read_text())
    for source in (ROOT_PATH / "migrations").rglob("*.py"):
        target = app / "migrations" / source.relative_to(ROOT_PATH / "migrations")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    (app / "migrations" / "script.py.mako").write_text(
        (ROOT_PATH / "migrations" / "script.py.mako").read_text()
    )
    return app


async def test_migrate_uses_alembic_config_from_any_directory(tmp_path: Path) -> None:
    app = image_layout(tmp_path)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    name = f"taskapi_deploy_{uuid.uuid4().hex[:12]}"
    async with dropped_afterwards(name):
        env = cli_env(DATABASE_URL=database_url(name), ALEMBIC_CONFIG=str(app / "alembic.ini"))
        result = await run_cli("migrate", env=env, cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        revisions = {
            path.name.split("_")[1] for path in (app / "migrations" / "versions").glob("*.py")
        }
        conn = await asyncpg.connect(_plain_dsn(database_url(name)))
        try:
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
            assert await conn.fetchval("SELECT to_regclass('public.tasks') IS NOT NULL")
        finally:
            await conn.close()
        assert version == max(revisions)  # the copy's newest: upgraded to head


async def test_migrate_without_alembic_ini_says_what_to_set(tmp_path: Path) -> None:
    name = f"taskapi_deploy_{uuid.uuid4().hex[:12]}"
    missing = tmp_path / "nowhere" / "alembic.ini"
    async with dropped_afterwards(name):
        env = cli_env(DATABASE_URL=database_url(name), ALEMBIC_CONFIG=str(missing))
        result = await run_cli("migrate", env=env, cwd=tmp_path)
        assert result.returncode == 2
        message = result.stderr.strip()
        assert "Traceback" not in result.stderr
        assert "\n" not in message
        assert str(missing) in message
        assert "ALEMBIC_CONFIG" in message
        # Nothing was done before the problem was found: no half-prepared database.
        assert not await database_exists(name)


def test_alembic_config_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEMBIC_CONFIG", "/app/alembic.ini")
    settings = Settings(_env_file=None, environment="test")  # type: ignore[call-arg]
    assert cli._alembic_ini(settings) == Path("/app/alembic.ini")
