"""`make lint`'s check of the OpenAPI document: Redocly's recommended rules (redocly.yaml) over
the document the app serves, written to a temporary file. Exits with Redocly's status: non-zero
when it finds an error.

    .venv/bin/python scripts/lint_openapi.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from taskapi.app import create_app
from taskapi.kit.config import Settings

ROOT = Path(__file__).resolve().parents[1]
REDOCLY = ROOT / "scripts" / "redocly.sh"


def openapi_document() -> dict[str, object]:
    # Building the app reads no secret and opens no connection; the document is all it is for.
    settings = Settings(_env_file=None, secret_key="x" * 64)  # type: ignore[call-arg]
    return create_app(settings).openapi()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "openapi.json"
        path.write_text(json.dumps(openapi_document()), encoding="utf-8")
        command = [str(REDOCLY), "lint", "--config", str(ROOT / "redocly.yaml"), str(path)]
        return subprocess.run(command, check=False).returncode  # noqa: S603


if __name__ == "__main__":
    sys.exit(main())
