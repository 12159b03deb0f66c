#!/usr/bin/env bash
# Start the local control plane: `kwokctl create cluster --runtime binary` running etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok and metrics-server as local
# processes from <repo>/.cache/bin (hack/build-tools.sh), create the fake nodes from
# hack/kwok/nodes.yaml, install the Gateway API's CRDs (v1.6.x, standard channel; the
# implementation, Traefik, is hack/gateway-up.sh's), and, where this host can (Linux, root: hack/node-up.sh
# check), one real node whose pods run real containers (hack/node-up.sh). Nothing is
# downloaded.
# Idempotent: a healthy cluster is left alone.
#
# Output: kubeconfig at <repo>/.cache/cluster/kubeconfig (printed on the last line), and
# .cache/cluster/real-node (REAL_NODE=yes|no and the reason), which the tests read.
# Env: CLUSTER_UP_TIMEOUT (seconds, default 300), KWOKCTL_VERBOSITY (e.g. debug),
#      MODELSERVICE_REAL_NODE (auto = where possible, default; 0 = fake nodes only).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"

TIMEOUT="${CLUSTER_UP_TIMEOUT:-300}"
DEADLINE=$(($(date +%s) + TIMEOUT))

log() { printf '[cluster-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
left() { echo $((DEADLINE - $(date +%s))); }

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl \
  metrics-server; do  # kubelet and kube-proxy: hack/node-up.sh check
  [[ -x "${BIN_DIR}/${b}" ]] || die "${BIN_DIR}/${b} is missing; run hack/build-tools.sh first"
done

kc() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" --request-timeout=10s "$@"; }

REAL_NODE_FILE="${CLUSTER_DIR}/real-node"
if [[ "${MODELSERVICE_REAL_NODE:-auto}" == 0 ]]; then
  real_node=no real_node_reason="MODELSERVICE_REAL_NODE=0"
elif real_node_reason="$("${HACK_DIR}/node-up.sh" check)"; then
  real_node=yes real_node_reason=""
else
  real_node=no
  log "warning: no real node on this host: ${real_node_reason}; pods will only be kwok fakes"
fi

node_running() {
  [[ -f "${NODE_DIR}/kubelet.pid" ]] && kill -0 "$(cat "${NODE_DIR}/kubelet.pid")" 2>/dev/null
}

healthy() {
  [[ -f "${KUBECONFIG_FILE}" ]] && kc get --raw /readyz >/dev/null 2>&1
}

nodes_ready() {
  local want=3 ready
  ready="$(kc get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
    2>/dev/null | grep -c '^True$' || true)"
  [[ "${ready}" -ge "${want}" ]]
}

cluster_exists() {
  [[ -d "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}" ]]
}

