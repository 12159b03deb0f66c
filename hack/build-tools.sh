#!/usr/bin/env bash
# Build the local control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet, kube-proxy, kwok, kwokctl, metrics-server, helm) from the Go tools module in
# hack/tools, and the Gateway API implementation (traefik) from its own module in
# hack/tools/traefik, into <repo>/.cache/bin, and fetch the Gateway API's CRDs. See hack/README.md.
#
# Idempotent: a binary is rebuilt only when it is missing or its build stamp (a hash of its
# module's go.mod and go.sum, this script and the Go version) changed. Compiled packages live in
# Go's default GOCACHE/GOMODCACHE under $HOME, so a fresh clone on the same machine only links.
#
# KUBEBUILDER_ASSETS: when set and it holds kube-apiserver / etcd / kubectl, those are
# symlinked instead of built (the rest is still built at the pinned version).
#
# Env: GO (go command, default "go"), BUILD_TOOLS_PARALLEL (go build -p, default 2),
#      BUILD_TOOLS_ONLY (space-separated subset of binary names to build).
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster-env.sh
source "${HACK_DIR}/cluster-env.sh"  # ROOT_DIR, BIN_DIR, the Gateway API's version
TOOLS_DIR="${HACK_DIR}/tools"
# Traefik has a module of its own: it is built against client-go v0.34, which the Kubernetes
# v1.36 pins of hack/tools/go.mod would move (and it needs its own replace lines).
TRAEFIK_DIR="${TOOLS_DIR}/traefik"
STAMP_DIR="${BIN_DIR}/.stamps"
GO="${GO:-go}"
PARALLEL="${BUILD_TOOLS_PARALLEL:-2}"

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v "${GO}" >/dev/null 2>&1 || die "the Go toolchain ('${GO}') is not on PATH; install Go >= 1.26"

# One source of truth for versions: the require lines of each module's go.mod.
mod_version() { # module [module dir, default hack/tools]
  local v dir="${2:-${TOOLS_DIR}}"
  v="$(awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "${dir}/go.mod")"
  [[ -n "${v}" ]] || die "module $1 is not required in ${dir}/go.mod"
  printf '%s' "${v}"
}

KUBE_VERSION="$(mod_version k8s.io/kubernetes)"        # e.g. v1.36.3
HELM_VERSION="$(mod_version helm.sh/helm/v3)"
KWOK_VERSION="$(mod_version sigs.k8s.io/kwok)"
METRICS_SERVER_VERSION="$(mod_version sigs.k8s.io/metrics-server)"
ETCD_VERSION="$(mod_version go.etcd.io/etcd/server/v3)"
TRAEFIK_VERSION="$(mod_version github.com/traefik/traefik/v3 "${TRAEFIK_DIR}")"
KUBE_MAJOR="${KUBE_VERSION#v}"; KUBE_MAJOR="${KUBE_MAJOR%%.*}"
KUBE_MINOR="${KUBE_VERSION#v*.}"; KUBE_MINOR="${KUBE_MINOR%%.*}"
# A fixed build date keeps the linked binaries reproducible (it is only shown by --version).
BUILD_DATE="1970-01-01T00:00:00Z"

GO_VERSION="$("${GO}" env GOVERSION)"
stamp_of() { # module dir
  cat "$1/go.mod" "$1/go.sum" "${BASH_SOURCE[0]}" \
    | { cat; printf '%s\n' "${GO_VERSION}"; } | sha256sum | cut -c1-16
}

kube_ldflags() {
  local flags="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=${KUBE_MAJOR}"
    flags+=" -X ${pkg}.gitMinor=${KUBE_MINOR} -X ${pkg}.gitTreeState=clean"
    flags+=" -X ${pkg}.buildDate=${BUILD_DATE}"
  done
  printf '%s' "${flags}"
}

# name|package|extra ldflags|module dir (default hack/tools)
TARGETS=(
  "etcd|go.etcd.io/etcd/server/v3|"
  "kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|$(kube_ldflags)"
  "kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|$(kube_ldflags)"
  "kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler|$(kube_ldflags)"
  "kubectl|k8s.io/kubernetes/cmd/kubectl|$(kube_ldflags)"
  # The real node (hack/node-up.sh): its kubelet and kube-proxy at the same release.
  "kubelet|k8s.io/kubernetes/cmd/kubelet|$(kube_ldflags)"
  "kube-proxy|k8s.io/kubernetes/cmd/kube-proxy|$(kube_ldflags)"
  "kwok|sigs.k8s.io/kwok/cmd/kwok|-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}"
  "kwokctl|sigs.k8s.io/kwok/cmd/kwokctl|-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBE_VERSION#v}"
  # metrics-server reports its own version through client-go's version package.
  "metrics-server|sigs.k8s.io/metrics-server/cmd/metrics-server|-X k8s.io/client-go/pkg/version.gitVersion=${METRICS_SERVER_VERSION} -X k8s.io/client-go/pkg/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.buildDate=${BUILD_DATE}"
  "helm|helm.sh/helm/v3/cmd/helm|-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  # The Gateway API implementation the cluster runs (hack/gateway-up.sh, as an image).
  "traefik|github.com/traefik/traefik/v3/cmd/traefik|-X github.com/traefik/traefik/v3/pkg/version.Version=${TRAEFIK_VERSION} -X github.com/traefik/traefik/v3/pkg/version.BuildDate=${BUILD_DATE}|${TRAEFIK_DIR}"
)

