#!/usr/bin/env bash
# Installs the tools that validate the Helm chart without a cluster (tests/deploy/) into
# .cache/tools/bin. Idempotent: a tool already there at the pinned version is kept, so a
# second run takes about a second. `make test` runs it first.
#
#   helm      built from source with `go install` at HELM_VERSION, with the release's
#             version and default Kubernetes version (its Makefile's ldflags)
#   promtool  from Debian's `prometheus` package: `apt-get download` + `dpkg -x`, only the
#             promtool binary kept (runs `apt-get update` once when the package lists are
#             missing and we are root, as in CI)
#   crdcheck  deploy/helm/crdcheck: strict decoding into KEDA's and prometheus-operator's
#             Go API types (versions pinned in its go.mod); rebuilt when its sources change
#
# Go caches live under .cache/go (GOPATH, GOMODCACHE, GOCACHE): nothing outside the
# checkout is written except apt's package lists. Needs Go >= 1.26 and the Go module
# proxy; a cold run builds helm and crdcheck from source (minutes on 2 cores: README,
# "Deploy").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

HELM_VERSION=v3.21.4
# helm v3.21.4 is built with client-go v0.36: its Makefile makes that Kubernetes 1.36,
# the version `helm template` and `helm lint` assume without a cluster.
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=36

tools=${TRENDSTREAM_TOOLS_DIR:-$root/.cache/tools}
bin=$tools/bin
mkdir -p "$bin"
export GOPATH=$root/.cache/go GOMODCACHE=$root/.cache/go/mod GOCACHE=$root/.cache/go/build
export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=local CGO_ENABLED=0

say() { echo "install-tools: $*"; }

timed() {  # timed NAME CMD...: run CMD, report its wall time
    local name=$1 start=$SECONDS
    shift
    "$@"
    say "$name built in $((SECONDS - start)) s"
}

need() {
    command -v "$1" >/dev/null || { echo "install-tools: $1 not found; $2" >&2; exit 1; }
}

install_helm() {
    local pkg=helm.sh/helm/v3 ldflags
    ldflags="-s -w -X $pkg/internal/version.version=$HELM_VERSION"
    ldflags+=" -X $pkg/internal/version.gitTreeState=clean"
    for p in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X $pkg/$p.k8sVersionMajor=$HELM_K8S_MAJOR"
        ldflags+=" -X $pkg/$p.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    GOBIN=$bin go install -ldflags "$ldflags" "$pkg/cmd/helm@$HELM_VERSION"
}

install_promtool() {
    local tmp
    tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
        [ "$(id -u)" = 0 ] || { echo "install-tools: apt-get download prometheus failed;" \
            "run 'apt-get update' as root once" >&2; return 1; }
        apt-get update -qq
        (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1)
    fi
    dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/promtool" "$bin/promtool"
    rm -rf "$tmp"
}

crdcheck_sum() {
    (cd deploy/helm/crdcheck && cat go.mod go.sum ./*.go | sha256sum | cut -d' ' -f1)
}

install_crdcheck() {
    (cd deploy/helm/crdcheck && go build -o "$bin/crdcheck" .)
    crdcheck_sum > "$tools/crdcheck.sha256"
}

need go "install Go >= 1.26 (apt-get install golang-go is too old on Debian 12)"
if [ "$("$bin/helm" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_VERSION" ]; then
    timed "helm $HELM_VERSION" install_helm
fi
if ! "$bin/promtool" --version >/dev/null 2>&1; then
    need apt-get "promtool comes from Debian's prometheus package"
    need dpkg "promtool comes from Debian's prometheus package"
    timed promtool install_promtool
fi
if [ ! -x "$bin/crdcheck" ] || [ "$(cat "$tools/crdcheck.sha256" 2>/dev/null)" != "$(crdcheck_sum)" ]; then
    timed crdcheck install_crdcheck
fi
say "helm $("$bin/helm" version --template '{{.Version}}'), $("$bin/promtool" --version 2>&1 | head -1), crdcheck ready in $bin"
