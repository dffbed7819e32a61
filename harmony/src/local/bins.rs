//! Where the upstream binaries live.
//!
//! `scripts/install-deps.sh` builds kube-apiserver, kube-controller-manager, kubectl and
//! nats-server at pinned versions and links them (and etcd) into one cache directory. The
//! harnesses look only there for these tools — never on `PATH`, where an unrelated, much older
//! distribution `kubectl` may live. Host tools (podman, ip, nsenter) come from `PATH`.

use std::path::{Path, PathBuf};

use crate::local::error::{LocalError, Result};

/// Overrides every other location: a directory holding the upstream binaries.
pub const BIN_DIR_ENV: &str = "HARMONY_FLEET_BIN_DIR";
/// The cache root used by `scripts/install-deps.sh`; binaries are in its `bin/`.
pub const CACHE_ENV: &str = "HARMONY_FLEET_CACHE";

/// `etcd` (Debian's etcd-server, linked into the cache).
pub const ETCD: &str = "etcd";
/// `kube-apiserver` built from the pinned `k8s.io/kubernetes` module.
pub const KUBE_APISERVER: &str = "kube-apiserver";
/// `kube-controller-manager` built from the pinned `k8s.io/kubernetes` module.
pub const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// `kubectl` at the same version as the apiserver.
pub const KUBECTL: &str = "kubectl";
/// A static `nats-server` (≥ 2.11).
pub const NATS_SERVER: &str = "nats-server";
/// The local node's kubelet, from the pinned `k8s.io/kubernetes` module.
pub const KUBELET: &str = "kubelet";
/// kube-scheduler, from the pinned `k8s.io/kubernetes` module (started with a local node).
pub const KUBE_SCHEDULER: &str = "kube-scheduler";
/// kube-proxy, from the pinned `k8s.io/kubernetes` module.
pub const KUBE_PROXY: &str = "kube-proxy";
/// Debian's containerd (linked into the cache).
pub const CONTAINERD: &str = "containerd";
/// Debian's `ctr`, containerd's CLI (image import, task clean-up).
pub const CTR: &str = "ctr";
/// CoreDNS built from its Go module: the local node's cluster DNS.
pub const COREDNS: &str = "coredns";
/// helm built from its Go module.
pub const HELM: &str = "helm";

/// The cache root: `$HARMONY_FLEET_CACHE`, else `~/.cache/harmony-fleet`.
///
/// Also holds the project's `containers.conf`. `None` only when neither variable nor `HOME` is
/// set.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = non_empty_env(CACHE_ENV) {
        return Some(PathBuf::from(dir));
    }
    non_empty_env("HOME").map(|home| Path::new(&home).join(".cache").join("harmony-fleet"))
}

/// Finds upstream binaries in an ordered list of directories.
///
/// Kept explicit (rather than reading the environment on every lookup) so that tests and tools
/// can point one locator at a directory without touching process-global environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinLocator {
    dirs: Vec<PathBuf>,
}

impl BinLocator {
    /// The standard search order: `$HARMONY_FLEET_BIN_DIR`, then `$HARMONY_FLEET_CACHE/bin`,
    /// then `~/.cache/harmony-fleet/bin`.
    pub fn from_env() -> Self {
        let mut dirs = Vec::new();
        if let Some(dir) = non_empty_env(BIN_DIR_ENV) {
            dirs.push(PathBuf::from(dir));
        }
        if let Some(dir) = non_empty_env(CACHE_ENV) {
            dirs.push(Path::new(&dir).join("bin"));
        }
        if let Some(home) = non_empty_env("HOME") {
            dirs.push(
                Path::new(&home)
                    .join(".cache")
                    .join("harmony-fleet")
                    .join("bin"),
            );
        }
        dirs.dedup();
        BinLocator { dirs }
    }

    /// A locator that looks only in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        BinLocator {
            dirs: vec![dir.into()],
        }
    }

    /// The directories searched, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The path of the executable `name`, or [`LocalError::MissingBinary`] naming the fix.
    pub fn locate(&self, name: &str) -> Result<PathBuf> {
        for dir in &self.dirs {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
        let searched = if self.dirs.is_empty() {
            "no directory: set HARMONY_FLEET_BIN_DIR or HOME".to_owned()
        } else {
            self.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(LocalError::MissingBinary {
            name: name.to_owned(),
            searched,
        })
    }
}

impl Default for BinLocator {
    fn default() -> Self {
        Self::from_env()
    }
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // `metadata` follows symlinks: a dangling link into a deleted build counts as missing.
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_names_the_install_script() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = BinLocator::in_dir(dir.path())
            .locate("kube-apiserver")
            .expect_err("empty dir");
        let message = err.to_string();
        assert!(message.contains("kube-apiserver"), "{message}");
        assert!(message.contains("scripts/install-deps.sh"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn finds_executable_and_skips_non_executable_files() {
        use std::os::unix::fs::PermissionsExt;
        let first = tempfile::tempdir().expect("tempdir");
        let second = tempfile::tempdir().expect("tempdir");
        let plain = first.path().join("etcd");
        std::fs::write(&plain, "not executable").expect("write");
        let exe = second.path().join("etcd");
        std::fs::write(&exe, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let locator = BinLocator {
            dirs: vec![first.path().to_owned(), second.path().to_owned()],
        };
        assert_eq!(locator.locate("etcd").expect("found"), exe);
    }
}
