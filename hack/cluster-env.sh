# Shared paths for cluster-up.sh / cluster-down.sh (sourced, not executed).
# shellcheck shell=bash disable=SC2034  # used by the scripts that source this file
ROOT_DIR="$(dirname "${HACK_DIR}")"
BIN_DIR="${ROOT_DIR}/.cache/bin"
CLUSTER_DIR="${ROOT_DIR}/.cache/cluster"
KUBECONFIG_FILE="${CLUSTER_DIR}/kubeconfig"
CLUSTER_NAME="modelservice"
# kwokctl keeps each cluster's pki, pids, logs and etcd data under $KWOK_WORKDIR/clusters/<name>.
export KWOK_WORKDIR="${CLUSTER_DIR}/kwok"
