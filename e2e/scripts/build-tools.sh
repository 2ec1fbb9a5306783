#!/usr/bin/env bash
# Build (or reuse from the cache) kube-apiserver, kubectl, etcd and helm from upstream source
# through the Go module proxy, at the versions pinned in e2e/versions.env, and the exec peer
# (e2e/go/kubernetes/execpeer: the kubelet's streaming endpoint, from the same Kubernetes release).
#
#   e2e/scripts/build-tools.sh          build what is missing, print the bin directories
#
# Cache: $PORTCULLIS_CACHE (default $HOME/.cache/portcullis), keyed by version (the exec peer also
# by a hash of its source), so a second run takes no time. Needs Go (go.mod files under e2e/go/
# pin every module).
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
source "$E2E_DIR/versions.env"
CACHE=${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}

log() { printf '[build-tools] %s\n' "$*" >&2; }
die() { printf '[build-tools] error: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed; the e2e control plane is built from source with Go"

# go_build MODULE_DIR OUT_DIR LDFLAGS PACKAGE...
go_build() {
    local dir=$1 out=$2 ldflags=$3; shift 3
    local start=$SECONDS
    mkdir -p "$out.tmp"
    log "building $* in e2e/go/$(basename "$dir") (first run only; several minutes on 2 cores)"
    if ! (cd "$dir" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "$@"); then
        rm -rf "$out.tmp"
        die "go build of $* failed (see the go error above; module lookups go through \$GOPROXY=$(go env GOPROXY))"
    fi
    rm -rf "$out" && mv "$out.tmp" "$out"
    log "built $(ls "$out" | tr '\n' ' ')in $((SECONDS - start))s"
}

k8s_dir=$CACHE/bin/kubernetes-$KUBERNETES_VERSION
if [[ ! -x $k8s_dir/kube-apiserver || ! -x $k8s_dir/kubectl ]]; then
    minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    go_build "$E2E_DIR/go/kubernetes" "$k8s_dir" "$ld" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
fi

# The exec peer is our own code: a change to it (or to the module pins) makes a new cache entry.
peer_src=$E2E_DIR/go/kubernetes
peer_hash=$(cat "$peer_src/execpeer/main.go" "$peer_src/go.mod" | sha256sum | cut -c1-12)
peer_dir=$CACHE/bin/execpeer-$KUBERNETES_VERSION-$peer_hash
if [[ ! -x $peer_dir/execpeer ]]; then
    go_build "$peer_src" "$peer_dir" "-s -w" portcullis.dev/e2e/kubernetes/execpeer
fi

etcd_dir=$CACHE/bin/etcd-$ETCD_VERSION
if [[ ! -x $etcd_dir/etcd ]]; then
    go_build "$E2E_DIR/go/etcd" "$etcd_dir" "-s -w" go.etcd.io/etcd/server/v3
    # go names the binary after the module path (server); the harness calls it etcd.
    [[ -x $etcd_dir/etcd ]] || mv "$etcd_dir"/* "$etcd_dir/etcd"
fi

helm_dir=$CACHE/bin/helm-$HELM_VERSION
if [[ ! -x $helm_dir/helm ]]; then
    go_build "$E2E_DIR/go/helm" "$helm_dir" "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        helm.sh/helm/v3/cmd/helm
fi

echo "KUBE_APISERVER=$k8s_dir/kube-apiserver"
echo "KUBECTL=$k8s_dir/kubectl"
echo "ETCD=$etcd_dir/etcd"
echo "HELM=$helm_dir/helm"
echo "EXEC_PEER=$peer_dir/execpeer"
