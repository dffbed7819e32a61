#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the real components it needs
# (scripts/install-deps.sh), checks formatting and lints, then runs every test against the
# real kube-apiserver, nats-server and podman that the tests start themselves.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing dependencies"
bash scripts/install-deps.sh

step "building the cluster images (operator, agent, NATS) for the local node's e2e"
# Cold: ~12 min operator + ~5 min agent on 2 cores; warm: relinks and podman's cache (adr/0030).
t=$SECONDS
bash scripts/build-images.sh all
printf '    images ready in %ss\n' "$((SECONDS - t))" >&2

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked \
  -p harmony -p harmony_cli -p harmony-fleet-contracts -p harmony-fleet-deploy

step "cargo test"
cargo test --workspace --all-features --locked --no-fail-fast
