# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are read by run.sh, which sources this file
# Sourced by scripts/compose/run.sh: a Docker engine for the length of one run.
#
# engine_tools   installs docker.io, docker-compose and debootstrap from Debian when missing
# engine_start   uses a running engine, or starts containerd and dockerd (each only if none runs)
# engine_stop    stops, by pid, only what engine_start started, and removes what dockerd leaves
#                behind on its way out (its default bridge, its network-namespace mount)
#
# A dockerd started here runs with --iptables=false (and no IP forwarding or masquerading of its
# own): the host's firewall is left exactly as it was. Containers still reach each other on their
# compose network, published ports still work (docker-proxy, on 127.0.0.1), and image builds use
# the host's network (`docker build --network host`) to reach the package mirrors.
#
# Both return 3 when no engine can be had on this machine (the caller skips, saying why).

ENGINE_LOGS="${ENGINE_LOGS:-$(mktemp -d -t taskapi-engine.XXXXXX)}"
ENGINE_SKIP_REASON=""
STARTED_CONTAINERD_PID=""
STARTED_DOCKERD_PID=""
HAD_DOCKER0=""
HAD_NETNS_MOUNT=""

engine_say() { printf 'engine: %s\n' "$*"; }

engine_tools() {
  local missing=()
  command -v docker >/dev/null || missing+=(docker.io)
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v containerd >/dev/null || missing+=(containerd)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    ENGINE_SKIP_REASON="${missing[*]} missing, and installing them needs root and apt-get"
    return 3
  fi
  engine_say "installing ${missing[*]} from Debian"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "${missing[@]}"; } >"$ENGINE_LOGS/apt.log" 2>&1; then
    tail -n 20 "$ENGINE_LOGS/apt.log" >&2
    engine_say "apt-get install ${missing[*]} failed (see above)" >&2
    return 1
  fi
}

_engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

_engine_why_not() {
  ENGINE_SKIP_REASON="$1"
  engine_say "$1; last lines of $2:" >&2
  tail -n 15 "$2" >&2 || true
  return 3
}

engine_start() {
  if _engine_answers; then
    engine_say "using the Docker engine already running"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    ENGINE_SKIP_REASON="no Docker engine is running and starting one needs root"
    return 3
  fi
  ip link show docker0 >/dev/null 2>&1 && HAD_DOCKER0=1
  grep -q ' /run/docker/netns/default ' /proc/mounts && HAD_NETNS_MOUNT=1
  # `ctr version` answers only when a containerd serves the default socket (a stale socket file
  # or a zombie process does not count).
  if ! timeout 5 ctr --connect-timeout 1s version >/dev/null 2>&1; then
    # setsid: a Ctrl-C of the run reaches the trap, which stops the stack before the engine.
    setsid containerd >"$ENGINE_LOGS/containerd.log" 2>&1 &
    STARTED_CONTAINERD_PID=$!
    engine_say "started containerd (pid $STARTED_CONTAINERD_PID)"
    local _
    for _ in $(seq 1 40); do
      timeout 5 ctr --connect-timeout 1s version >/dev/null 2>&1 && break
      kill -0 "$STARTED_CONTAINERD_PID" 2>/dev/null || break
      sleep 0.5
    done
    timeout 5 ctr --connect-timeout 1s version >/dev/null 2>&1 ||
      { _engine_why_not "containerd did not start" "$ENGINE_LOGS/containerd.log"; return 3; }
  fi
  setsid dockerd --containerd=/run/containerd/containerd.sock \
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    >"$ENGINE_LOGS/dockerd.log" 2>&1 &
  STARTED_DOCKERD_PID=$!
  engine_say "started dockerd (pid $STARTED_DOCKERD_PID)"
  local _
  for _ in $(seq 1 60); do
    _engine_answers && return 0
    kill -0 "$STARTED_DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  _engine_why_not "dockerd did not come up (a kernel or sandbox without what containers need?)" \
    "$ENGINE_LOGS/dockerd.log"
}

_engine_stop_pid() {
  local pid="$1" name="$2" waited=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 60 ]; do
    sleep 0.5
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    engine_say "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  engine_say "stopped $name (pid $pid)"
}

engine_stop() {
  if [ -n "$STARTED_DOCKERD_PID" ]; then
    _engine_stop_pid "$STARTED_DOCKERD_PID" dockerd
    STARTED_DOCKERD_PID=""
    if [ -z "$HAD_NETNS_MOUNT" ] && grep -q ' /run/docker/netns/default ' /proc/mounts; then
      umount /run/docker/netns/default || true
    fi
    if [ -z "$HAD_DOCKER0" ] && ip link show docker0 >/dev/null 2>&1; then
      ip link delete docker0 || true
    fi
  fi
  if [ -n "$STARTED_CONTAINERD_PID" ]; then
    _engine_stop_pid "$STARTED_CONTAINERD_PID" containerd
    STARTED_CONTAINERD_PID=""
  fi
}
