//! Downloads an agent build from the `agent-binaries` object store with the device's own
//! connection, by direct gets only (devices cannot create the consumer the object store
//! client would use): the metadata, then each chunk after the last one read.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use harmony_fleet_contracts::binaries::{
    self, AGENT_BINARIES, MAX_BINARY_BYTES, ObjectMeta, is_sha256_hex,
};

use super::files::{self, EXECUTABLE};
use super::{UpgradeError, staged_path, upgrade_dir};

fn fetch_error(sha256: &str, message: impl Into<String>) -> UpgradeError {
    UpgradeError::Fetch {
        sha256: sha256.to_owned(),
        message: message.into(),
    }
}

/// One direct get; a status reply (404: no such message) is an error naming `what`.
async fn direct_get(
    client: &async_nats::Client,
    sha256: &str,
    subject: String,
    body: Bytes,
    what: &str,
) -> Result<async_nats::Message, UpgradeError> {
    let reply = client.request(subject, body).await.map_err(|err| {
        let hint = match err.kind() {
            async_nats::RequestErrorKind::NoResponders => format!(
                "the {AGENT_BINARIES} object store does not exist on the server (no \
                 responders): publish the build with `harmony-fleet-deploy agent publish`"
            ),
            async_nats::RequestErrorKind::TimedOut => format!(
                "no answer reading {what} (timed out): the server is unreachable, or this \
                 device may not read {AGENT_BINARIES} (check its permissions)"
            ),
            _ => format!("cannot read {what}: {err}"),
        };
        fetch_error(sha256, hint)
    })?;
    match reply.status {
        None => Ok(reply),
        Some(status) if status == async_nats::StatusCode::NOT_FOUND => Err(fetch_error(
            sha256,
            format!(
                "{what} is not in the {AGENT_BINARIES} object store: publish the build \
                 (`harmony-fleet-deploy agent publish`) or fix the SHA-256 in the deployment"
            ),
        )),
        Some(status) if status.is_success() => Ok(reply),
        Some(status) => Err(fetch_error(
            sha256,
            format!(
                "reading {what}: the server answered {status} {}",
                reply.description.as_deref().unwrap_or("")
            ),
        )),
    }
}

/// The object's metadata, checked: present, not deleted, not too large.
pub async fn object_meta(
    client: &async_nats::Client,
    sha256: &str,
) -> Result<ObjectMeta, UpgradeError> {
    let what = format!("object {sha256}");
    let reply = direct_get(
        client,
        sha256,
        binaries::meta_direct_get(sha256),
        Bytes::new(),
        &what,
    )
    .await?;
    let meta: ObjectMeta = serde_json::from_slice(&reply.payload).map_err(|err| {
        fetch_error(
            sha256,
            format!("the metadata of {what} is not object store metadata: {err}"),
        )
    })?;
    if meta.deleted {
        return Err(fetch_error(
            sha256,
            format!("{what} was deleted from {AGENT_BINARIES}: publish the build again"),
        ));
    }
    if meta.size > MAX_BINARY_BYTES {
        return Err(fetch_error(
            sha256,
            format!(
                "{what} is {} bytes, more than the {MAX_BINARY_BYTES} an agent build may be",
                meta.size
            ),
        ));
    }
    Ok(meta)
}

/// Reads every chunk of `meta` in order.
pub async fn object_bytes(
    client: &async_nats::Client,
    sha256: &str,
    meta: &ObjectMeta,
) -> Result<Vec<u8>, UpgradeError> {
    let capacity = usize::try_from(meta.size).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    let mut next = 1u64;
    for chunk in 1..=meta.chunks {
        let what = format!("chunk {chunk} of {} of object {sha256}", meta.chunks);
        let reply = direct_get(
            client,
            sha256,
            binaries::chunk_direct_get(),
            Bytes::from(binaries::chunk_request(&meta.nuid, next)),
            &what,
        )
        .await?;
        let seq = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                fetch_error(
                    sha256,
                    format!("the reply with {what} has no Nats-Sequence header"),
                )
            })?;
        next = seq.saturating_add(1);
        bytes.extend_from_slice(&reply.payload);
        if bytes.len() as u64 > meta.size {
            return Err(fetch_error(
                sha256,
                format!(
                    "{what} goes past the {} bytes the metadata announces",
                    meta.size
                ),
            ));
        }
    }
    Ok(bytes)
}

/// Removes builds staged earlier (a self-test that failed, a build no longer wanted): devices
/// have little disk, and only the build being installed matters.
fn remove_other_builds(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let staged = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with("staged-"));
        if staged && path != keep {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(path = %path.display(), "removed an earlier staged build"),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot remove an earlier staged build");
                }
            }
        }
    }
}

/// Downloads build `sha256` to `<data_dir>/upgrade/staged-<sha256>` (0755), checking its size
/// and SHA-256. An already staged, intact copy is reused.
pub async fn fetch(
    client: &async_nats::Client,
    data_dir: &Path,
    sha256: &str,
) -> Result<PathBuf, UpgradeError> {
    if !is_sha256_hex(sha256) {
        return Err(fetch_error(
            sha256,
            "not a SHA-256 (64 lowercase hex digits)",
        ));
    }
    let staged = staged_path(data_dir, sha256);
    let existing = staged.clone();
    let intact = tokio::task::spawn_blocking(move || files::sha256_file(&existing).ok())
        .await
        .ok()
        .flatten();
    if intact.as_deref() == Some(sha256) {
        tracing::info!(sha256, path = %staged.display(), "agent build already staged");
        return Ok(staged);
    }
    let meta = object_meta(client, sha256).await?;
    tracing::info!(
        sha256,
        size = meta.size,
        chunks = meta.chunks,
        "downloading agent build"
    );
    let bytes = object_bytes(client, sha256, &meta).await?;
    let actual = files::sha256_bytes(&bytes);
    if actual != sha256 || bytes.len() as u64 != meta.size {
        return Err(UpgradeError::Checksum {
            sha256: sha256.to_owned(),
            actual,
            size: bytes.len() as u64,
        });
    }
    let dir = upgrade_dir(data_dir);
    let path = staged.clone();
    let written = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        remove_other_builds(&dir, &path);
        files::write_atomic(&path, &bytes, EXECUTABLE)
    })
    .await
    .map_err(|err| fetch_error(sha256, format!("writing the build panicked: {err}")))?;
    written.map_err(|source| UpgradeError::Io {
        step: "fetch",
        path: staged.clone(),
        source,
    })?;
    tracing::info!(sha256, path = %staged.display(), "agent build staged");
    Ok(staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_build_being_installed_stays_staged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keep = staged_path(dir.path(), "bb");
        let old = staged_path(dir.path(), "aa");
        let dir = upgrade_dir(dir.path());
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(&old, b"old").expect("write");
        std::fs::write(dir.join("previous"), b"prev").expect("write");
        remove_other_builds(&dir, &keep);
        assert!(!old.exists());
        assert!(dir.join("previous").exists());
    }
}
