//! Publishing an agent build for self-upgrade (adr/0043): the static binary goes into the
//! `agent-binaries` object store under its SHA-256, where every device may read it, and an
//! `AgentV0` payload names it. Publishing the same bytes again uploads nothing.

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::jetstream;
use harmony_fleet_contracts::binaries::{AGENT_BINARIES, MAX_BINARY_BYTES};
use harmony_fleet_contracts::payload::{AgentV0, DEFAULT_HEARTBEAT_DEADLINE_SECONDS};
use sha2::{Digest, Sha256};

use super::elf;
use crate::error::DeployError;

/// A build in the object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its SHA-256 (lowercase hex): the object's name and what `AgentV0.binaries` holds.
    pub sha256: String,
    /// The architecture as the agent names its own (`x86_64`, `aarch64`, `arm`, `riscv64`).
    pub arch: &'static str,
    /// Bytes.
    pub size: u64,
    /// `false` when the store already held it.
    pub uploaded: bool,
}

impl Published {
    /// The payload that rolls this build out as `version` (one architecture; merge the
    /// `binaries` of several publishes for a mixed fleet).
    pub fn payload(&self, version: &str) -> AgentV0 {
        AgentV0 {
            version: version.to_owned(),
            binaries: BTreeMap::from([(self.arch.to_owned(), self.sha256.clone())]),
            heartbeat_deadline_seconds: DEFAULT_HEARTBEAT_DEADLINE_SECONDS,
        }
    }
}

/// The agent's name for the architecture of a static ELF agent build, or why it is no agent a
/// device can run.
pub fn build_arch(path: &Path, bytes: &[u8]) -> Result<&'static str, DeployError> {
    let refuse = |reason: String| DeployError::AgentBuild {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() as u64 > MAX_BINARY_BYTES {
        return Err(refuse(format!(
            "is {} bytes; devices take at most {MAX_BINARY_BYTES} (build with --release)",
            bytes.len()
        )));
    }
    let uname = elf::machine_of(bytes).map_err(refuse)?;
    elf::check_static_for(bytes, uname).map_err(|reason| {
        refuse(format!(
            "{reason}; build a static agent (`scripts/build-images.sh` builds one for musl)"
        ))
    })?;
    Ok(match uname {
        "armv7l" => "arm",
        other => other,
    })
}

/// Puts `bytes` (the agent build read from `path`) into the `agent-binaries` store, which
/// must exist (FleetNatsScore creates it).
pub async fn publish(
    js: &jetstream::Context,
    path: &Path,
    bytes: &[u8],
) -> Result<Published, DeployError> {
    let arch = build_arch(path, bytes)?;
    let sha256 = hex::encode(Sha256::digest(bytes));
    let nats = |context: &str, e: &dyn std::fmt::Display| DeployError::Nats {
        context: format!("{context} ({AGENT_BINARIES})"),
        message: e.to_string(),
    };
    let store = js.get_object_store(AGENT_BINARIES).await.map_err(|e| {
        nats(
            "opening the agent builds' object store; deploy NATS again (FleetNatsScore creates it)",
            &e,
        )
    })?;
    let size = bytes.len() as u64;
    let held = store
        .info(&sha256)
        .await
        .is_ok_and(|info| !info.deleted && info.size as u64 == size);
    if !held {
        let mut reader = bytes;
        store
            .put(sha256.as_str(), &mut reader)
            .await
            .map_err(|e| nats("uploading the build", &e))?;
    }
    tracing::info!(%sha256, arch, size, uploaded = !held, "agent build published");
    Ok(Published {
        sha256,
        arch,
        size,
        uploaded: !held,
    })
}
