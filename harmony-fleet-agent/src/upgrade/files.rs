//! File moves every upgrade step shares: atomic writes (temp file in the same directory,
//! fsync, rename, fsync of the directory), hashing, and the JSON markers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::UpgradeError;

/// Mode of binaries written by the upgrade.
pub const EXECUTABLE: u32 = 0o755;
/// Mode of marker files.
pub const PRIVATE: u32 = 0o600;

/// SHA-256 (lowercase hex) of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 (lowercase hex) of some bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A sibling of `path` for writing before the rename (`<name>.new`).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".new");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically with `mode`: readers see the old file or the new one,
/// never a part, and a crash leaves at most a `.new` sibling behind.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temp = temp_sibling(path);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        // `mode` is filtered by the umask on create; set it exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Copies `from` over `to` atomically (see [`write_atomic`]).
pub fn copy_atomic(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    let temp = temp_sibling(to);
    let copied = (|| {
        let _ = fs::remove_file(&temp);
        fs::copy(from, &temp)?;
        fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        File::open(&temp)?.sync_all()?;
        fs::rename(&temp, to)?;
        sync_dir(to)
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&temp);
    }
    copied
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Reads a JSON marker; `None` when the file does not exist.
pub fn read_marker<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, UpgradeError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(UpgradeError::Io {
                step: "read marker",
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| UpgradeError::Marker {
            path: path.to_owned(),
            source,
        })
}

/// Writes a JSON marker atomically, creating its directory.
pub fn write_marker<T: Serialize>(
    step: &'static str,
    path: &Path,
    value: &T,
) -> Result<(), UpgradeError> {
    let io = |source| UpgradeError::Io {
        step,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| UpgradeError::Marker {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes, PRIVATE).map_err(io)
}

/// Removes a file; a missing file is not an error.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_replace_the_file_with_the_mode_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bin");
        fs::write(&path, b"old").expect("write");
        write_atomic(&path, b"new", EXECUTABLE).expect("write_atomic");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, EXECUTABLE);
        assert!(!temp_sibling(&path).exists());
        let copy = dir.path().join("copy");
        copy_atomic(&path, &copy, EXECUTABLE).expect("copy");
        assert_eq!(fs::read(&copy).expect("read"), b"new");
        assert_eq!(sha256_file(&copy).expect("sha"), sha256_bytes(b"new"));
    }

    #[test]
    fn a_missing_marker_is_none_and_a_corrupt_one_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pending.json");
        assert!(matches!(
            read_marker::<super::super::Pending>(&path),
            Ok(None)
        ));
        fs::write(&path, b"{").expect("write");
        let err = read_marker::<super::super::Pending>(&path).expect_err("corrupt");
        assert!(err.to_string().contains("pending.json"), "{err}");
    }
}
