#!/usr/bin/env bash
# `make compose-test` (e2e) and `make scale-test` (scale): the compose stack built and run for real.
#
#   1. Docker: installs docker.io/docker-compose/debootstrap from Debian if missing, uses a running
#      engine or starts containerd + dockerd (only what is not running; stopped again by pid).
#   2. Base images: pulled, or stand-ins built from Debian packages (deploy/offline-images/).
#   3. The project image: `docker build` with the repository's Dockerfile, tagged taskapi:local.
#   4. scripts/compose/e2e.py or scale.py: compose.yaml up (unchanged, as its own project on free
#      ports), the checks, `down -v`.
#   5. On every exit, failures and Ctrl-C included: the project taken down, the engine stopped if
#      this run started it, and nothing left (containers, volumes, networks, mounts, daemons).
#
# Where no container engine can be started (no root to start one, a sandbox without the kernel
# features containers need) it prints why and exits 0: skipped, not passed. Anywhere else a
# failure exits non-zero.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MODE="${1:-e2e}"
case "$MODE" in e2e | scale) ;; *) echo "usage: $0 e2e|scale" >&2; exit 2 ;; esac
NAME="compose-test"
[ "$MODE" = scale ] && NAME="scale-test"
PYTHON="${PYTHON:-.venv/bin/python}"

# shellcheck source=scripts/compose/engine.sh
source scripts/compose/engine.sh

STARTED_AT=$(date +%s)
RESULTS="$(mktemp -t taskapi-compose-results.XXXXXX)"
export COMPOSE_CHECK_RESULTS="$RESULTS"
export COMPOSE_PROJECT_NAME="taskapi-${MODE}-$$"
PROJECT_UP=""
ENGINE_MOUNTS_BEFORE=""

say() { printf '%s: %s\n' "$NAME" "$*"; }

engine_mounts() { grep -E ' (/var/lib/docker|/run/docker|/run/containerd|/var/lib/containerd)' \
  /proc/mounts | awk '{ print $2 }' | sort || true; }

finish() {
  local rc=$? held=0 failed=0
  set +e
  trap - EXIT INT TERM
  if [ -n "$PROJECT_UP" ]; then
    docker-compose -p "$COMPOSE_PROJECT_NAME" down -v --remove-orphans --timeout 60 >/dev/null 2>&1
    docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" |
      xargs -r docker rm -f >/dev/null 2>&1
  fi
  local started_pids="$STARTED_DOCKERD_PID $STARTED_CONTAINERD_PID" pid alive=""
  engine_stop
  held=$(cat "$RESULTS" 2>/dev/null || echo 0)
  [ -n "$held" ] || held=0
  if [ -n "${started_pids// /}" ]; then
    # What this run started must be gone with it: the daemons and everything they had mounted.
    local leftover_mounts
    leftover_mounts="$(comm -13 <(printf '%s\n' "$ENGINE_MOUNTS_BEFORE") <(engine_mounts))"
    if [ -n "$leftover_mounts" ]; then
      say "FAILED: mounts left behind: $leftover_mounts" >&2
      failed=1
    else
      printf '  ok  no mount of the engine left behind\n'
      held=$((held + 1))
    fi
    for pid in $started_pids; do
      if kill -0 "$pid" 2>/dev/null; then alive="$alive $pid"; fi
    done
    if [ -n "$alive" ]; then
      say "FAILED: daemons this run started still run (pids$alive)" >&2
      failed=1
    else
      printf '  ok  the daemons this run started are stopped\n'
      held=$((held + 1))
    fi
  fi
  rm -f "$RESULTS"
  [ "$rc" -ne 0 ] && failed=1
  if [ "$failed" -eq 0 ]; then
    rm -rf "$ENGINE_LOGS"
  else
    say "build and engine logs kept in $ENGINE_LOGS" >&2
  fi
  say "took $(($(date +%s) - STARTED_AT)) s"
  # The plain closing line CI logs read.
  echo "$NAME: $held passed, $failed failed"
  [ "$failed" -eq 0 ] && exit 0
  exit 1
}

skip() {
  trap - EXIT INT TERM
  engine_stop
  rm -rf "$RESULTS" "$ENGINE_LOGS"
  say "SKIPPED: no container engine can be started here: $1"
  exit 0
}

set +e
engine_tools
rc=$?
set -e
[ "$rc" -eq 3 ] && skip "$ENGINE_SKIP_REASON"
[ "$rc" -ne 0 ] && exit "$rc"

if [ "$MODE" = scale ] && ! command -v wrk >/dev/null; then
  say "installing wrk from Debian (the throughput table's load generator)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >/dev/null
fi

ENGINE_MOUNTS_BEFORE="$(engine_mounts)"
trap finish EXIT
trap 'exit 130' INT TERM
set +e
engine_start
rc=$?
set -e
[ "$rc" -eq 3 ] && skip "$ENGINE_SKIP_REASON"
[ "$rc" -ne 0 ] && exit "$rc"

# The project image needs only python:3.11-slim: it builds while the other base images are made.
t0=$SECONDS
export OFFLINE_IMAGES_LOG="$ENGINE_LOGS/offline-images.log"
bash deploy/offline-images/build.sh python:3.11-slim
bash deploy/offline-images/build.sh &
BASE_IMAGES_PID=$!
if ! docker build --network host -t taskapi:local . >"$ENGINE_LOGS/image.log" 2>&1; then
  tail -n 40 "$ENGINE_LOGS/image.log" >&2
  say "building the project image failed" >&2
  wait "$BASE_IMAGES_PID" || true
  exit 1
fi
say "project image taskapi:local built ($((SECONDS - t0)) s since the images started)"
wait "$BASE_IMAGES_PID" || { say "making the base images failed" >&2; exit 1; }
say "all images ready in $((SECONDS - t0)) s"

# Free host ports for this run, so a developer's own `make run` on 8000 or another stack is no
# obstacle; compose.yaml reads them (TASKAPI_*_PORT) and so do the checks.
read -r TASKAPI_PORT TASKAPI_PROXY_STATS_PORT TASKAPI_S3_PORT TASKAPI_MINIO_CONSOLE_PORT < <(
  "$PYTHON" - <<'EOF'
import socket
sockets = [socket.socket() for _ in range(4)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))
EOF
)
export TASKAPI_PORT TASKAPI_PROXY_STATS_PORT TASKAPI_S3_PORT TASKAPI_MINIO_CONSOLE_PORT

PROJECT_UP=1
"$PYTHON" "scripts/compose/$MODE.py"