write_config() {
  mkdir -p "${CLUSTER_DIR}"
  # The KwokctlConfiguration points every component at a local binary (an https:// default
  # would be downloaded); the other documents go to the kwok controller.
  local bind=127.0.0.1
  # Pods reach the apiserver at the node's address (the kubernetes Service's endpoint), host
  # clients at 127.0.0.1 (kwokctl's kubeconfig): one bind address serves both only if it is
  # all of them; hack/node-up.sh then drops connections to these ports from other interfaces.
  [[ "${real_node}" == yes ]] && bind=0.0.0.0
  cat >"${CLUSTER_DIR}/kwokctl.yaml" <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: ${bind}
  # In-cluster clients dial the kubernetes Service's address.
  kubeApiserverCertSANs: [${API_SERVICE_IP}, ${NODE_IP}]
  kubeApiserverBinary: ${BIN_DIR}/kube-apiserver
  kubeControllerManagerBinary: ${BIN_DIR}/kube-controller-manager
  kubeSchedulerBinary: ${BIN_DIR}/kube-scheduler
  kubectlBinary: ${BIN_DIR}/kubectl
  etcdBinary: ${BIN_DIR}/etcd
  kwokControllerBinary: ${BIN_DIR}/kwok
  metricsServerBinary: ${BIN_DIR}/metrics-server
  metricsServerManifests:
  - ${HACK_DIR}/kwok/metrics-server
  enableMetricsServer: true
  quietPull: true
componentsPatches:
- name: kube-apiserver
  extraArgs:
  # Inside 198.18.0.0/15 (test networks), and large: the default (10.0.0.0/24) holds only
  # ~250 Services, too few for the operator-scale benchmark's 1000 ModelServices.
  - key: service-cluster-ip-range
    value: ${SERVICE_CIDR}
  # The endpoint of the kubernetes Service: the real node's pods reach it on the bridge.
  - key: advertise-address
    value: ${NODE_IP}
  # logs, exec and port-forward dial the kubelet by address, with the admin certificate
  # (the real node's kubelet checks it against the cluster CA).
  - key: kubelet-preferred-address-types
    value: InternalIP
  - key: kubelet-client-certificate
    value: ${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pki/admin.crt
  - key: kubelet-client-key
    value: ${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pki/admin.key
- name: kwok-controller
  extraArgs:
  # kwok fakes only the nodes annotated as fake (hack/kwok/nodes.yaml), never the real one.
  # kwokctl passes --manage-all-nodes=true first; the later flag wins.
  - key: manage-all-nodes
    value: "false"
  - key: manage-nodes-with-annotation-selector
    value: kwok.x-k8s.io/node=fake
  # Fake pods' addresses inside 198.18.0.0/15 too (kwok's default is 10.0.0.0/24): kube-proxy
  # programs them as Service endpoints, and the host routes the whole range to the bridge.
  - key: cidr
    value: ${FAKE_POD_CIDR}
- name: kube-controller-manager
  extraArgs:
  # Short HPA loop so autoscaling tests see decisions within seconds.
  - key: horizontal-pod-autoscaler-sync-period
    value: 5s
  - key: horizontal-pod-autoscaler-downscale-stabilization
    value: 15s
  - key: horizontal-pod-autoscaler-cpu-initialization-period
    value: 10s
  - key: horizontal-pod-autoscaler-initial-readiness-delay
    value: 5s
- name: metrics-server
  extraArgs:
  # metrics-server refuses a resolution that is not above the kubelet request timeout.
  - key: metric-resolution
    value: 10s
  - key: kubelet-request-timeout
    value: 5s
---
$(cat "${HACK_DIR}/kwok/resource-usage.yaml")
---
$(cat "${HACK_DIR}/kwok/metrics-resource.yaml")
EOF
}

apply_nodes() {
  kc apply -f "${HACK_DIR}/kwok/nodes.yaml" >/dev/null || die "applying hack/kwok/nodes.yaml failed"
}

# The Gateway API's CRDs (hack/build-tools.sh fetched them): server-side, since the route
# CRDs are larger than client-side apply's last-applied annotation may be.
apply_gateway_api() {
  compgen -G "${GATEWAY_API_CRDS}/*.yaml" >/dev/null \
    || die "the Gateway API CRDs are missing from ${GATEWAY_API_CRDS}; run hack/build-tools.sh first"
  kc apply --server-side --force-conflicts -f "${GATEWAY_API_CRDS}" >/dev/null \
    || die "applying the Gateway API ${GATEWAY_API_VERSION} CRDs failed"
  kc wait --for=condition=Established --timeout="$(left)s" \
    crd/httproutes.gateway.networking.k8s.io crd/gateways.gateway.networking.k8s.io >/dev/null \
    || die "the Gateway API CRDs did not become Established"
}

wait_for() { # description command...
  local what="$1"
  shift
  until "$@"; do
    [[ "$(left)" -gt 0 ]] || die "timed out after ${TIMEOUT}s waiting for ${what}"
    sleep 2
  done
}

write_real_node_file() {
  printf 'REAL_NODE=%s\nREAL_NODE_REASON=%q\n' "${real_node}" "${real_node_reason}" >"${REAL_NODE_FILE}"
}

# A healthy cluster made in the other mode (with or without the real node) is made anew.
if healthy && grep -qx "REAL_NODE=${real_node}" "${REAL_NODE_FILE}" 2>/dev/null; then
  apply_nodes
  apply_gateway_api
  wait_for "3 kwok nodes to be Ready" nodes_ready
  if [[ "${real_node}" == yes ]] && ! node_running; then
    "${HACK_DIR}/node-up.sh" node
  fi
  log "cluster '${CLUSTER_NAME}' already running"
  echo "${KUBECONFIG_FILE}"
  exit 0
fi

if cluster_exists; then
  log "cluster '${CLUSTER_NAME}' exists but is not healthy; recreating it"
  "${HACK_DIR}/cluster-down.sh"
fi

if [[ "${real_node}" == yes ]]; then
  # Before the control plane: the apiserver advertises the bridge's address.
  "${HACK_DIR}/node-up.sh" network
fi
write_config
write_real_node_file
mkdir -p "${KWOK_WORKDIR}"
log "creating cluster '${CLUSTER_NAME}' with kwokctl (binary runtime, state in ${KWOK_WORKDIR})"
start="$(date +%s)"
verbosity=()
[[ -n "${KWOKCTL_VERBOSITY:-}" ]] && verbosity=(-v "${KWOKCTL_VERBOSITY}")
if ! "${BIN_DIR}/kwokctl" "${verbosity[@]}" --name "${CLUSTER_NAME}" create cluster \
  --config "${CLUSTER_DIR}/kwokctl.yaml" \
  --kubeconfig "${KUBECONFIG_FILE}" \
  --timeout "$(left)s" --wait "$(left)s"; then
  log "kwokctl create cluster failed; component logs: ${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/logs"
  exit 1
fi
log "control plane up in $(($(date +%s) - start))s"

wait_for "the apiserver at $(kc config view --minify -o jsonpath='{.clusters[0].cluster.server}') to be ready" healthy
apply_nodes
apply_gateway_api
wait_for "3 kwok nodes to be Ready" nodes_ready

metrics_available() {
  [[ "$(kc get apiservice v1beta1.metrics.k8s.io \
    -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" == True ]]
}
ms_deadline=$(($(date +%s) + 60))
until metrics_available; do
  if [[ "$(date +%s)" -ge "${ms_deadline}" || "$(left)" -le 0 ]]; then
    log "warning: metrics.k8s.io is not Available after 60s; HPA on CPU will not work" \
      "(metrics-server log: ${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/logs/metrics-server.log)"
    break
  fi
  sleep 2
done

if [[ "${real_node}" == yes ]]; then
  "${HACK_DIR}/node-up.sh" node
fi

log "ready in $(($(date +%s) - start))s; nodes: $(kc get nodes -o name | tr '\n' ' ')"
log "export KUBECONFIG=${KUBECONFIG_FILE}"
echo "${KUBECONFIG_FILE}"
