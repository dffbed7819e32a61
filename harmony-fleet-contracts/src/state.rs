//! What actually runs: [`DeploymentState`] (bucket `device-state`, key
//! `state.<device>.<deployment>`) and its [`Phase`].
//!
//! Each report names the payload revision it is about ([`DeploymentState::payload_hash`]), so
//! during a rollout the operator counts a device as updated only when its report is for the
//! revision currently desired — a `Running` report for the previous revision is not success.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::canonical::ContentHash;

/// Longest `lastError` kept, in bytes; longer messages are cut by
/// [`DeploymentState::set_last_error`]. Keeps reports far below the bucket's value limit.
pub const MAX_LAST_ERROR_LEN: usize = 4096;

/// Phase of one deployment on one device.
///
/// Deliberately small — the operator aggregates it over the whole fleet:
/// - `Pending`: accepted, not running yet (pulling images, running init containers, starting,
///   or waiting to retry after a failure);
/// - `Running`: every service of the reported revision runs;
/// - `Failed`: the reported revision cannot be brought up; `lastError` says why and the agent
///   keeps retrying with back-off;
/// - `Removed`: the desired-state key is gone and the containers are stopped and removed; the
///   agent deletes its state key afterwards, so readers treat `Removed` like absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Phase {
    /// Accepted, not running yet.
    Pending,
    /// All services run.
    Running,
    /// Cannot be brought up; see `lastError`.
    Failed,
    /// Torn down after the desired state was deleted.
    Removed,
    /// A phase this build does not know (reported by a newer agent). Count it as pending.
    #[serde(other)]
    Unknown,
}

/// Value of `device-state` / `state.<device>.<deployment>`, written by the agent on every
/// phase change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentState {
    /// Current phase.
    pub phase: Phase,
    /// SHA-256 of the `desired-state` bytes this report is about (the agent hashes the bytes
    /// it received). `None` only for a `Removed` report or a payload that could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hash: Option<ContentHash>,
    /// KV revision of the `desired-state` entry the agent acted on, when known. Lets the
    /// operator tell an old report from a current one even if a payload is reverted to an
    /// earlier hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<u64>,
    /// Why the deployment is failing (or last failed), at most [`MAX_LAST_ERROR_LEN`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Container id per service name (services whose container exists).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_ids: BTreeMap<String, String>,
    /// When `phase` (or the revision) last changed.
    pub last_change: Timestamp,
}

impl DeploymentState {
    /// A report with no error, no containers and no revision.
    pub fn new(phase: Phase, last_change: Timestamp) -> Self {
        Self {
            phase,
            payload_hash: None,
            desired_revision: None,
            last_error: None,
            container_ids: BTreeMap::new(),
            last_change,
        }
    }

    /// Sets `lastError`, cut to [`MAX_LAST_ERROR_LEN`] bytes on a character boundary (with a
    /// trailing `…` when cut).
    pub fn set_last_error(&mut self, message: impl Into<String>) {
        let mut message = message.into();
        if message.len() > MAX_LAST_ERROR_LEN {
            let ellipsis = '…';
            let mut end = MAX_LAST_ERROR_LEN - ellipsis.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push(ellipsis);
        }
        self.last_error = Some(message);
    }

    /// `true` when this report is about `desired` (the hash of the current desired payload).
    pub fn is_for(&self, desired: &ContentHash) -> bool {
        self.payload_hash.as_ref() == Some(desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_capped_on_a_char_boundary() {
        let mut state = DeploymentState::new(Phase::Failed, Timestamp::UNIX_EPOCH);
        state.set_last_error("é".repeat(5000));
        let err = state.last_error.unwrap();
        assert!(err.len() <= MAX_LAST_ERROR_LEN);
        assert!(err.ends_with('…'));
    }

    #[test]
    fn short_errors_are_kept_verbatim() {
        let mut state = DeploymentState::new(Phase::Failed, Timestamp::UNIX_EPOCH);
        state.set_last_error("pull failed");
        assert_eq!(state.last_error.as_deref(), Some("pull failed"));
    }

    #[test]
    fn report_is_for_a_revision_only_with_the_same_hash() {
        let hash = ContentHash::of_bytes(b"a");
        let mut state = DeploymentState::new(Phase::Running, Timestamp::UNIX_EPOCH);
        assert!(!state.is_for(&hash));
        state.payload_hash = Some(hash);
        assert!(state.is_for(&hash));
        assert!(!state.is_for(&ContentHash::of_bytes(b"b")));
    }

    #[test]
    fn unknown_phase_from_a_newer_agent_is_tolerated() {
        let phase: Phase = serde_json::from_str("\"Hibernating\"").unwrap();
        assert_eq!(phase, Phase::Unknown);
    }
}
