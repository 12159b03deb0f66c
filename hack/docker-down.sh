#!/usr/bin/env bash
# Stop the dockerd that hack/docker-up.sh started (by its recorded PID); an engine this
# project did not start is left alone. Its images stay in Docker's data root for next time.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"
PID_FILE="${ROOT_DIR}/.cache/docker/dockerd.pid"
[[ -f "${PID_FILE}" ]] || exit 0
pid="$(cat "${PID_FILE}")"
if kill -0 "${pid}" 2>/dev/null && tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -q dockerd; then
  kill "${pid}"
  deadline=$(($(date +%s) + 30))
  while kill -0 "${pid}" 2>/dev/null && [[ "$(date +%s)" -lt "${deadline}" ]]; do sleep 0.5; done
  kill -0 "${pid}" 2>/dev/null && kill -9 "${pid}"
  printf '[docker-down] stopped dockerd (pid %s)\n' "${pid}" >&2
  # dockerd leaves its default network namespace bind-mounted under its exec root.
  { grep -o " ${DOCKER_EXEC_ROOT}/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount "${m}" || true; done
  rm -rf "${DOCKER_EXEC_ROOT}"
fi
rm -f "${PID_FILE}"
