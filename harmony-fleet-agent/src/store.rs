//! The offline store: the last desired state the agent accepted, persisted in the data dir so
//! workloads are restored after a reboot while NATS is unreachable.
//!
//! One JSON file, `desired-state.json`, rewritten atomically (temp file, fsync, rename, fsync of
//! the directory): after a crash the file holds either the old or the new state, never a mix.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use harmony_fleet_contracts::DeploymentName;
use serde::{Deserialize, Serialize};

/// File name of the persisted desired state inside the data dir.
pub const STATE_FILE: &str = "desired-state.json";
/// Version of the file format, bumped on incompatible changes.
const FORMAT: u32 = 1;

/// What the agent holds for one deployment key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// Highest KV revision seen for the key: older desired states are ignored (roll forward only).
    pub revision: u64,
    /// The last valid payload, as the exact JSON text read from KV; `None` once deleted.
    pub payload: Option<String>,
    /// Why the newest value (at `revision`) was rejected, if it was; the last valid payload
    /// keeps running meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// The whole persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// File format version.
    pub format: u32,
    /// Entries by deployment.
    pub deployments: BTreeMap<DeploymentName, StoredEntry>,
}

/// Why the store cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}; check that the agent's data_dir is writable")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The persisted desired state in one data dir.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Open (and create if needed) the data dir.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "create the data dir",
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Read the state. A missing file is an empty state; an unreadable or corrupt file is moved
    /// aside (kept for inspection, never deleted) and an empty state returned.
    pub fn load(&self) -> Result<StoredState, StoreError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(StoredState {
                    format: FORMAT,
                    ..StoredState::default()
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        match serde_json::from_slice::<StoredState>(&bytes) {
            Ok(state) if state.format == FORMAT => Ok(state),
            Ok(state) => {
                self.move_aside(&format!("unknown format {}", state.format))?;
                Ok(StoredState {
                    format: FORMAT,
                    ..StoredState::default()
                })
            }
            Err(err) => {
                self.move_aside(&err.to_string())?;
                Ok(StoredState {
                    format: FORMAT,
                    ..StoredState::default()
                })
            }
        }
    }

    fn move_aside(&self, reason: &str) -> Result<(), StoreError> {
        let path = self.path();
        let aside = self.dir.join(format!("{STATE_FILE}.corrupt"));
        tracing::error!(
            file = %path.display(),
            moved_to = %aside.display(),
            reason,
            "persisted desired state is unreadable; starting empty until NATS is reachable"
        );
        std::fs::rename(&path, &aside).map_err(|source| StoreError::Io {
            action: "move aside",
            path,
            source,
        })
    }

    /// Write the state atomically: a temp file in the same dir, fsync, rename over the old
    /// file, fsync the dir. Owner-only (0600): payloads carry the deployments' env values.
    pub fn save(&self, state: &StoredState) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        bytes.push(b'\n');
        let io = |action: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", &tmp))?
        };
        // A temp file left by an interrupted save keeps its old mode when reopened: set it.
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io("chmod", &tmp))?;
        }
        file.write_all(&bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io("fsync", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(value: &str) -> DeploymentName {
        value.parse().expect("valid deployment name")
    }

    #[test]
    fn missing_file_is_an_empty_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data")).expect("open");
        assert!(store.load().expect("load").deployments.is_empty());
    }

    #[test]
    fn saved_state_loads_back_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut state = StoredState {
            format: FORMAT,
            ..StoredState::default()
        };
        state.deployments.insert(
            name("web"),
            StoredEntry {
                revision: 7,
                payload: Some(r#"{"type":"PodmanV0","data":{}}"#.into()),
                rejected: None,
            },
        );
        state.deployments.insert(
            name("gone"),
            StoredEntry {
                revision: 9,
                payload: None,
                rejected: Some("bad".into()),
            },
        );
        store.save(&state).expect("save");
        assert_eq!(store.load().expect("load"), state);
        assert!(!dir.path().join(format!("{STATE_FILE}.tmp")).exists());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(store.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the state file is the owner's only");
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        std::fs::write(store.path(), b"{not json").expect("write");
        assert!(store.load().expect("load").deployments.is_empty());
        let aside = dir.path().join(format!("{STATE_FILE}.corrupt"));
        assert_eq!(std::fs::read(aside).expect("kept"), b"{not json");
    }
}
