#!/usr/bin/env bash
# Builds the cluster images with podman, without any registry:
#   localhost/harmony-fleet-operator:<version>  FROM scratch + the static (musl) operator
#   localhost/harmony-fleet-agent:<version>     a debootstrapped Debian rootfs with podman + the
#                                               static agent
#   localhost/harmony-fleet-nats:<nats version> FROM scratch + the static nats-server that
#                                               install-deps builds (the cluster NATS image)
# Push them to your own registry afterwards, e.g.
#   podman tag localhost/harmony-fleet-operator:0.1.0 registry.example.com/fleet/operator:0.1.0
#   podman push registry.example.com/fleet/operator:0.1.0
# and give the references to `harmony-fleet-deploy cluster deploy --operator-image … --agent-image …`.
# Usage: scripts/build-images.sh [operator|agent|nats|all]   (default: all)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
what=${1:-all}
target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
export CONTAINERS_CONF="${HARMONY_FLEET_CACHE:-$HOME/.cache/harmony-fleet}/containers.conf"
say() { printf '[build-images] %s\n' "$*" >&2; }
started=$SECONDS

bash scripts/install-deps.sh
if ! rustup target list --installed | grep -qx "$target"; then
  say "adding the Rust target $target"
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null; then
  say "installing musl-tools (C parts of ring build with musl-gcc)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

build_bin() { # package binary [cargo args…]
  local package=$1 binary=$2; shift 2
  say "building $binary ($target, release)"
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$target" -p "$package" "$@"
  cp "${CARGO_TARGET_DIR:-target}/$target/release/$binary" "$context/$binary"
}

if [[ $what == operator || $what == all ]]; then
  features=()
  grep -q '^web-frontend' harmony-fleet-operator/Cargo.toml && features=(--features web-frontend)
  build_bin harmony-fleet-operator harmony-fleet-operator "${features[@]}"
  podman build -q -f images/operator.Containerfile -t "localhost/harmony-fleet-operator:$version" \
    -t localhost/harmony-fleet-operator:latest "$context"
  say "built localhost/harmony-fleet-operator:$version"
fi

if [[ $what == agent || $what == all ]]; then
  base=localhost/harmony-fleet-debian-podman:bookworm
  if ! podman image exists "$base"; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    rootfs="$context/rootfs"
    say "debootstrapping a Debian bookworm rootfs, then installing podman in it (a few minutes)"
    # podman is installed with apt inside the rootfs rather than with `debootstrap --include`:
    # debootstrap's own configure pass fails on golang-github-containers-common.
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    mount -t proc proc "$rootfs/proc"
    trap 'umount "$rootfs/proc" 2>/dev/null || true; rm -rf "$context"' EXIT
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman runc ca-certificates >/dev/null
    chroot "$rootfs" apt-get clean
    umount "$rootfs/proc"
    tar --numeric-owner -C "$rootfs" -cf "$context/rootfs.tar" .
    podman import -q "$context/rootfs.tar" "$base" >/dev/null
    rm -rf "$rootfs" "$context/rootfs.tar"
  fi
  build_bin harmony-fleet-agent fleet-agent
  cp config/containers.conf "$context/containers.conf"
  podman build -q -f images/agent.Containerfile -t "localhost/harmony-fleet-agent:$version" \
    -t localhost/harmony-fleet-agent:latest "$context"
  say "built localhost/harmony-fleet-agent:$version"
fi
if [[ $what == nats || $what == all ]]; then
  nats_bin=$(readlink -f "${HARMONY_FLEET_CACHE:-$HOME/.cache/harmony-fleet}/bin/nats-server")
  nats_version=$("$nats_bin" --version | sed -n 's/.*v\([0-9.]*\).*/\1/p')
  nats_context="$context/nats"
  mkdir -p "$nats_context"
  cp "$nats_bin" "$nats_context/nats-server"
  podman build -q -f images/nats.Containerfile -t "localhost/harmony-fleet-nats:$nats_version" \
    -t localhost/harmony-fleet-nats:latest "$nats_context"
  say "built localhost/harmony-fleet-nats:$nats_version"
fi
say "done in $((SECONDS - started))s"
