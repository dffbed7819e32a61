//! Fleet-wide agent self-upgrade with automatic rollback ([`AgentV0`] deployments).
//!
//! An `AgentV0` deployment names, per architecture, the SHA-256 of an agent build stored in the
//! `agent-binaries` object store ([`harmony_fleet_contracts::binaries`]). Its worker decides
//! with the pure [`plan`] and, when this binary is not the wanted one, installs it. The agent
//! runs under systemd (`Restart=always`, with the guard as `ExecStartPre`); everything lives in
//! `<data_dir>/upgrade/`:
//!
//! | file | what | written by |
//! |---|---|---|
//! | `staged-<sha>` | the downloaded build, checked against its SHA-256 (0755) | [`fetch`] |
//! | `previous` | a copy of the binary that ran before the swap: known good, run by systemd as the guard ([`guard_binary`]) | [`install`] |
//! | `pending.json` | an upgrade on probation ([`Pending`]) | [`install`]; removed by [`confirm`] or [`guard`] |
//! | `failed.json` | the last upgrade that was reverted ([`FailedMarker`]); that SHA is not tried again | [`guard`] |
//!
//! The sequence:
//!
//! 1. **fetch**: the metadata, then every chunk, by direct gets (devices cannot create
//!    consumers); the SHA-256 and size are checked; written to `staged-<sha>`.
//! 2. **self-test**: `staged-<sha> self-test --config <config>` must exit 0 within 10 s and
//!    print `fleet-agent <version>`.
//! 3. **swap**: the running binary is copied to `previous`, `pending.json` is written (deadline
//!    = now + `heartbeat_deadline_seconds`), and the staged build replaces the binary
//!    (copy to `<binary>.new`, fsync, rename).
//! 4. **restart**: the agent stops as on SIGTERM (state saved) and exits with
//!    [`EXIT_RESTART`]; systemd starts it again.
//! 5. **guard**: before every start, systemd runs `previous upgrade-guard`: with a
//!    `pending.json` it counts the start; past the deadline or after more than
//!    [`guard::MAX_STARTS`] starts it puts `previous` back, writes `failed.json` and removes
//!    `pending.json`.
//! 6. **confirm**: the new binary, finding `pending.json` for its own SHA, removes it after
//!    its first published heartbeat; not confirmed by the deadline, it exits with
//!    [`EXIT_UNCONFIRMED`] so the guard reverts it.
//!
//! [`AgentV0`]: harmony_fleet_contracts::payload::AgentV0

pub mod confirm;
pub mod fetch;
pub mod files;
pub mod guard;
pub mod install;
pub mod plan;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use harmony_fleet_contracts::DeploymentName;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use worker::{DisabledUpgrader, Observed, Upgrader};

/// Exit code of an agent that stopped to let systemd start a newly installed binary.
pub const EXIT_RESTART: u8 = 75;
/// Exit code of a new binary that was not confirmed (no heartbeat) by its deadline.
pub const EXIT_UNCONFIRMED: u8 = 76;

/// `<data_dir>/upgrade`.
pub fn upgrade_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("upgrade")
}

/// The known-good binary systemd runs as `ExecStartPre=-<this> upgrade-guard --config ...`.
pub fn guard_binary(data_dir: &Path) -> PathBuf {
    upgrade_dir(data_dir).join("previous")
}

/// Where the build with this SHA-256 is downloaded to.
pub fn staged_path(data_dir: &Path, sha256: &str) -> PathBuf {
    upgrade_dir(data_dir).join(format!("staged-{sha256}"))
}

/// The upgrade on probation.
pub fn pending_path(data_dir: &Path) -> PathBuf {
    upgrade_dir(data_dir).join("pending.json")
}

/// The last reverted upgrade.
pub fn failed_path(data_dir: &Path) -> PathBuf {
    upgrade_dir(data_dir).join("failed.json")
}

/// `pending.json`: an installed binary that has not heartbeated yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The `AgentV0` deployment that asked for it.
    pub deployment: DeploymentName,
    /// The binary that was replaced (and is put back on failure).
    pub binary_path: PathBuf,
    /// SHA-256 of the replaced binary.
    pub from_sha: String,
    /// Version of the replaced binary.
    pub from_version: String,
    /// SHA-256 of the new binary.
    pub to_sha: String,
    /// Version of the new binary.
    pub to_version: String,
    /// Unix time (s) by which the new binary must have heartbeated.
    pub deadline_unix: i64,
    /// The deadline as asked (`heartbeat_deadline_seconds`), for the revert message.
    #[serde(default)]
    pub heartbeat_deadline_seconds: u32,
    /// How many times the guard saw it start.
    pub starts: u32,
}

/// `failed.json`: an upgrade that was reverted; its SHA is not installed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMarker {
    /// The `AgentV0` deployment that asked for it.
    pub deployment: DeploymentName,
    /// SHA-256 of the reverted binary.
    pub to_sha: String,
    /// Version of the reverted binary.
    pub to_version: String,
    /// Version put back.
    pub from_version: String,
    /// What happened, for the deployment's `lastError`.
    pub reason: String,
}

