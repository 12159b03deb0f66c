#!/usr/bin/env bash
# Take the real node down and leave the host as hack/node-up.sh found it: pods stopped
# through the kubelet while the API is still up (so CNI releases their addresses and links),
# then kubelet, kube-proxy and containerd stopped by their PIDs, the containerd shims of this
# node's socket, kube-proxy's chains, and finally everything hack/hoststate.py recorded
# (iptables rules and chains, sysctls, mounts under the node's dirs, links). Safe to run when
# nothing is up; called by hack/cluster-down.sh before the control plane stops.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"

log() { printf '[node-down] %s\n' "$*" >&2; }
kc() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" --request-timeout=10s "$@"; }
ctr_() { ctr --address "${CONTAINERD_SOCK}" -n k8s.io "$@"; }

pid_of() { [[ -f "${NODE_DIR}/$1.pid" ]] && cat "${NODE_DIR}/$1.pid"; }
alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

stop_pid() { # name pid
  local name="$1" pid="$2" deadline
  alive "${pid}" || return 0
  kill "${pid}" 2>/dev/null || true
  deadline=$(($(date +%s) + 15))
  while alive "${pid}" && [[ "$(date +%s)" -lt "${deadline}" ]]; do sleep 0.3; done
  if alive "${pid}"; then
    log "${name} (pid ${pid}) ignored TERM for 15s; sending KILL"
    kill -9 "${pid}" 2>/dev/null || true
  fi
  log "stopped ${name} (pid ${pid})"
}

# 1. Pods, through the kubelet: it stops their containers and CNI tears their network down.
if alive "$(pid_of kubelet)" && [[ -f "${KUBECONFIG_FILE}" ]] && kc get --raw /readyz >/dev/null 2>&1; then
  if kc get node "${NODE_NAME}" >/dev/null 2>&1; then
    # Cordoned first, so the replacement pods of Deployments (the gateway's Traefik, an
    # operator's) stay Pending instead of starting here while the node goes down.
    kc cordon "${NODE_NAME}" >/dev/null 2>&1 || true
    log "deleting the pods on ${NODE_NAME}"
    kc delete pods -A --field-selector "spec.nodeName=${NODE_NAME}" --grace-period=2 \
      --wait=true --timeout=60s >/dev/null 2>&1 || log "warning: some pods did not go in 60s"
    # The kubelet removes a sandbox shortly after its pod is gone; give it a moment.
    deadline=$(($(date +%s) + 30))
    while [[ -n "$(ctr_ tasks ls -q 2>/dev/null)" && "$(date +%s)" -lt "${deadline}" ]]; do sleep 1; done
    kc delete node "${NODE_NAME}" --wait=false >/dev/null 2>&1 || true
  fi
fi

# 2. The node's daemons, by the PIDs node-up recorded.
stop_pid kubelet "$(pid_of kubelet || true)"
stop_pid kube-proxy "$(pid_of kube-proxy || true)"

# 3. Whatever containers are left (a kubelet that died first): kill their tasks through
#    containerd, then containerd itself, then its shims (they outlive containerd by design;
#    each names this node's socket in its command line, which is how they are found).
containerd_pid="$(pid_of containerd || true)"
if alive "${containerd_pid}"; then
  for task in $(ctr_ tasks ls -q 2>/dev/null); do
    ctr_ tasks kill -s SIGKILL "${task}" >/dev/null 2>&1 || true
  done
  sleep 1
  for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "${task}" >/dev/null 2>&1 || true; done
  stop_pid containerd "${containerd_pid}"
fi
for proc in /proc/[0-9]*; do
  pid="${proc#/proc/}"
  if tr '\0' ' ' <"${proc}/cmdline" 2>/dev/null | grep -qF -- "-address ${CONTAINERD_SOCK} "; then
    stop_pid "containerd-shim" "${pid}"
  fi
done

# 4. kube-proxy's own chains (it knows them best); the diff below catches kubelet's and the rest.
if [[ -x "${BIN_DIR}/kube-proxy" && -d "${HOSTSTATE_DIR}" ]]; then
  "${BIN_DIR}/kube-proxy" --cleanup >/dev/null 2>&1 || true
fi

# 5. cgroups the kubelet made for pods (empty now that their processes are gone).
for root in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [[ -d "${root}" ]] && find "${root}" -depth -type d -exec rmdir {} + 2>/dev/null || true
done

# 6. Everything recorded before the node changed the host.
if [[ -d "${HOSTSTATE_DIR}" ]]; then
  python3 "${HACK_DIR}/hoststate.py" restore "${HOSTSTATE_DIR}" \
    --mounts-under "${NODE_DIR}" "${NODE_RUN_DIR}"
fi

# The kubelet's state and credentials belong to this cluster (its CA is made anew with each
# control plane); containerd's image store is kept, so the next node-up need not re-import.
rm -rf --one-file-system "${NODE_RUN_DIR}" "${NODE_DIR}/kubelet" "${NODE_DIR}/kubelet-pki" \
  "${NODE_DIR}/cni/ipam"
rm -f "${NODE_DIR}"/*.pid
log "node down"
