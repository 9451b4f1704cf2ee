"""The documents a newcomer reads are kept in step with the code: the README's configuration
table and `.env.example` with the Settings model, `docs/api.md` with the OpenAPI schema and the
error codes, and every link inside the repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic.fields import FieldInfo

from taskapi.app import create_app
from taskapi.kit.config import Settings
from taskapi.kit.errors import AppError
from tests.conftest import ROOT, TEST_SECRET

REPO = Path(ROOT)
README = REPO / "README.md"
ENV_EXAMPLE = REPO / ".env.example"
API_DOC = REPO / "docs" / "api.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250
# Read by the AWS client itself, not by Settings.
CLIENT_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def static_default(field: FieldInfo) -> tuple[bool, Any]:
    """(True, value) when the default can be written as a value; machine-dependent or unset
    defaults are described in words instead."""
    if field.default_factory is list:
        return True, []
    if field.default_factory is not None or field.default is None:
        return False, None
    return True, field.default


def parsed_as(name: str, text: str) -> Any:
    """What Settings makes of `text` given as this variable."""
    settings = Settings(_env_file=None, **{name.lower(): text})  # type: ignore[arg-type]
    return getattr(settings, name.lower())


def section(text: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


# --- README ---------------------------------------------------------------------------------


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def configuration_rows() -> list[tuple[list[str], str]]:
    """(variable names, default cell) of each row of the README's configuration table."""
    lines = section(README.read_text(), "Configuration").splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    assert table, "no configuration table"
    # One table: a blank line inside it would end it and print the rest as text.
    assert table == list(range(table[0], table[-1] + 1)), "the configuration table is broken"
    rows = []
    for line in lines[table[0] + 2 : table[-1] + 1]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]), cells[1]))
    return rows


def test_readme_configuration_lists_every_setting_once() -> None:
    names = [name for row_names, _ in configuration_rows() for name in row_names]
    assert len(names) == len(set(names)), names
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - set(names) == set(), "settings missing from the README"
    assert set(names) - fields - CLIENT_VARIABLES == set(), "not settings of this service"


def test_readme_configuration_states_the_real_defaults() -> None:
    for names, default_cell in configuration_rows():
        written = [name for name in names if name in {n.upper() for n in Settings.model_fields}]
        static = [n for n in written if static_default(Settings.model_fields[n.lower()])[0]]
        if not static:
            continue  # described in words: unset, machine-dependent
        if static == names and all(
            static_default(Settings.model_fields[n.lower()])[1] == [] for n in names
        ):
            assert "empty" in default_cell, f"{names}: {default_cell}"
            continue
        values = re.findall(r"`([^`]*)`", default_cell)
        assert len(values) == len(static), f"{names}: {default_cell}"
        for name, value in zip(static, values, strict=True):
            expected = static_default(Settings.model_fields[name.lower()])[1]
            assert parsed_as(name, value) == expected, f"{name}: README says {value!r}"


# --- .env.example ---------------------------------------------------------------------------


def env_example() -> tuple[dict[str, str], set[str]]:
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            assert match.group(1) not in active, f"{match.group(1)} twice"
            active[match.group(1)] = match.group(2)
        elif match := re.fullmatch(r"# ([A-Z][A-Z0-9_]*)=", line):
            commented.add(match.group(1))
    return active, commented


def test_env_example_lists_every_setting_at_its_default() -> None:
    active, commented = env_example()
    assert set(active).isdisjoint(commented)
    for name, field in Settings.model_fields.items():
        has_value, expected = static_default(field)
        if has_value:
            assert name.upper() in active, f"{name.upper()} missing from .env.example"
            assert parsed_as(name, active[name.upper()]) == expected, name.upper()
        else:
            assert name.upper() in commented, f"{name.upper()} should be listed, commented out"
    fields = {name.upper() for name in Settings.model_fields}
    assert set(active) | commented - CLIENT_VARIABLES <= fields, "unknown variables"


def test_copying_env_example_to_env_changes_nothing() -> None:
    from_file = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert from_file.model_dump() == defaults.model_dump()


# --- links ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository_and_resolve(document: Path) -> None:
    text = re.sub(r"^```.*?^```", "", document.read_text(), flags=re.M | re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<(https?://[^>]+)>", text)
    assert targets, f"{document} links nowhere"
    for target in targets:
        if re.match(r"https?://", target):
            continue  # public pages, or the reader's own `make run` server
        assert "://" not in target, target
        file_part, _, anchor = target.partition("#")
        resolved = (document.parent / file_part).resolve() if file_part else document
        assert resolved.is_relative_to(REPO), f"{document.name}: {target} leaves the repository"
        assert resolved.exists(), f"{document.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{document.name}: no #{anchor} in {file_part}"


def test_nothing_points_at_the_contract_outside_the_repository() -> None:
    for path in [*DOCUMENTS, *REPO.glob("src/**/*.py"), *REPO.glob("tests/**/*.py")]:
        text = path.read_text()
        for outside in ("../shared", "shared/API.md"):
            if path.name == "test_docs.py":
                continue
            assert outside not in text, f"{path.relative_to(REPO)} points at {outside}"


# --- docs/api.md and the OpenAPI schema ------------------------------------------------------


def documented_operations() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(served, planned) operations of docs/api.md's tables, planned being the ones under a
    heading that says so."""
    served: set[tuple[str, str]] = set()
    planned: set[tuple[str, str]] = set()
    is_planned = False
    for line in API_DOC.read_text().splitlines():
        if line.startswith("#"):
            is_planned = "planned" in line.lower()
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 1 and cells[0] in METHODS:
            path = cells[1].strip("`")
            (planned if is_planned else served).add((cells[0], path))
    return served, planned


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    settings = Settings(_env_file=None, environment="test", secret_key=TEST_SECRET)  # type: ignore[call-arg]
    return create_app(settings).openapi()


def schema_operations(schema: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method.upper() in METHODS
    }


def test_api_reference_lists_exactly_the_served_operations(schema: dict[str, Any]) -> None:
    served, _ = documented_operations()
    operations = schema_operations(schema)
    assert operations - served == set(), "served but not in docs/api.md"
    assert served - operations == set(), "in docs/api.md as served, but not served"


def test_planned_operations_are_not_served_yet(schema: dict[str, Any]) -> None:
    """Every table of part 2 is served today; one added later as planned must not be."""
    _, planned = documented_operations()
    assert planned & schema_operations(schema) == set(), "served now: move them to part 1"


def test_api_reference_explains_every_query_parameter(schema: dict[str, Any]) -> None:
    text = API_DOC.read_text()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query":
                    name = re.escape(parameter["name"])
                    # `name`, or an example of it: `?name=value`
                    explained = re.search(rf"`\??{name}(=[^`]*)?`", text)
                    assert explained, f"{method.upper()} {path}: {parameter['name']}"


def error_codes() -> set[str]:
    codes: set[str] = set()
    pending: list[type[AppError]] = [AppError]
    while pending:
        error = pending.pop()
        codes.add(error.code)
        pending.extend(error.__subclasses__())
    for source in (REPO / "src" / "taskapi").rglob("*.py"):
        codes.update(re.findall(r'\bcode="([a-z_]+)"', source.read_text()))
    return codes


def test_api_reference_names_every_error_code(schema: dict[str, Any]) -> None:
    # The schema is built first, so every router (and the errors it defines) is imported.
    assert schema["paths"]
    errors = section(API_DOC.read_text(), "Errors")
    missing = {code for code in error_codes() if f"`{code}`" not in errors}
    assert missing == set(), "codes the service sends that docs/api.md does not explain"
