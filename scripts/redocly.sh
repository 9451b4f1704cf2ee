#!/usr/bin/env bash
# Redocly CLI at a pinned version, installed on first use into .tools/ (ignored by git) through
# npm as this machine has it set up; later runs reuse it, and a reinstall comes from npm's cache.
# Used by `make lint` (scripts/lint_openapi.py) and tests/test_openapi_tools.py.
set -euo pipefail

VERSION=2.77.0
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.tools/redocly-$VERSION"
bin="$dir/node_modules/.bin/redocly"

if [ ! -x "$bin" ]; then
    # Installed beside the final place and moved there whole, so that two first runs at once
    # (make lint and the test suite) never see half an install.
    mkdir -p "$root/.tools"
    staging=$(mktemp -d "$root/.tools/redocly-install.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    npm install --prefix "$staging" --no-save --no-package-lock --no-audit --no-fund \
        --loglevel=error "@redocly/cli@$VERSION" >&2
    mv -T "$staging" "$dir" 2>/dev/null || true  # another run got there first: keep theirs
fi

# No usage reports or update checks: the only network these machines reach is package registries.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
exec "$bin" "$@"
