#!/usr/bin/env bash
# The main job: installs what is missing (scripts/install-deps.sh), builds the fleet binaries,
# then brings a local fleet up with `harmony-fleet-deploy local up`: a local Kubernetes
# control plane, NATS with JetStream, the operator (with its dashboard) and one local device
# agent, all under .fleet-local/. Extra arguments go to `local up` (e.g. --devices 3).
# A second run changes nothing; `harmony-fleet-deploy local down` stops everything.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh
echo "[fleet-up] building the operator, the agent and harmony-fleet-deploy (release)" >&2
features=()
if grep -q '^web-frontend' harmony-fleet-operator/Cargo.toml; then
  features=(--features harmony-fleet-operator/web-frontend)
fi
cargo build --release --locked -p harmony-fleet-operator "${features[@]}" \
  -p harmony-fleet-agent -p harmony-fleet-deploy
exec "$repo/target/release/harmony-fleet-deploy" local up --yes "$@"
