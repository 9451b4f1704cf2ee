"""deploy/k8s validated against the Kubernetes API schemas, and held to what an operator relies on.

kubernetes-validate ships the OpenAPI schemas of each Kubernetes release, so a misspelt field, a
wrong type or a field in the wrong place fails here, as `kubectl apply` would fail on a cluster.
The operator checks are what a schema cannot see: probes on the right endpoints, resources on every
container, a disruption budget that still lets a node drain, migrations before new code rolls, a
grace period longer than the drain, and no secret in a ConfigMap.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import asyncpg
import kubernetes_validate
import pytest

from tests.conftest import admin_execute, database_url
from tests.deploy.test_cli_and_socket import _plain_dsn, cli_env, dropped_afterwards, run_cli
from tests.deploy.test_deploy_files import (
    ROOT_PATH,
    UVICORN_GRACEFUL_SECONDS,
    api_deployment,
    container_command,
    k8s_documents,
    k8s_one,
    only_container,
    pod_spec,
    secret_example,
)

# The oldest release the manifests promise to work on (policy/v1 PDBs, autoscaling/v2 HPAs and
# seccompProfile are all GA there), and the newest whose schemas the validator ships.
OLDEST_KUBERNETES = "1.29.0"
NEWEST_KUBERNETES = kubernetes_validate.latest_version()

WORKLOADS = [
    ("Deployment", "taskapi-api"),
    ("Deployment", "taskapi-worker"),
    ("Job", "taskapi-migrate"),
]
# Names of credentials, beyond the Secret's own keys (which include the URLs that carry passwords).
SECRET_NAME = re.compile(
    r"(^|_)(SECRET(_KEY)?|SECRET_ACCESS_KEY|PASSWORD|TOKEN|CREDENTIALS?|PRIVATE_KEY)$", re.I
)
CREDENTIALS_IN_URL = re.compile(r"://[^/\s]*:[^/\s]*@")


def secret_looking(name: str) -> bool:
    return name in secret_example()["stringData"] or bool(SECRET_NAME.search(name))


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def documents_and_names() -> list[tuple[dict[str, Any], str]]:
    documents = [*k8s_documents(), secret_example()]
    return [(doc, f"{doc['kind']}/{doc['metadata']['name']}") for doc in documents]


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    for document, name in documents_and_names():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} is not a valid Kubernetes {version} object: {error.message}")


@pytest.mark.parametrize(
    ("mistake", "path"),
    [
        ("a misspelt field", ("spec", "replica")),
        ("a number where Kubernetes wants a string", ("metadata", "labels", "tier")),
    ],
)
def test_the_validation_catches_what_kubectl_would_refuse(
    mistake: str, path: tuple[str, ...]
) -> None:
    broken = copy.deepcopy(api_deployment())
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, NEWEST_KUBERNETES, strict=True)


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_every_container_requests_and_limits_cpu_and_memory(kind: str, name: str) -> None:
    for container in all_containers(k8s_one(kind, name)):
        resources = container["resources"]
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[section]), (container["name"], section)
        assert memory_mib(resources["requests"]["memory"]) <= memory_mib(
            resources["limits"]["memory"]
        )


def memory_mib(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0, "Ki": 1 / 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_api_probes_use_health_for_liveness_and_ready_for_readiness() -> None:
    container = only_container(api_deployment())
    assert container["startupProbe"]["httpGet"]["path"] == "/ops/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/ops/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ops/ready"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        settings = container[probe]
        # A probe that can outlast its period piles up checks on a slow pod.
        assert settings.get("timeoutSeconds", 1) < settings.get("periodSeconds", 10), probe


def test_the_disruption_budget_protects_the_api_yet_lets_a_node_drain() -> None:
    (pdb,) = [doc for doc in k8s_documents() if doc["kind"] == "PodDisruptionBudget"]
    (hpa,) = [doc for doc in k8s_documents() if doc["kind"] == "HorizontalPodAutoscaler"]
    floor = min(api_deployment()["spec"]["replicas"], hpa["spec"]["minReplicas"])
    # At least one pod always serves, and at the floor one can still be evicted (a budget equal
    # to the replica count would block every drain forever).
    assert 1 <= pdb["spec"]["minAvailable"] < floor


@pytest.mark.parametrize("name", ["taskapi-api", "taskapi-worker"])
def test_new_pods_wait_for_the_migration_job_before_they_run(name: str) -> None:
    deployment = k8s_one("Deployment", name)
    job = k8s_one("Job", "taskapi-migrate")
    (init,) = pod_spec(deployment)["initContainers"]
    assert container_command(init)[:2] == ["taskapi", "wait-for-schema"]
    assert container_command(only_container(job)) == ["taskapi", "migrate"]
    # The same release: the image the Job migrates with is the one whose schema the pods await.
    assert init["image"] == only_container(job)["image"] == only_container(deployment)["image"]
    database = {item["name"]: item for item in init["env"]}["DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["name"] == "taskapi"
    # Old pods keep serving while new ones wait.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_api_grace_period_outlasts_the_whole_drain() -> None:
    spec = pod_spec(api_deployment())
    container = only_container(api_deployment())
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    readiness = container["readinessProbe"]
    # SIGKILL comes only after preStop, then uvicorn's graceful shutdown, have both had their time,
    # and the preStop pause covers the endpoint removal (a failing readiness probe's period).
    assert spec["terminationGracePeriodSeconds"] > pre_stop + UVICORN_GRACEFUL_SECONDS
    assert pre_stop >= readiness["periodSeconds"]


def test_configmaps_hold_no_secrets() -> None:
    for document in k8s_documents():
        if document["kind"] != "ConfigMap":
            continue
        for key, value in document["data"].items():
            assert not secret_looking(key), f"{key} belongs in the Secret"
            assert not CREDENTIALS_IN_URL.search(value), f"{key} holds a URL with credentials"


@pytest.mark.parametrize(("kind", "name"), WORKLOADS)
def test_secret_looking_variables_come_from_the_secret(kind: str, name: str) -> None:
    for container in all_containers(k8s_one(kind, name)):
        for item in container.get("env", []):
            if secret_looking(item["name"]):
                assert "value" not in item, f"{container['name']}: {item['name']} set inline"
                assert item["valueFrom"]["secretKeyRef"]["name"] == "taskapi"


# --- `taskapi wait-for-schema`, what the init containers run --------------------------------------


async def wait_for_schema(seconds: str, env: dict[str, str]) -> Any:
    return await run_cli("wait-for-schema", "--timeout", seconds, env=env, cwd=ROOT_PATH)


async def test_wait_for_schema_waits_for_migrate_then_lets_the_pod_start() -> None:
    name = f"taskapi_wait_{uuid.uuid4().hex[:12]}"
    async with dropped_afterwards(name):
        env = cli_env(DATABASE_URL=database_url(name))
        await admin_execute(f'CREATE DATABASE "{name}"')

        never_migrated = await wait_for_schema("1", env)
        assert never_migrated.returncode == 1
        assert "has `taskapi migrate` run" in never_migrated.stderr

        assert (await run_cli("migrate", env=env, cwd=ROOT_PATH)).returncode == 0
        migrated = await wait_for_schema("1", env)
        assert migrated.returncode == 0, migrated.stderr

        conn = await asyncpg.connect(_plain_dsn(database_url(name)))
        try:
            head = await conn.fetchval("SELECT version_num FROM alembic_version")
            # A later release migrated already: this (older) image may start.
            await conn.execute("UPDATE alembic_version SET version_num = 'from_a_later_release'")
            assert (await wait_for_schema("0", env)).returncode == 0
            # The schema is an older release's: this image must not start on it.
            await conn.execute("UPDATE alembic_version SET version_num = '0001'")
            older = await wait_for_schema("0", env)
            assert older.returncode == 1
            assert head in older.stderr
        finally:
            await conn.close()
