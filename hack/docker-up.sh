#!/usr/bin/env bash
# Make sure a Docker engine answers, for `make images`. A running engine (a user's Docker
# Desktop, a system service) is used as it is. Otherwise, as root with Debian's docker.io
# installed (hack/host-deps.sh), this starts dockerd itself, with no bridge, no iptables
# rules and no masquerading (the host's network stays as it was; builds use --network host),
# records its PID in .cache/docker/dockerd.pid, and hack/docker-down.sh stops it by that PID.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"
STATE_DIR="${ROOT_DIR}/.cache/docker"
log() { printf '[docker-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

docker info >/dev/null 2>&1 && exit 0
command -v docker >/dev/null 2>&1 || die "no docker command; install Docker (on Debian: apt-get install docker.io)"
command -v dockerd >/dev/null 2>&1 ||
  die "no Docker engine answers and dockerd is not installed (on Debian, as root: apt-get install docker.io, or hack/host-deps.sh)"
[[ "$(id -u)" == 0 ]] || die "no Docker engine answers, and starting dockerd needs root"

mkdir -p "${STATE_DIR}"
log "starting dockerd (no bridge, no iptables; log ${STATE_DIR}/dockerd.log)"
start="$(date +%s)"
setsid dockerd --iptables=false --ip-masq=false --bridge=none \
  --exec-root "${DOCKER_EXEC_ROOT}" --pidfile "${STATE_DIR}/dockerd.pid" \
  >"${STATE_DIR}/dockerd.log" 2>&1 </dev/null &
deadline=$(($(date +%s) + 60))
until docker info >/dev/null 2>&1; do
  if [[ "$(date +%s)" -ge "${deadline}" ]] || ! kill -0 $! 2>/dev/null; then
    tail -n 20 "${STATE_DIR}/dockerd.log" >&2 || true
    die "dockerd did not answer within 60s"
  fi
  sleep 0.5
done
log "dockerd up in $(($(date +%s) - start))s (pid $(cat "${STATE_DIR}/dockerd.pid"))"
