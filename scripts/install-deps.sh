#!/usr/bin/env bash
# Installs every real component harmony fleet runs locally, from package registries only:
#   - podman, runc, busybox-static, etcd, iproute2, openssh-client, debootstrap (Debian packages;
#     the last two for the Host target and its test host, scripts/build-host-image.sh)
#   - the local node's runtime: containerd, CNI plugins, iptables, conntrack (Debian packages)
#   - kube-apiserver, kube-controller-manager, kubectl built from the upstream Go module, and
#     for the local node kubelet, kube-scheduler, kube-proxy (same module, adr/0030)
#   - nats-server, CoreDNS and helm built static with `go install`
# Everything built is cached outside the repository, under $HARMONY_FLEET_CACHE
# (default ~/.cache/harmony-fleet); a warm run only checks and returns in seconds.
# The binaries are linked into $HARMONY_FLEET_CACHE/bin, where the Rust code looks first.
set -euo pipefail

K8S_VERSION="v1.34.4"       # adr/0009: inside kube 5 / k8s-openapi 0.29 (feature v1_34)
NATS_VERSION="v2.12.15"     # >= 2.11 for per-message TTL and the current KV API
COREDNS_VERSION="v1.14.7"   # the local node's cluster DNS (adr/0030)
HELM_VERSION="v3.22.1"      # lints and installs the generated chart for real

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${HARMONY_FLEET_CACHE:-$HOME/.cache/harmony-fleet}
bin="$cache/bin"
mkdir -p "$bin"

say() { printf '[install-deps] %s\n' "$*" >&2; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }
started=$(date +%s)

# --- Debian packages --------------------------------------------------------------
need_pkgs=()
for pkg in podman runc busybox-static etcd-server iproute2 util-linux openssh-client debootstrap \
           containerd containernetworking-plugins iptables conntrack; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  t=$(date +%s)
  say "installing Debian packages: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  say "Debian packages installed in $(elapsed "$t")"
fi
ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$bin/etcd"
install -m 0644 "$repo/config/containers.conf" "$cache/containers.conf"

# --- Go builds ----------------------------------------------------------------------
command -v go >/dev/null || { say "Go is required to build the upstream tools; install Go >= 1.24"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

k8s_dir="$cache/k8s-$K8S_VERSION/bin"
# Every Kubernetes binary is built from the same module with the same version stamps.
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
build_k8s() {
  local cmd=$1 ct
  ct=$(date +%s)
  mkdir -p "$k8s_dir"
  ( cd "$repo/tools/control-plane"
    go build -trimpath -ldflags "$k8s_ldflags" -o "$k8s_dir/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$k8s_dir/$cmd.tmp" "$k8s_dir/$cmd" )
  say "  built $cmd in $(elapsed "$ct")"
}

if [[ ! -x "$k8s_dir/kube-apiserver" || ! -x "$k8s_dir/kube-controller-manager" || ! -x "$k8s_dir/kubectl" ]]; then
  t=$(date +%s)
  say "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION from the k8s.io/kubernetes module (cold: 15-30 min on 2 cores)"
  for cmd in kube-apiserver kube-controller-manager kubectl; do build_k8s "$cmd"; done
  say "control plane built in $(elapsed "$t")"
fi
for cmd in kube-apiserver kube-controller-manager kubectl; do ln -sf "$k8s_dir/$cmd" "$bin/$cmd"; done

# The local node (adr/0030): same module and flags, each binary built only when missing, so a
# cache holding the control plane only relinks these three (~30 s each with a warm build cache).
for cmd in kubelet kube-scheduler kube-proxy; do
  if [[ ! -x "$k8s_dir/$cmd" ]]; then
    say "building $cmd $K8S_VERSION (local node)"
    build_k8s "$cmd"
  fi
  ln -sf "$k8s_dir/$cmd" "$bin/$cmd"
done
for cmd in containerd ctr containerd-shim-runc-v2; do ln -sf "$(command -v "$cmd" || echo "/usr/bin/$cmd")" "$bin/$cmd"; done
ln -sf /usr/lib/cni "$cache/cni-bin"

nats_dir="$cache/nats-$NATS_VERSION/bin"
if [[ ! -x "$nats_dir/nats-server" ]]; then
  t=$(date +%s)
  say "building nats-server $NATS_VERSION (static)"
  mkdir -p "$nats_dir"
  GOBIN="$nats_dir" go install -trimpath -ldflags "-s -w" "github.com/nats-io/nats-server/v2@$NATS_VERSION"
  mv "$nats_dir/v2" "$nats_dir/nats-server" 2>/dev/null || true
  say "nats-server built in $(elapsed "$t")"
fi
ln -sf "$nats_dir/nats-server" "$bin/nats-server"

# go install of a module whose main package is at a path; static, cached by version.
go_tool() { # name version package
  local dir="$cache/$1-$2/bin"
  if [[ ! -x "$dir/$1" ]]; then
    local t; t=$(date +%s)
    say "building $1 $2 (static)"
    mkdir -p "$dir"
    GOBIN="$dir" go install -trimpath -ldflags "-s -w" "$3@$2"
    say "$1 built in $(elapsed "$t")"
  fi
  ln -sf "$dir/$1" "$bin/$1"
}
go_tool coredns "$COREDNS_VERSION" github.com/coredns/coredns
go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm

# --- Dashboard: npm assets and the browser-test Chromium (operator feature web-frontend) ----
# htmx, its SSE extension, xterm.js, the Tailwind v4 CLI and playwright-core come from the npm
# registry (harmony-fleet-operator/web/package.json + lockfile); build.rs embeds what they
# build. Chromium is Debian's, driven by playwright-core in tests/browser.rs.
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
  t=$(date +%s)
  say "installing Debian packages: chromium (dashboard browser tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  say "chromium installed in $(elapsed "$t")"
fi
if ! command -v npm >/dev/null; then
  t=$(date +%s)
  say "installing Debian packages: nodejs npm (dashboard assets)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  say "nodejs and npm installed in $(elapsed "$t")"
fi
web="$repo/harmony-fleet-operator/web"
# npm writes node_modules/.package-lock.json on every install: newer than the lockfile = warm.
if [[ ! -f "$web/node_modules/.package-lock.json" || "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]]; then
  t=$(date +%s)
  say "installing the dashboard's npm packages (npm ci in harmony-fleet-operator/web)"
  ( cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null )
  say "dashboard npm packages installed in $(elapsed "$t")"
fi

say "all dependencies ready in $bin ($(elapsed "$started"))"