mkdir -p "${BIN_DIR}" "${STAMP_DIR}"

is_current() { # name stamp
  [[ -x "${BIN_DIR}/$1" && -f "${STAMP_DIR}/$1" && "$(cat "${STAMP_DIR}/$1")" == "$2" ]]
}

wanted() { # name
  [[ -z "${BUILD_TOOLS_ONLY:-}" ]] && return 0
  [[ " ${BUILD_TOOLS_ONLY} " == *" $1 "* ]]
}

start_all="$(date +%s)"
built=0
for target in "${TARGETS[@]}"; do
  IFS='|' read -r name pkg extra dir <<<"${target}"
  wanted "${name}" || continue
  dir="${dir:-${TOOLS_DIR}}"

  case "${name}" in
    kube-apiserver | etcd | kubectl)
      if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/${name}" ]]; then
        src="$(cd "${KUBEBUILDER_ASSETS}" && pwd)/${name}"
        if is_current "${name}" "assets:${src}"; then
          log "${name} is up to date (KUBEBUILDER_ASSETS)"
        else
          log "using ${name} from KUBEBUILDER_ASSETS (${src})"
          ln -sfn "${src}" "${BIN_DIR}/${name}"
          printf '%s' "assets:${src}" >"${STAMP_DIR}/${name}"
        fi
        continue
      fi
      ;;
  esac

  stamp="$(stamp_of "${dir}")"
  if is_current "${name}" "${stamp}"; then
    log "${name} is up to date"
    continue
  fi

  log "building ${name} (${pkg}) ..."
  start="$(date +%s)"
  # Build beside the target and rename over it, so a running cluster or test never sees the
  # binary missing; a per-process name keeps two concurrent runs apart.
  tmp="${BIN_DIR}/.${name}.$$.tmp"
  rm -f "${tmp}" "${STAMP_DIR}/${name}"
  (
    cd "${dir}"
    # -buildvcs=false: the tools module sits inside this repo; stamping its git state would
    # fail where git is absent or the checkout is owned by another user, and buys nothing.
    CGO_ENABLED=0 "${GO}" build -trimpath -buildvcs=false -p "${PARALLEL}" \
      -ldflags "-s -w ${extra}" -o "${tmp}" "${pkg}"
  ) || die "go build of ${name} (${pkg}) failed; see the compiler output above"
  mv -f "${tmp}" "${BIN_DIR}/${name}"
  printf '%s' "${stamp}" >"${STAMP_DIR}/${name}"
  built=$((built + 1))
  log "built ${name} in $(($(date +%s) - start))s"
done

# The Gateway API's CRDs (standard channel) are files in its module's zip: fetched once per
# version into .cache/gateway-api/<version> for hack/cluster-up.sh to install.
if wanted gateway-api-crds && ! compgen -G "${GATEWAY_API_CRDS}/*.yaml" >/dev/null; then
  log "fetching the Gateway API ${GATEWAY_API_VERSION} CRDs (sigs.k8s.io/gateway-api) ..."
  # Outside any module: only that module's zip is downloaded (and checked against go.sum's
  # database), none of its dependencies.
  outside="$(mktemp -d)"
  (cd "${outside}" && GOFLAGS= "${GO}" mod download "sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}") \
    || { rm -rf "${outside}"; die "go mod download sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION} failed"; }
  rm -rf "${outside}"
  src="$("${GO}" env GOMODCACHE)/sigs.k8s.io/gateway-api@${GATEWAY_API_VERSION}/config/crd/standard"
  mkdir -p "${GATEWAY_API_CRDS}.tmp"
  install -m 0644 "${src}"/*.yaml "${GATEWAY_API_CRDS}.tmp/"
  rm -rf "${GATEWAY_API_CRDS}" && mv "${GATEWAY_API_CRDS}.tmp" "${GATEWAY_API_CRDS}"
fi

log "done: ${built} built in $(($(date +%s) - start_all))s; binaries in ${BIN_DIR}"
log "versions: kubernetes ${KUBE_VERSION}, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}," \
  "metrics-server ${METRICS_SERVER_VERSION}, helm ${HELM_VERSION}, traefik ${TRAEFIK_VERSION}," \
  "gateway-api ${GATEWAY_API_VERSION}"
