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

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked \
  -p harmony -p harmony_cli -p harmony-fleet-contracts -p harmony-fleet-deploy

step "static fleet-agent for the Host target test (glibc, crt-static; adr/0041)"
# Its own target triple keeps these flags out of the main build's cache.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked \
  --target x86_64-unknown-linux-gnu -p harmony-fleet-agent --bin fleet-agent

step "cargo test"
cargo test --workspace --all-features --locked --no-fail-fast
