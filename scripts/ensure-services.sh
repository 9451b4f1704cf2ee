#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis the tests use are up (started if installed but stopped),
# and the tools the README walkthrough test needs are there.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
  fi
  pg_up || { echo "PostgreSQL is not running on 127.0.0.1:5432 and could not be started." >&2; exit 1; }
fi

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis..."
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    for _ in $(seq 1 30); do redis_up && break; sleep 0.2; done
  fi
  redis_up || { echo "Redis is not running on 127.0.0.1:6379 and could not be started." >&2; exit 1; }
fi

# The README's walkthrough, which a test runs, needs curl and jq; install them where apt can.
missing_tools() { for tool in curl jq; do command -v "$tool" >/dev/null || echo "$tool"; done; }
if [ -n "$(missing_tools)" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing $(missing_tools | xargs)..."
  # shellcheck disable=SC2046  # one word per tool
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(missing_tools) \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(missing_tools); }; } >/dev/null
fi
if [ -n "$(missing_tools)" ]; then
  echo "The README walkthrough test needs: $(missing_tools | xargs) (apt-get install ...)." >&2
  exit 1
fi
