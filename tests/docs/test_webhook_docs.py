"""docs/webhooks.md's verification code, run as printed against deliveries signed the way the
dispatcher signs them: the Python examples here, the dependency-free JavaScript one in Node.js
(the suite already needs Node.js for Redocly). A receiver copying them must get it right."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import WebhookVerificationError

from taskapi.webhooks import signing

NODE = shutil.which("node") or "node is not installed (Redocly needs it too)"
DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
BODY = json.dumps({"id": 42, "type": "task.created", "task": {"title": "héllo"}}).encode()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def signed(secrets: list[str], *, at: datetime | None = None, body: bytes = BODY) -> dict[str, str]:
    """The headers of a delivery, as the dispatcher makes them."""
    moment = at or datetime.now(UTC)
    return {
        "webhook-id": "42",
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signing.signature_header(secrets, "42", moment, body),
    }


SECRET, OTHER = signing.new_secret(), signing.new_secret()


def cases() -> list[tuple[dict[str, str], bytes, str, bool]]:
    """(headers, body, the secret the receiver holds, whether it must verify), signed now: a
    receiver refuses a timestamp 5 minutes old, and a test may run that long after collection."""
    return [
        (signed([SECRET]), BODY, SECRET, True),
        (signed([SECRET]), BODY + b" ", SECRET, False),  # tampered
        (signed([SECRET]), BODY, OTHER, False),  # someone else's secret
        (signed([OTHER, SECRET]), BODY, SECRET, True),  # during a rotation: either one
        (signed([SECRET], at=datetime.now(UTC) - timedelta(minutes=10)), BODY, SECRET, False),
    ]


def test_the_doc_has_the_examples_it_promises() -> None:
    assert len(blocks("python")) == 2
    assert len(blocks("js")) == 2


def test_the_python_example_with_the_library_verifies_and_parses() -> None:
    code = blocks("python")[0].replace('"whsec_..."', "secret")
    for headers, body, secret, valid in cases():
        namespace: dict[str, Any] = {"raw_body": body, "request_headers": headers, "secret": secret}
        if valid:
            exec(code, namespace)  # noqa: S102 - the documentation's own example
            assert namespace["event"] == json.loads(body)
        else:
            with pytest.raises(WebhookVerificationError):
                exec(code, namespace)  # noqa: S102


def test_the_python_example_without_the_library_agrees() -> None:
    namespace: dict[str, Any] = {}
    exec(blocks("python")[1], namespace)  # noqa: S102 - the documentation's own example
    verify = namespace["verify"]
    examples = cases()
    assert [verify(secret, headers, body) for headers, body, secret, _ in examples] == [
        valid for *_, valid in examples
    ]


def test_the_javascript_example_without_the_library_agrees(tmp_path: Path) -> None:
    script = tmp_path / "verify.mjs"
    script.write_text(
        blocks("js")[1]
        + """
const [secret, headers, body] = JSON.parse(process.argv[2]);
console.log(JSON.stringify(verify(secret, headers, Buffer.from(body, "base64"))));
"""
    )
    results = []
    examples = cases()
    for headers, body, secret, _ in examples:
        argument = json.dumps([secret, headers, base64.b64encode(body).decode()])
        done = subprocess.run(  # noqa: S603 - node and a file of ours
            [NODE, str(script), argument], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        results.append(json.loads(done.stdout))
    assert results == [valid for *_, valid in examples]
