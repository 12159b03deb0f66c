#!/usr/bin/env bash
# The real node of the local control plane: containerd (CRI), a CNI bridge, kubelet and
# kube-proxy on this host, so pods run real containers beside kwok's fake nodes. Called by
# hack/cluster-up.sh in two steps (see hack/README.md, "The real node"):
#
#   hack/node-up.sh check     # exit 0 if this host can run the node, else print why (exit 1)
#   hack/node-up.sh network   # before the control plane: record host state, the bridge + guard
#   hack/node-up.sh node      # after it: containerd, pause image, kubelet, kube-proxy; wait Ready
#
# Everything it starts or changes is recorded under .cache/node (PIDs, hoststate/) and undone
# by hack/node-down.sh. Idempotent: a running, Ready node is left alone.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"

PKI_DIR="${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pki"
LOG_DIR="${NODE_DIR}/logs"
TIMEOUT="${NODE_UP_TIMEOUT:-180}"

log() { printf '[node-up] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
step_start=0
step() { step_start="$(date +%s)"; log "$*"; }
took() { log "  done in $(($(date +%s) - step_start))s"; }
tail_log() { log "last lines of $1:"; tail -n 25 "$1" >&2 || true; }

kc() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_FILE}" --request-timeout=10s "$@"; }

# --- check -----------------------------------------------------------------------------------

# Prints the first reason this host cannot run the real node; prints nothing if it can.
why_not() {
  [[ "$(uname -s)" == Linux ]] || { echo "not Linux ($(uname -s))"; return; }
  [[ "$(id -u)" == 0 ]] || { echo "not root (kubelet, containerd and the bridge need root)"; return; }
  local b
  for b in containerd containerd-shim-runc-v2 runc ctr iptables ip; do
    command -v "${b}" >/dev/null 2>&1 ||
      { echo "${b} is missing (hack/host-deps.sh installs Debian's docker.io, containerd, iptables)"; return; }
  done
  for b in bridge host-local loopback; do
    [[ -x "/usr/lib/cni/${b}" ]] ||
      { echo "CNI plugin /usr/lib/cni/${b} is missing (apt-get install containernetworking-plugins)"; return; }
  done
  [[ -d /proc/sys/net/bridge ]] ||
    { echo "bridge netfilter (br_netfilter) is not available in this kernel"; return; }
  for b in kubelet kube-proxy; do
    [[ -x "${BIN_DIR}/${b}" ]] || { echo "${BIN_DIR}/${b} is missing (hack/build-tools.sh)"; return; }
  done
}

# --- network ---------------------------------------------------------------------------------

network_up() {
  if [[ -d "${HOSTSTATE_DIR}" ]]; then
    # A recorded state means an earlier node was not taken down: undo it before recording anew,
    # so the snapshot is of the host as it was.
    log "a previous node left state in ${HOSTSTATE_DIR}; undoing it first"
    "${HACK_DIR}/node-down.sh"
  fi
  step "recording the host's iptables, sysctls, mounts and links (${HOSTSTATE_DIR})"
  python3 "${HACK_DIR}/hoststate.py" snapshot "${HOSTSTATE_DIR}"
  took

  step "bridge ${BRIDGE} with the node address ${NODE_IP} (pods ${POD_CIDR}, services ${SERVICE_CIDR})"
  ip link add "${BRIDGE}" type bridge
  ip addr add "${NODE_IP}/${POD_CIDR#*/}" dev "${BRIDGE}"
  ip link set "${BRIDGE}" up
  # Host traffic for a Service address kube-proxy has not rewritten, or for a kwok fake pod's
  # address, would otherwise follow the default route off the machine; this keeps the whole
  # test range on the bridge (the pods' /24 stays the more specific, connected route).
  ip route add "${TEST_NET}" dev "${BRIDGE}"
  # Pods talk to each other through Services: their replies cross the bridge, and must pass
  # iptables to be un-NATed. Forwarding is on for pod -> Service -> pod on the same bridge.
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  echo 1 >/proc/sys/net/ipv4/ip_forward
  # Nothing leaves the pod network: no pod has a default route, and this drops anything
  # forwarded from the bridge to any other interface.
  iptables -w -N MODELSERVICE-NODE-FORWARD
  iptables -w -A MODELSERVICE-NODE-FORWARD -i "${BRIDGE}" ! -o "${BRIDGE}" -j DROP
  iptables -w -I FORWARD 1 -j MODELSERVICE-NODE-FORWARD
  took
}

