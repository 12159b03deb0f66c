#!/usr/bin/env bash
# Stop the local control plane started by hack/cluster-up.sh and remove its state
# (<repo>/.cache/cluster). Safe to run when nothing is running. Every process kwokctl started
# is checked by the PID it recorded; one that survives `kwokctl delete cluster` is stopped by
# that PID (never by name).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"

log() { printf '[cluster-down] %s\n' "$*" >&2; }

# The real node first, while the API is up to stop its pods (a no-op when there is none).
"${HACK_DIR}/node-down.sh"

PID_DIR="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pids"
pids=()
if [[ -d "${PID_DIR}" ]]; then
  for f in "${PID_DIR}"/*.pid; do
    [[ -f "${f}" ]] || continue
    pid="$(tr -dc '0-9' <"${f}")"
    [[ -n "${pid}" ]] && pids+=("${pid}")
  done
fi

if [[ -d "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" ]]; then
  if [[ -x "${BIN_DIR}/kwokctl" ]]; then
    log "deleting cluster '${CLUSTER_NAME}'"
    "${BIN_DIR}/kwokctl" --name "${CLUSTER_NAME}" delete cluster \
      --kubeconfig "${KUBECONFIG_FILE}" >&2 ||
      log "warning: kwokctl delete cluster failed; stopping its processes by PID"
  else
    log "warning: ${BIN_DIR}/kwokctl is missing; stopping the cluster's processes by PID"
  fi
else
  log "no cluster '${CLUSTER_NAME}' under ${KWOK_WORKDIR}; nothing to stop"
fi

# Anything still alive from the recorded PIDs: TERM, wait up to 10s, then KILL.
# A PID counts only while its command line still names this cluster's directory (PID reuse).
alive() {
  kill -0 "$1" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}"
}
for pid in "${pids[@]}"; do
  alive "${pid}" || continue
  log "process ${pid} ($(ps -o comm= -p "${pid}" || true)) survived delete; sending TERM"
  kill "${pid}" 2>/dev/null || true
done
deadline=$(($(date +%s) + 10))
for pid in "${pids[@]}"; do
  while alive "${pid}" && [[ "$(date +%s)" -lt "${deadline}" ]]; do sleep 0.5; done
  if alive "${pid}"; then
    log "process ${pid} ignored TERM for 10s; sending KILL"
    kill -9 "${pid}" 2>/dev/null || true
  fi
done

# kwokctl caches the built metrics-server manifest by path: drop it so edits take effect.
rm -rf "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" "${KWOK_WORKDIR}/cache" "${KUBECONFIG_FILE}" \
  "${CLUSTER_DIR}/kwokctl.yaml" "${CLUSTER_DIR}/real-node"
log "stopped"
