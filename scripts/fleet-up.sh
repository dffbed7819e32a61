#!/usr/bin/env bash
# The main job: installs what is missing (scripts/install-deps.sh), then brings a local fleet up
# with harmony-fleet-deploy: a local Kubernetes control plane, NATS with JetStream, the
# operator and one local device agent, all under .fleet-local/.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh
if ! grep -q '^name = "harmony-fleet-deploy"' harmony-fleet-deploy/Cargo.toml ||
   [[ ! -f harmony-fleet-deploy/src/main.rs ]]; then
  echo "[fleet-up] dependencies are installed; the harmony-fleet-deploy command (issue 6) is not built yet, so there is no fleet to bring up." >&2
  exit 1
fi
exec cargo run --release --locked -p harmony-fleet-deploy -- local up --yes "$@"
