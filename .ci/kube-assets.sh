#!/usr/bin/env bash
# Provide a KUBEBUILDER_ASSETS folder (etcd, kube-apiserver, kube-controller-manager) for the
# end-to-end tests, following controller-runtime's envtest convention.
#
# Prebuilt envtest binaries cannot be downloaded on our CI machines (only package registries are
# reachable), so we build the control plane from Debian's `kubernetes` source package (1.20.2,
# vendored Go sources) and take etcd from Debian's `etcd-server`. The result is cached so that
# repeated runs on the same machine skip the ~12 minute build.
#
# Usage: .ci/kube-assets.sh   -> prints the assets folder on its last line.
set -euo pipefail

CACHE=${KUBE_ASSETS_CACHE:-/var/cache/continual-training/kubebuilder-assets}
if [[ -x $CACHE/kube-apiserver && -x $CACHE/kube-controller-manager && -x $CACHE/etcd ]]; then
  echo "$CACHE"
  exit 0
fi

log() { echo "[kube-assets] $*" >&2; }
export DEBIAN_FRONTEND=noninteractive

# deb-src for the configured Debian mirror (deb822 format on bookworm).
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "enabling deb-src"
  sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
fi
log "apt-get update/install"
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends golang-1.19-go rsync etcd-server \
  golang-github-modern-go-reflect2-dev dpkg-dev make gcc libc6-dev >&2

WORK=$(mktemp -d /tmp/kube-src.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
log "apt-get source kubernetes"
apt-get source -qq kubernetes >&2
SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)

# Go 1.19 breaks the vendored modern-go/reflect2 v1.0.1 (the apiserver segfaults on the first
# custom-resource create); Debian ships 1.0.2, which works.
R2_NEW=$(dirname "$(dpkg -L golang-github-modern-go-reflect2-dev | grep '/reflect2.go$' | head -n1)")
R2_OLD=$SRC/vendor/github.com/modern-go/reflect2
log "replacing $R2_OLD with $R2_NEW"
rm -f "$R2_OLD"/*.go "$R2_OLD"/*.s
cp "$R2_NEW"/*.go "$R2_OLD"/
cp "$R2_NEW"/*.s "$R2_OLD"/ 2>/dev/null || true

export PATH=/usr/lib/go-1.19/bin:$PATH
export GOFLAGS=-mod=vendor GO111MODULE=on GOPROXY=off
log "building kube-apiserver and kube-controller-manager (about 12 minutes on 2 cores)"
make -C "$SRC" WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2

mkdir -p "$CACHE.tmp"
cp "$SRC"/_output/bin/kube-apiserver "$SRC"/_output/bin/kube-controller-manager "$CACHE.tmp"/
cp "$(command -v etcd || echo /usr/bin/etcd)" "$CACHE.tmp"/etcd
rm -rf "$CACHE"
mv "$CACHE.tmp" "$CACHE"
log "assets ready in $CACHE"
echo "$CACHE"
