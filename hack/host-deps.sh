#!/usr/bin/env bash
# Install the host packages the real node and the image builds need, where they are missing:
# Debian's docker.io (dockerd, containerd, runc), containernetworking-plugins (the CNI
# bridge), debootstrap (the offline base image), iptables and openssl. Root on Debian only;
# elsewhere it says what is missing and exits 0, and hack/node-up.sh check gives the reason
# the node cannot run. Never starts a service (Debian's docker.io starts nothing without
# systemd; hack/docker-up.sh starts dockerd when an image is built).
set -euo pipefail

log() { printf '[host-deps] %s\n' "$*" >&2; }

# command -> Debian package
declare -A NEEDS=(
  [dockerd]=docker.io [containerd]=docker.io [runc]=docker.io [ctr]=docker.io
  [debootstrap]=debootstrap [iptables]=iptables [openssl]=openssl [ip]=iproute2 [ss]=iproute2
)
missing=()
for cmd in "${!NEEDS[@]}"; do
  command -v "${cmd}" >/dev/null 2>&1 || missing+=("${NEEDS[${cmd}]}")
done
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
[[ "${#missing[@]}" -eq 0 ]] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [[ "$(id -u)" != 0 || ! -x /usr/bin/apt-get ]]; then
  log "missing: ${missing[*]} (install them as root with apt-get, or your system's packages);" \
    "without them there is no real node and no image build"
  exit 0
fi
log "installing ${missing[*]} with apt-get"
start="$(date +%s)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed in $(($(date +%s) - start))s"
