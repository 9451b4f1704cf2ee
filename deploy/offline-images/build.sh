#!/usr/bin/env bash
# Make every public base image that the Dockerfile and compose.yaml name available to the local
# Docker engine: pull it; only when the pull fails (no route to the public registry), build a
# stand-in from Debian packages with the recipe in this folder and tag it with the public name.
#
#   bash deploy/offline-images/build.sh        (needs a running engine; run as root for debootstrap)
#
# A stand-in carries the label org.taskapi.offline-stand-in. One found locally is replaced as soon
# as the real image can be pulled, so a stand-in is never used where the real image is reachable.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BASE=taskapi-offline/debian:bookworm
LOG="${OFFLINE_IMAGES_LOG:-$(mktemp -t offline-images.XXXXXX.log)}"
PULL_TIMEOUT="${OFFLINE_IMAGES_PULL_TIMEOUT:-120}"

# public name -> recipe folder[:build target]. python comes first: the MinIO stand-ins build on it.
IMAGES=(
  "python:3.11-slim=python"
  "postgres:15=postgres"
  "redis:7=redis"
  "haproxy:2.6=haproxy"
  "minio/minio:latest=minio:server"
  "minio/mc:latest=minio:mc"
)

# Temporary folders (a root file system, build contexts): removed on every exit, failures included.
TEMP_DIRS=()
# shellcheck disable=SC2317  # called by the EXIT traps
cleanup() { if [ "${#TEMP_DIRS[@]}" -gt 0 ]; then rm -rf "${TEMP_DIRS[@]}"; fi; }
trap cleanup EXIT

say() { printf 'offline-images: %s\n' "$*"; }

fail() {
  say "$*" >&2
  say "last lines of $LOG:" >&2
  tail -n 40 "$LOG" >&2 || true
  exit 1
}

stand_in_of() { docker image inspect -f '{{ index .Config.Labels "org.taskapi.offline-stand-in" }}' "$1" 2>/dev/null; }

try_pull() { timeout "$PULL_TIMEOUT" docker pull -q "$1" >>"$LOG" 2>&1; }

# The Debian mirror this host's apt uses (so a host behind its own mirror builds the same way);
# empty lets debootstrap use its default.
host_mirror() {
  local sources
  for sources in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -f "$sources" ] || continue
    awk '/^URIs:/ { print $2; exit } /^deb / { print $2; exit }' "$sources"
    return
  done
}

# The host's pip index, when it has one of its own (http or https only: a file:// index of the
# host does not exist inside a build).
host_pip_index() {
  local index="${PIP_INDEX_URL:-}"
  if [ -z "$index" ] && command -v pip3 >/dev/null; then
    index="$(pip3 config get global.index-url 2>/dev/null || true)"
  fi
  case "$index" in http://* | https://*) printf '%s' "$index" ;; esac
}

build_base() {
  local rootfs
  rootfs="$(mktemp -d -t taskapi-offline-rootfs.XXXXXX)"
  TEMP_DIRS+=("$rootfs")
  say "building $BASE with debootstrap (minbase bookworm, about a minute)"
  # shellcheck disable=SC2046  # an empty mirror must vanish, not become an empty argument
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" $(host_mirror) \
    >>"$LOG" 2>&1 || fail "debootstrap failed"
  install -m 0644 "$HERE/debian/dpkg-nodoc.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/taskapi-nodoc"
  install -m 0644 "$HERE/debian/apt-slim.conf" "$rootfs/etc/apt/apt.conf.d/taskapi-slim"
  # HTTPS from inside a build passes the same interception proxy as the host's, if the host has
  # one: trust the local CAs the host trusts (this image is built here and never pushed).
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >>"$LOG" 2>&1 || fail "update-ca-certificates failed"
  fi
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    local index
    index="$(host_pip_index)"
    if [ -n "$index" ]; then echo "index-url = $index"; fi
  } >"$rootfs/etc/pip.conf"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  tar -C "$rootfs" -c . | docker import \
    --change 'LABEL org.taskapi.offline-stand-in="debian:bookworm"' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$BASE" >>"$LOG" 2>&1 || fail "docker import of $BASE failed"
  rm -rf "$rootfs"
}

build_stand_in() {
  local image="$1" recipe="$2" target="$3" context
  context="$(mktemp -d -t taskapi-offline-context.XXXXXX)"
  TEMP_DIRS+=("$context")
  cp -a "$HERE/$recipe/." "$context/"
  # The MinIO stand-in installs moto at the versions of the project's own dev lock.
  if [ "$recipe" = minio ]; then cp "$ROOT/requirements-dev.lock" "$context/"; fi
  say "building a stand-in for $image from $recipe/"
  # Host networking: the engine this project starts leaves the host's firewall alone, so builds
  # reach the package mirrors the way the host does rather than through a NAT of their own.
  docker build --network host ${target:+--target "$target"} -t "$image" "$context" >>"$LOG" 2>&1 \
    || fail "building the stand-in for $image failed"
  rm -rf "$context"
}

# Arguments pick images by public name (default: all).
wanted=("$@")
to_build=()
for entry in "${IMAGES[@]}"; do
  image="${entry%%=*}"
  if [ "${#wanted[@]}" -gt 0 ] && [[ " ${wanted[*]} " != *" $image "* ]]; then continue; fi
  if docker image inspect "$image" >/dev/null 2>&1; then
    if [ -z "$(stand_in_of "$image")" ]; then
      say "$image: present (the real image)"
    elif try_pull "$image"; then
      say "$image: the real image is reachable now and replaced the stand-in"
    else
      say "$image: stand-in (the public registry is unreachable)"
    fi
  elif try_pull "$image"; then
    say "$image: pulled"
  else
    to_build+=("$entry")
  fi
done
[ "${#to_build[@]}" -gt 0 ] || exit 0

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  started=$SECONDS
  build_base
  say "$BASE built in $((SECONDS - started)) s"
fi

build() {
  local entry="$1" started=$SECONDS recipe="${1#*=}" target=""
  if [[ "$recipe" == *:* ]]; then
    target="${recipe#*:}"
    recipe="${recipe%%:*}"
  fi
  build_stand_in "${entry%%=*}" "$recipe" "$target"
  say "${entry%%=*}: stand-in built in $((SECONDS - started)) s"
}

# python first, on its own: the MinIO stand-ins build on it. The others are downloads more than
# computation, so they are built side by side, one job per recipe folder (the two MinIO images
# share one, so the second reuses the first's cached layers).
jobs=()
for entry in "${to_build[@]}"; do
  if [ "${entry%%=*}" = python:3.11-slim ]; then
    build "$entry"
    continue
  fi
  recipe="${entry#*=}"
  recipe="${recipe%%:*}"
  for i in "${!jobs[@]}"; do
    if [ "${jobs[$i]%%|*}" = "$recipe" ]; then
      jobs[i]="${jobs[$i]} $entry"
      continue 2
    fi
  done
  jobs+=("$recipe|$entry")
done
pids=()
for job in "${jobs[@]}"; do
  (
    TEMP_DIRS=()
    trap cleanup EXIT
    LOG="$LOG.${job%%|*}"
    for entry in ${job#*|}; do build "$entry"; done
  ) &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
