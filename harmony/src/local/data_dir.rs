//! Data directories of local harnesses: a fresh temporary one (removed on drop) or one the caller
//! gives (e.g. `LocalTopology`'s `.fleet-local/`), kept or removed as asked.
//!
//! Temporary directories are named `harmony-local-<kind>-<pid>-<random>`. A harness held in a
//! `static` (one control plane per test binary) is never dropped, so its directory outlives the
//! process; the next harness started on this host removes directories whose pid is gone.

use std::path::{Path, PathBuf};
use std::sync::Once;

use crate::local::error::{LocalError, Result};

const PREFIX: &str = "harmony-local-";

/// A harness's data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl DataDir {
    /// A fresh directory under the system temp dir, removed on drop. `kind` names the harness
    /// (e.g. `cp`, `nats`) in the directory name.
    pub fn temporary(kind: &str) -> Result<Self> {
        prune_stale_once();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{kind}-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| LocalError::io("creating a temporary data directory", e))?;
        Ok(DataDir {
            path: dir.keep(),
            remove_on_drop: true,
        })
    }

    /// The caller's directory (created if missing); removed on drop unless `keep`.
    pub fn given(path: impl Into<PathBuf>, keep: bool) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path)
            .map_err(|e| LocalError::io(format!("creating {}", path.display()), e))?;
        let path = std::fs::canonicalize(&path)
            .map_err(|e| LocalError::io(format!("resolving {}", path.display()), e))?;
        Ok(DataDir {
            path,
            remove_on_drop: !keep,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory on disk (its processes outlive this handle); returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.remove_on_drop = false;
        self.path.clone()
    }

    /// Whether dropping this removes the directory.
    pub fn removed_on_drop(&self) -> bool {
        self.remove_on_drop
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.remove_on_drop
            && let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove data directory");
        }
    }
}

fn prune_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| prune_stale(&std::env::temp_dir()));
}

/// Removes `harmony-local-*` directories in `root` whose owning process no longer exists.
fn prune_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::debug!(dir = %entry.path().display(), "removing a stale local harness directory");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `harmony-local-<kind>-<pid>-<random>` → pid.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.split('-');
    let _kind = parts.next()?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_dir_is_removed_on_drop() {
        let dir = DataDir::temporary("unit").expect("dir");
        let path = dir.path().to_owned();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn given_dir_is_kept_when_asked() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::given(root.path().join("keep"), true).expect("dir");
        let path = dir.path().to_owned();
        drop(dir);
        assert!(path.is_dir());
    }

    #[test]
    fn prunes_only_directories_of_dead_processes() {
        let root = tempfile::tempdir().expect("tempdir");
        let dead = root.path().join(format!("{PREFIX}cp-{}-abc", u32::MAX));
        let alive = root
            .path()
            .join(format!("{PREFIX}cp-{}-abc", std::process::id()));
        let other = root.path().join("unrelated-1-2");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir(d).expect("mkdir");
        }
        prune_stale(root.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(other.exists());
    }
}
