"""Faults under load, shortened: `scripts/faults.py` (make faults) with two scenarios and short
phases, as a subprocess. It starts its own PostgreSQL cluster, redis-server, moto and
`taskapi serve`; the shared PostgreSQL and Redis are never touched.

While clients keep listing, creating, reading, uploading and downloading, PostgreSQL is stopped
hard (pg_ctl -m immediate) and S3 is cut off; every answer must be a 2xx or the documented 503
for that dependency (`database_unavailable` with Retry-After; `storage_unavailable` from an
attachment endpoint), never a 500 or a hang, and the service must recover by itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fault_servers import PG_BIN

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "faults.py"

pytestmark = pytest.mark.skipif(
    not (shutil.which("redis-server") and (PG_BIN / "initdb").exists()),
    reason="needs initdb/pg_ctl and redis-server",
)


def test_pg_stop_and_s3_cut_under_load_give_only_documented_503s_and_recover(
    tmp_path: Path,
) -> None:
    report = tmp_path / "faults.json"
    argv = [sys.executable, str(SCRIPT), "--scenarios", "pg-stop,s3-cut"]
    # The fault must outlast botocore's retries (up to ~2.4 s): with a shorter S3 cut an upload
    # caught by it can retry into the restored link and succeed, leaving no 503 to observe.
    argv += ["--before", "1", "--fault", "4", "--after", "2.5", "--clients", "3", "--run", "5"]
    result = subprocess.run(  # noqa: S603 - our own script
        [*argv, "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    outcomes = {o["scenario"]: o for o in json.loads(report.read_text())}
    assert set(outcomes) == {"pg-stop", "s3-cut"}, output
    for name, outcome in outcomes.items():
        assert outcome["unexpected_5xx"] == 0, (name, outcome["failures"])
        assert outcome["other"] == 0, (name, outcome["failures"])
        assert outcome["recovery"] is not None, (name, output)
        assert outcome["recovery"] < 2.0, (name, outcome["recovery"])
        # The fault really bit: clients saw the documented 503 ...
        assert outcome["documented"] > 0, (name, outcome)
        # ... and work went on around it: every answer before the fault was a 2xx (the recovery
        # above is a run of them after it). Not a ratio of successes to 503s: a 503 is answered
        # faster than a page, so that ratio measured the machine's speed (it failed on a slow day).
        assert outcome["ok_before_fault"] > 0, (name, outcome)
        assert outcome["failed_before_fault"] == 0, (name, outcome)
    pg, s3 = outcomes["pg-stop"], outcomes["s3-cut"]
    assert {key.split()[2] for key in pg["failures"]} == {"database_unavailable"}, pg["failures"]
    assert {key.split()[0] for key in s3["failures"]} <= {"upload", "download"}, s3["failures"]
    assert "unexpected 5xx" in result.stdout  # the table was printed
