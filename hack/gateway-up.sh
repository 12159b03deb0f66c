#!/usr/bin/env bash
# The local control plane's Gateway API implementation: Traefik (built by hack/build-tools.sh,
# imaged by hack/images.sh) on the real node, from hack/gateway/gateway.yaml: its RBAC, a
# Deployment, a Service at the fixed ClusterIP GATEWAY_IP, the GatewayClass GATEWAY_CLASS and
# the Gateway GATEWAY_NAMESPACE/GATEWAY_NAME (hack/cluster-env.sh) with one HTTP listener, `web`,
# whose routes may come from any namespace. The host reaches it at http://GATEWAY_IP/ (port 80,
# through kube-proxy). Waits until the Gateway is Programmed with GATEWAY_IP in its
# status.addresses, then prints that address.
#
# Only with the real node (.cache/cluster/real-node says REAL_NODE=yes): kwok's fake nodes run
# no containers, so without it this says why and exits 0. Idempotent (server-side apply).
# Env: GATEWAY_UP_TIMEOUT (seconds, default 180), GATEWAY_IMAGE (default
#      modelservice-gateway:<Traefik's version>).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"

TIMEOUT="${GATEWAY_UP_TIMEOUT:-180}"
DEADLINE=$(($(date +%s) + TIMEOUT))
MANIFEST="${HACK_DIR}/gateway/gateway.yaml"
# Traefik's entryPoints inside the pod: the Gateway's listener port must be the web one's.
# shellcheck disable=SC2034  # both are read by render(), by name
WEB_PORT=8000 PING_PORT=9000

log() { printf '[gateway-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# At least 1: a timeout of 0 means none to kubectl.
left() { local t=$((DEADLINE - $(date +%s))); echo $((t > 0 ? t : 1)); }
kc() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" --request-timeout=10s "$@"; }

REAL_NODE_FILE="${CLUSTER_DIR}/real-node"
[[ -f "${REAL_NODE_FILE}" ]] || die "${REAL_NODE_FILE} is missing; run hack/cluster-up.sh first"
if ! grep -qx REAL_NODE=yes "${REAL_NODE_FILE}"; then
  log "no real node ($(sed -n 's/^REAL_NODE_REASON=//p' "${REAL_NODE_FILE}")): no Gateway" \
    "implementation runs; HTTPRoutes are stored but nothing serves them"
  exit 0
fi

# The image must be in the node's containerd already (imagePullPolicy: Never): say so now
# rather than leave a pod in ErrImageNeverPull.
image_ref="${GATEWAY_IMAGE}"
[[ "${image_ref}" == */* ]] || image_ref="docker.io/library/${image_ref}"
ctr --address "${CONTAINERD_SOCK}" -n k8s.io images ls -q "name==${image_ref}" 2>/dev/null \
  | grep -qxF "${image_ref}" || die "${GATEWAY_IMAGE} is not in the real node's containerd; run hack/images.sh"

# The manifest's ${VAR}s, each replaced by this script's value; anything left over is a typo.
render() {
  local text var
  text="$(cat "${MANIFEST}")"
  for var in GATEWAY_NAMESPACE GATEWAY_CLASS GATEWAY_NAME GATEWAY_IP GATEWAY_IMAGE WEB_PORT PING_PORT; do
    text="${text//"\${${var}}"/${!var}}"
  done
  if grep -nE '\$\{[A-Za-z_]+\}' <<<"${text}" >&2; then die "${MANIFEST}: unknown variables (above)"; fi
  printf '%s\n' "${text}"
}

start="$(date +%s)"
log "applying ${MANIFEST} (Traefik ${TRAEFIK_VERSION}, image ${GATEWAY_IMAGE}, Service ${GATEWAY_IP})"
render | kc apply --server-side --field-manager=modelservice-gateway-up --force-conflicts -f - >/dev/null \
  || die "applying ${MANIFEST} failed"

diagnose() {
  log "pods in ${GATEWAY_NAMESPACE}:"
  kc get pods -n "${GATEWAY_NAMESPACE}" -o wide >&2 || true
  log "Traefik's last log lines:"
  kc logs -n "${GATEWAY_NAMESPACE}" deploy/traefik --tail=25 >&2 || true
  kc get gateway -n "${GATEWAY_NAMESPACE}" "${GATEWAY_NAME}" -o yaml >&2 || true
}

# Without kc's --request-timeout: rollout status watches for up to the deadline.
if ! "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" rollout status -n "${GATEWAY_NAMESPACE}" \
  deploy/traefik --timeout="$(left)s" >/dev/null; then
  diagnose
  die "Traefik's pod did not become ready in ${TIMEOUT}s"
fi

# Traefik writes the Gateway's status once it has loaded it: Programmed, and the address
# --providers.kubernetesgateway.statusaddress.ip gave it.
programmed() {
  local got
  got="$(kc get gateway -n "${GATEWAY_NAMESPACE}" "${GATEWAY_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Programmed")].status} {.status.addresses[*].value}' 2>/dev/null)" || return 1
  [[ "${got}" == "True ${GATEWAY_IP}" ]]
}
until programmed; do
  if [[ "$(date +%s)" -ge "${DEADLINE}" ]]; then
    diagnose
    die "Gateway ${GATEWAY_NAMESPACE}/${GATEWAY_NAME} is not Programmed with address ${GATEWAY_IP} after ${TIMEOUT}s"
  fi
  sleep 1
done
log "Gateway ${GATEWAY_NAMESPACE}/${GATEWAY_NAME} (class ${GATEWAY_CLASS}) Programmed in $(($(date +%s) - start))s;" \
  "HTTPRoutes attach to it with parentRefs [{namespace: ${GATEWAY_NAMESPACE}, name: ${GATEWAY_NAME}}];" \
  "the host reaches it at http://${GATEWAY_IP}/"
echo "${GATEWAY_IP}"