# The control plane listens on every address (pods reach the apiserver at ${NODE_IP}, host
# clients at 127.0.0.1); this drops connections to its ports from any interface but loopback
# and the bridge.
guard_control_plane() {
  local pids=() ports=() f
  for f in "${KWOK_WORKDIR}/clusters/${CLUSTER_NAME}/pids"/*.pid; do
    [[ -f "${f}" ]] && pids+=("$(tr -dc '0-9' <"${f}")")
  done
  [[ "${#pids[@]}" -gt 0 ]] || return 0
  local pid_re
  pid_re="$(IFS='|'; echo "${pids[*]}")"
  mapfile -t ports < <(ss -Hltnp | awk -v re="pid=(${pid_re})," '$0 ~ re { n = split($4, a, ":"); print a[n] }' | sort -un)
  [[ "${#ports[@]}" -gt 0 ]] || return 0
  iptables -w -N MODELSERVICE-NODE-GUARD 2>/dev/null || iptables -w -F MODELSERVICE-NODE-GUARD
  iptables -w -A MODELSERVICE-NODE-GUARD -i lo -j RETURN
  iptables -w -A MODELSERVICE-NODE-GUARD -i "${BRIDGE}" -j RETURN
  iptables -w -A MODELSERVICE-NODE-GUARD -p tcp -m multiport --dports "$(IFS=,; echo "${ports[*]}")" -j DROP
  iptables -w -C INPUT -j MODELSERVICE-NODE-GUARD 2>/dev/null || iptables -w -I INPUT 1 -j MODELSERVICE-NODE-GUARD
  log "control-plane ports ${ports[*]} accept loopback and ${BRIDGE} only"
}

# --- node ------------------------------------------------------------------------------------

running() { # pidfile
  [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_daemon() { # name logfile command...
  local name="$1" logfile="$2"
  shift 2
  # setsid: the daemon outlives this script (and make), and is stopped by its PID file.
  setsid "$@" >"${logfile}" 2>&1 </dev/null &
  echo $! >"${NODE_DIR}/${name}.pid"
}

wait_for() { # what seconds logfile command...
  local what="$1" deadline=$(($(date +%s) + $2)) logfile="$3"
  shift 3
  until "$@"; do
    if [[ "$(date +%s)" -ge "${deadline}" ]]; then
      tail_log "${logfile}"
      die "timed out waiting for ${what}"
    fi
    sleep 1
  done
}

write_containerd_config() {
  mkdir -p "${NODE_DIR}/containerd" "${NODE_DIR}/cni/net.d" "${NODE_RUN_DIR}"
  cat >"${NODE_DIR}/containerd/config.toml" <<EOF
# containerd for the real node's kubelet (hack/node-up.sh): its own socket, root and state, so
# it never meets Docker's containerd. Debian's containerd 1.6 (CRI v1).
version = 2
root = "${NODE_DIR}/containerd/root"
state = "${NODE_RUN_DIR}/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "${NODE_DIR}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Built by this script; containerd never pulls an image it already has.
  sandbox_image = "${PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: a negative oom_score_adj would fail every container start.
  restrict_oom_score_adj = true
  # Network namespaces under the state dir, not /var/run/netns: node-down finds them there.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # cgroup v1 without systemd: cgroupfs, as kubelet's cgroupDriver.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_DIR}/cni/net.d"
EOF
  # isGateway without isDefaultGateway: pods get routes to the pod and service ranges (and so
  # to the node's address) and no default route, so they reach this machine and nothing else.
  cat >"${NODE_DIR}/cni/net.d/10-modelservice.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "modelservice",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE_DIR}/cni/ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "${TEST_NET}"}]
      }
    }
  ]
}
EOF
}

containerd_up() {
  if running "${NODE_DIR}/containerd.pid"; then
    log "containerd already running (pid $(cat "${NODE_DIR}/containerd.pid"))"
    return
  fi
  step "containerd with CRI at ${CONTAINERD_SOCK}"
  write_containerd_config
  start_daemon containerd "${LOG_DIR}/containerd.log" containerd --config "${NODE_DIR}/containerd/config.toml"
  wait_for "containerd at ${CONTAINERD_SOCK}" 30 "${LOG_DIR}/containerd.log" \
    ctr --address "${CONTAINERD_SOCK}" version
  took
}

pause_image() {
  local tar="${NODE_DIR}/pause.tar"
  if ctr --address "${CONTAINERD_SOCK}" -n k8s.io images check "name==${PAUSE_IMAGE}" 2>/dev/null | grep -q complete; then
    return
  fi
  step "pause image ${PAUSE_IMAGE} (hack/pause, built with Go, packed without a registry)"
  (cd "${HACK_DIR}/pause" && CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags '-s -w' -o "${NODE_DIR}/pause" .)
  python3 "${HACK_DIR}/pause/ociarchive.py" "${NODE_DIR}/pause" "${PAUSE_IMAGE}" "${tar}"
  ctr --address "${CONTAINERD_SOCK}" -n k8s.io images import "${tar}" >/dev/null
  took
}

# A client certificate signed by the cluster CA, CN=system:node:<name>, O=system:nodes: the
# Node authorizer then lets the kubelet manage its own node and pods, no more.
kubelet_credentials() {
  local dir="${NODE_DIR}/kubelet-pki"
  [[ -f "${dir}/kubelet.kubeconfig" ]] && return
  [[ -f "${PKI_DIR}/ca.key" ]] || die "${PKI_DIR}/ca.key is missing: is the control plane up?"
  mkdir -p "${dir}"
  openssl req -new -newkey rsa:2048 -nodes -keyout "${dir}/client.key" -out "${dir}/client.csr" \
    -subj "/O=system:nodes/CN=system:node:${NODE_NAME}" 2>/dev/null
  openssl x509 -req -in "${dir}/client.csr" -CA "${PKI_DIR}/ca.crt" -CAkey "${PKI_DIR}/ca.key" \
    -CAcreateserial -out "${dir}/client.crt" -days 30 2>/dev/null
  local server
  server="$(kc config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  "${BIN_DIR}/kubectl" config --kubeconfig "${dir}/kubelet.kubeconfig" set-cluster local \
    --server "${server}" --certificate-authority "${PKI_DIR}/ca.crt" >/dev/null
  "${BIN_DIR}/kubectl" config --kubeconfig "${dir}/kubelet.kubeconfig" set-credentials kubelet \
    --client-certificate "${dir}/client.crt" --client-key "${dir}/client.key" >/dev/null
  "${BIN_DIR}/kubectl" config --kubeconfig "${dir}/kubelet.kubeconfig" set-context local \
    --cluster local --user kubelet >/dev/null
  "${BIN_DIR}/kubectl" config --kubeconfig "${dir}/kubelet.kubeconfig" use-context local >/dev/null
}

kubelet_up() {
  if running "${NODE_DIR}/kubelet.pid"; then
    log "kubelet already running (pid $(cat "${NODE_DIR}/kubelet.pid"))"
    return
  fi
  step "kubelet ${NODE_NAME} at ${NODE_IP}"
  kubelet_credentials
  mkdir -p "${NODE_DIR}/kubelet"
  cat >"${NODE_DIR}/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The apiserver (logs, exec, port-forward) and metrics-server present the cluster's admin
# certificate; the kubelet checks it against the cluster CA and asks the apiserver whether
# that user may (SubjectAccessReview).
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI_DIR}/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
imageServiceEndpoint: unix://${CONTAINERD_SOCK}
# This host has cgroup v1 (hybrid) and no systemd; kubelet 1.36 refuses v1 unless told.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# A shared 2-core test machine: keep the kubelet from evicting on small margins, and from
# collecting the images the tests imported.
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
maxPods: 40
serializeImagePulls: false
resolvConf: /etc/resolv.conf
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
shutdownGracePeriod: 0s
EOF
  # type=real beside kwok's type=kwok; the fake nodes carry a taint, this one none, so pods
  # that do not ask for a fake node land here (as on kind).
  start_daemon kubelet "${LOG_DIR}/kubelet.log" "${BIN_DIR}/kubelet" \
    --config "${NODE_DIR}/kubelet-config.yaml" \
    --kubeconfig "${NODE_DIR}/kubelet-pki/kubelet.kubeconfig" \
    --root-dir "${NODE_DIR}/kubelet" \
    --cert-dir "${NODE_DIR}/kubelet/pki" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${NODE_IP}" \
    --node-labels "type=real,modelservice.dev/node-pool=real"
  took
}

kube_proxy_up() {
  if running "${NODE_DIR}/kube-proxy.pid"; then
    log "kube-proxy already running (pid $(cat "${NODE_DIR}/kube-proxy.pid"))"
    return
  fi
  step "kube-proxy (iptables mode)"
  cat >"${NODE_DIR}/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${KUBECONFIG_FILE}}
hostnameOverride: ${NODE_NAME}
mode: iptables
clusterCIDR: ${POD_CIDR}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["${NODE_IP}/32"]
# 0 = leave the host's conntrack table size and timeouts as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start_daemon kube-proxy "${LOG_DIR}/kube-proxy.log" "${BIN_DIR}/kube-proxy" \
    --config "${NODE_DIR}/kube-proxy-config.yaml"
  took
}

node_ready() {
  [[ "$(kc get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

proxy_synced() {
  iptables -w -t nat -S KUBE-SERVICES 2>/dev/null | grep -q "${API_SERVICE_IP}/32"
}

node_up() {
  mkdir -p "${NODE_DIR}" "${LOG_DIR}"
  [[ -d "${HOSTSTATE_DIR}" ]] || die "no host-state record: run 'hack/node-up.sh network' first"
  guard_control_plane
  containerd_up
  pause_image
  kubelet_up
  kube_proxy_up
  step "waiting for node ${NODE_NAME} to be Ready"
  wait_for "node ${NODE_NAME} to be Ready" "${TIMEOUT}" "${LOG_DIR}/kubelet.log" node_ready
  wait_for "kube-proxy to program the kubernetes Service (${API_SERVICE_IP})" 60 \
    "${LOG_DIR}/kube-proxy.log" proxy_synced
  took
  log "node ${NODE_NAME} Ready ($(kc get node "${NODE_NAME}" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}'))"
}

case "${1:-}" in
  check)
    reason="$(why_not)"
    [[ -z "${reason}" ]] || { echo "${reason}"; exit 1; }
    ;;
  network) network_up ;;
  node) node_up ;;
  *) die "usage: $0 check|network|node" ;;
esac
