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
# Test images need no size optimisation: this step builds them with a quicker release profile
# (no LTO, 16 codegen units); the shipped images keep the workspace profile (adr/0030).
t=$SECONDS
CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 bash scripts/build-images.sh all
printf '    images ready in %ss\n' "$((SECONDS - t))" >&2
# The Host target test installs a static agent: the musl one the agent image was built from.
export HARMONY_FLEET_STATIC_AGENT_BIN="${CARGO_TARGET_DIR:-$repo/target}/x86_64-unknown-linux-musl/release/fleet-agent"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked \
  -p harmony -p harmony_cli -p harmony-fleet-contracts -p harmony-fleet-deploy \
  -p harmony-fleet-operator -p harmony-fleet-agent -p harmony-fleet-types

step "cargo test"
cargo test --workspace --all-features --locked --no-fail-fast
