"""Tools that read the OpenAPI document take it as it is: Redocly's recommended rules find no
error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from taskapi.app import create_app
from tests.conftest import ROOT, make_settings

REDOCLY = Path(ROOT) / "scripts" / "redocly.sh"


@pytest.fixture(scope="module")
def openapi_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("openapi") / "openapi.json"
    path.write_text(json.dumps(create_app(make_settings("unused")).openapi()), encoding="utf-8")
    return path


def test_redocly_recommended_rules_find_no_error(openapi_file: Path) -> None:
    """Installs the pinned Redocly CLI when .tools/ lacks it (a clean checkout), as make lint."""
    result = subprocess.run(  # noqa: S603
        [
            str(REDOCLY),
            "lint",
            "--config",
            str(Path(ROOT) / "redocly.yaml"),
            "--format",
            "json",
            str(openapi_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(result.stdout)
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert report["totals"]["errors"] == 0, json.dumps(errors, indent=1)
    assert result.returncode == 0, result.stderr
    # What is left are warnings about the /ops endpoints, which have no 4xx answer to document.
    warned = {(p["ruleId"], p["location"][0]["pointer"]) for p in report["problems"]}
    assert warned <= {
        ("operation-4xx-response", f"#/paths/~1ops~1{name}/get/responses")
        for name in ("health", "ready", "metrics")
    }, warned
