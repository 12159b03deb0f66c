# Shared paths for cluster-up.sh / cluster-down.sh (sourced, not executed).
# shellcheck shell=bash disable=SC2034  # used by the scripts that source this file
ROOT_DIR="$(dirname "${HACK_DIR}")"
BIN_DIR="${ROOT_DIR}/.cache/bin"
CLUSTER_DIR="${ROOT_DIR}/.cache/cluster"
KUBECONFIG_FILE="${CLUSTER_DIR}/kubeconfig"
CLUSTER_NAME="modelservice"
# dockerd of hack/docker-up.sh keeps its sockets and netns mounts here; docker-down.sh removes it.
DOCKER_EXEC_ROOT="/run/modelservice-docker"
# kwokctl keeps each cluster's pki, pids, logs and etcd data under $KWOK_WORKDIR/clusters/<name>.
export KWOK_WORKDIR="${CLUSTER_DIR}/kwok"
# The Gateway API's standard CRDs: hack/build-tools.sh takes them from the module's zip
# (sigs.k8s.io/gateway-api, through the Go module proxy), hack/cluster-up.sh installs them.
GATEWAY_API_VERSION="v1.6.3"
GATEWAY_API_CRDS="${ROOT_DIR}/.cache/gateway-api/${GATEWAY_API_VERSION}"
# The Gateway API implementation (hack/gateway-up.sh): Traefik, built from its own module by
# hack/build-tools.sh, tagged with the version that module requires.
TRAEFIK_VERSION="$(awk '$1 == "github.com/traefik/traefik/v3" { print $2; exit }' \
  "${HACK_DIR}/tools/traefik/go.mod")"
GATEWAY_IMAGE="${GATEWAY_IMAGE:-modelservice-gateway:${TRAEFIK_VERSION}}"
GATEWAY_NAMESPACE="modelservice-gateway"
GATEWAY_CLASS="modelservice"
# The cluster's default Gateway: ${GATEWAY_NAMESPACE}/${GATEWAY_NAME}, HTTP on port 80 of
# GATEWAY_IP (a fixed ClusterIP: kube-proxy takes host traffic for it to the Traefik pod).
GATEWAY_NAME="default"

# --- The real node (hack/node-up.sh) ----------------------------------------------------------
# Addresses come from 198.18.0.0/15 (reserved for test networks), so no route can point at a
# real network. The node's address is the CNI bridge's own: pods reach the node (and the model
# servers tests start on it) and nothing else.
NODE_NAME="modelservice-node"
NODE_IP="198.18.0.1"
POD_CIDR="198.18.0.0/24"
SERVICE_CIDR="198.19.0.0/16"
# Addresses kwok gives its fake pods (nothing answers there).
FAKE_POD_CIDR="198.18.64.0/18"
# Everything above: the host routes it to the bridge, so none of it ever leaves the machine.
TEST_NET="198.18.0.0/15"
# The first address of the service range: the `kubernetes` Service, which in-cluster clients
# dial, so it must be in the apiserver's certificate.
API_SERVICE_IP="198.19.0.1"
# The default Gateway's Service address (hack/gateway-up.sh), which its status reports: fixed,
# in the low part of SERVICE_CIDR that the apiserver keeps for fixed addresses (it hands out
# addresses from above that first).
GATEWAY_IP="198.19.0.80"
BRIDGE="msvc0"
NODE_DIR="${ROOT_DIR}/.cache/node"
# Sockets and runtime state live on /run (tmpfs): unix socket paths must stay short.
NODE_RUN_DIR="/run/modelservice-node"
CONTAINERD_SOCK="${NODE_RUN_DIR}/containerd.sock"
HOSTSTATE_DIR="${NODE_DIR}/hoststate"
PAUSE_IMAGE="modelservice.local/pause:1"
# Where the kwok fake nodes are (hack/kwok/nodes.yaml): their taint keeps pods that do not
# ask for a fake node on the real one.
FAKE_NODE_TAINT="kwok.x-k8s.io/node=fake:NoSchedule"