/// Why a step of an upgrade failed. The message names the step, as the deployment's
/// `lastError` shows it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The build could not be downloaded.
    #[error("fetch of agent build {sha256}: {message}")]
    Fetch {
        /// The object's name.
        sha256: String,
        /// What went wrong and what to do.
        message: String,
    },
    /// The downloaded bytes are not the build named.
    #[error(
        "checksum of agent build {sha256}: the downloaded bytes have SHA-256 {actual} ({size} \
         bytes); the object store holds something else under that name: publish the build \
         again"
    )]
    Checksum {
        /// The name (expected SHA-256).
        sha256: String,
        /// SHA-256 of what was downloaded.
        actual: String,
        /// Bytes downloaded.
        size: u64,
    },
    /// The downloaded build did not pass its self-test.
    #[error("self-test of agent build {sha256}: {message}")]
    SelfTest {
        /// The build.
        sha256: String,
        /// What it did.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{step}: {path}: {source}")]
    Io {
        /// The step (fetch, self-test, swap, confirm, guard).
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A marker file is not what this agent writes.
    #[error(
        "{path}: cannot be read as an upgrade marker ({source}); delete it to let the agent \
         start over"
    )]
    Marker {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Self-upgrade is not possible here.
    #[error("{0}")]
    Unavailable(String),
}

/// How [`Agent::run`](crate::Agent::run) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested (SIGTERM/SIGINT): exit 0.
    Stopped,
    /// A new binary was installed: exit [`EXIT_RESTART`] so systemd starts it.
    Restart,
    /// This binary is on probation and did not heartbeat by its deadline: exit
    /// [`EXIT_UNCONFIRMED`] so the guard reverts it.
    Unconfirmed,
}

impl Exit {
    /// The process exit code for this ending.
    pub fn code(&self) -> u8 {
        match self {
            Exit::Stopped => 0,
            Exit::Restart => EXIT_RESTART,
            Exit::Unconfirmed => EXIT_UNCONFIRMED,
        }
    }
}

/// Lets a worker stop the agent (as on SIGTERM) with a distinguished [`Exit`].
#[derive(Debug, Clone)]
pub struct ExitRequest {
    shutdown: CancellationToken,
    exit: Arc<Mutex<Option<Exit>>>,
}

impl ExitRequest {
    /// Requests cancel `shutdown`, the agent's own shutdown token.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            exit: Arc::new(Mutex::new(None)),
        }
    }

    /// Stop the agent; the first request wins.
    pub fn request(&self, exit: Exit) {
        if let Ok(mut slot) = self.exit.lock() {
            slot.get_or_insert(exit);
        }
        self.shutdown.cancel();
    }

    /// What was requested ([`Exit::Stopped`] if nothing was).
    pub fn outcome(&self) -> Exit {
        self.exit
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or(Exit::Stopped)
    }
}

const PROC_SELF_EXE: &str = "/proc/self/exe";

/// What this running binary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfInfo {
    /// `std::env::consts::ARCH`.
    pub arch: String,
    /// SHA-256 (hex) of the binary as started.
    pub sha256: String,
    /// Where it was started from (and where a new build goes).
    pub binary_path: PathBuf,
    /// Where the running binary's bytes are read from: `/proc/self/exe`, which stays the
    /// running image even after the file at `binary_path` was replaced.
    pub image: PathBuf,
    /// Whether systemd runs it (`INVOCATION_ID` is set).
    pub under_systemd: bool,
    /// [`crate::version::current`].
    pub version: String,
}

impl SelfInfo {
    /// Reads and hashes the running binary (blocking: run it off the async threads).
    pub fn detect() -> Result<Self, UpgradeError> {
        let exe = std::env::current_exe().map_err(|source| UpgradeError::Io {
            step: "identify this binary",
            path: PathBuf::from(PROC_SELF_EXE),
            source,
        })?;
        // Linux names a replaced running binary "<path> (deleted)".
        let binary_path = exe
            .to_str()
            .and_then(|path| path.strip_suffix(" (deleted)"))
            .map_or(exe.clone(), PathBuf::from);
        let image = if Path::new(PROC_SELF_EXE).exists() {
            PathBuf::from(PROC_SELF_EXE)
        } else {
            binary_path.clone()
        };
        let sha256 = files::sha256_file(&image).map_err(|source| UpgradeError::Io {
            step: "identify this binary",
            path: image.clone(),
            source,
        })?;
        Ok(Self {
            image,
            arch: std::env::consts::ARCH.to_owned(),
            sha256,
            binary_path,
            under_systemd: std::env::var_os("INVOCATION_ID").is_some(),
            version: crate::version::current(),
        })
    }
}

/// [`SelfInfo`], computed once (hashing the binary reads it whole), when first needed.
#[derive(Debug, Default)]
pub struct SelfImage {
    info: tokio::sync::OnceCell<Result<SelfInfo, String>>,
}

impl SelfImage {
    /// An image whose info is already known (tests).
    pub fn known(info: SelfInfo) -> Self {
        Self {
            info: tokio::sync::OnceCell::new_with(Some(Ok(info))),
        }
    }

    /// This binary's info, hashing it on first use.
    pub async fn get(&self) -> Result<SelfInfo, UpgradeError> {
        self.info
            .get_or_init(|| async {
                match tokio::task::spawn_blocking(SelfInfo::detect).await {
                    Ok(Ok(info)) => Ok(info),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(err) => Err(format!("identifying this binary panicked: {err}")),
                }
            })
            .await
            .clone()
            .map_err(UpgradeError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_is_identified_by_its_running_image() {
        let info = SelfInfo::detect().expect("detect");
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(info.binary_path, exe);
        assert_eq!(
            info.sha256,
            files::sha256_file(&exe).expect("hash the test binary")
        );
        assert_eq!(info.arch, std::env::consts::ARCH);
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn a_requested_exit_wins_over_the_plain_stop() {
        let shutdown = CancellationToken::new();
        let exit = ExitRequest::new(shutdown.clone());
        assert_eq!(exit.outcome(), Exit::Stopped);
        exit.request(Exit::Restart);
        exit.request(Exit::Unconfirmed);
        assert!(shutdown.is_cancelled());
        assert_eq!(exit.outcome(), Exit::Restart);
        assert_eq!(exit.outcome().code(), EXIT_RESTART);
    }
}
