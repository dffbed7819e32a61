//! Probation of a newly installed binary: its first published heartbeat confirms it (the
//! pending marker is removed); without one by the deadline it exits so that the guard puts
//! the previous binary back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::files;
use super::{Exit, ExitRequest, Pending, SelfImage, pending_path};

/// Where this binary stands (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probation {
    /// No upgrade pending.
    None,
    /// An upgrade to another binary is pending (this is the previous binary, started without
    /// the guard): the guard decides, not this agent.
    OtherBinary,
    /// This binary must heartbeat within this time.
    Until(Duration),
    /// This binary is past its deadline.
    Expired,
}

/// Where a binary with SHA-256 `own_sha` stands at `now_unix`.
pub fn probation(pending: Option<&Pending>, own_sha: &str, now_unix: i64) -> Probation {
    match pending {
        None => Probation::None,
        Some(pending) if pending.to_sha != own_sha => Probation::OtherBinary,
        Some(pending) if now_unix >= pending.deadline_unix => Probation::Expired,
        Some(pending) => Probation::Until(Duration::from_secs(
            u64::try_from(pending.deadline_unix - now_unix).unwrap_or(0),
        )),
    }
}

/// Runs the probation of this binary, if it is on one: waits for `heartbeat` (notified by the
/// reporter after each published heartbeat) or the deadline.
pub async fn run(
    data_dir: PathBuf,
    image: Arc<SelfImage>,
    heartbeat: Arc<Notify>,
    exit: ExitRequest,
    stop: CancellationToken,
) {
    let marker = pending_path(&data_dir);
    let pending = match files::read_marker::<Pending>(&marker) {
        Ok(Some(pending)) => pending,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the pending upgrade; the guard decides");
            return;
        }
    };
    let own = match image.get().await {
        Ok(info) => info.sha256,
        Err(err) => {
            tracing::warn!(error = %err, "cannot identify this binary; the guard decides");
            return;
        }
    };
    let wait = match probation(Some(&pending), &own, super::guard::now_unix()) {
        Probation::None => return,
        Probation::OtherBinary => {
            tracing::info!(
                to_sha = %pending.to_sha,
                "an upgrade to another binary is pending; the upgrade guard decides"
            );
            return;
        }
        Probation::Expired => Duration::ZERO,
        Probation::Until(wait) => wait,
    };
    tracing::info!(
        version = %pending.to_version,
        deadline_in = ?wait,
        "upgrade on probation: waiting for the first heartbeat"
    );
    tokio::select! {
        () = stop.cancelled() => {}
        () = heartbeat.notified() => match files::remove_if_exists(&marker) {
            Ok(()) => tracing::info!(
                version = %pending.to_version,
                from = %pending.from_version,
                "upgrade confirmed"
            ),
            Err(err) => tracing::error!(
                path = %marker.display(),
                error = %err,
                "upgrade confirmed, but the pending marker cannot be removed; the guard will \
                 revert at the next start"
            ),
        },
        () = tokio::time::sleep(wait) => {
            tracing::error!(
                version = %pending.to_version,
                "no heartbeat published by the upgrade's deadline; exiting so the previous \
                 binary is put back"
            );
            exit.request(Exit::Unconfirmed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::{SelfInfo, upgrade_dir};

    fn pending(to: &str, deadline_unix: i64) -> Pending {
        Pending {
            deployment: "agent".parse().expect("name"),
            binary_path: "/usr/local/bin/fleet-agent".into(),
            from_sha: "aa".into(),
            from_version: "0.1.0".into(),
            to_sha: to.into(),
            to_version: "0.1.1".into(),
            deadline_unix,
            heartbeat_deadline_seconds: 60,
            starts: 1,
        }
    }

    #[test]
    fn probation_depends_on_the_marker_and_the_clock() {
        assert_eq!(probation(None, "bb", 0), Probation::None);
        assert_eq!(
            probation(Some(&pending("cc", 100)), "bb", 0),
            Probation::OtherBinary
        );
        assert_eq!(
            probation(Some(&pending("bb", 100)), "bb", 40),
            Probation::Until(Duration::from_secs(60))
        );
        assert_eq!(
            probation(Some(&pending("bb", 100)), "bb", 100),
            Probation::Expired
        );
    }

    fn image(sha: &str) -> Arc<SelfImage> {
        Arc::new(SelfImage::known(SelfInfo {
            arch: "x86_64".into(),
            sha256: sha.into(),
            binary_path: "/usr/local/bin/fleet-agent".into(),
            image: "/proc/self/exe".into(),
            under_systemd: true,
            version: "0.1.1".into(),
        }))
    }

    #[tokio::test]
    async fn a_heartbeat_confirms_the_upgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(upgrade_dir(dir.path())).expect("mkdir");
        let marker = pending_path(dir.path());
        let deadline = super::super::guard::now_unix() + 600;
        files::write_marker("test", &marker, &pending("bb", deadline)).expect("marker");
        let heartbeat = Arc::new(Notify::new());
        heartbeat.notify_one();
        let stop = CancellationToken::new();
        let exit = ExitRequest::new(stop.clone());
        tokio::time::timeout(
            Duration::from_secs(5),
            run(
                dir.path().into(),
                image("bb"),
                heartbeat,
                exit.clone(),
                stop,
            ),
        )
        .await
        .expect("confirmed within 5 s");
        assert!(!marker.exists());
        assert_eq!(exit.outcome(), Exit::Stopped);
    }

    #[tokio::test]
    async fn no_heartbeat_by_the_deadline_exits_unconfirmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(upgrade_dir(dir.path())).expect("mkdir");
        let marker = pending_path(dir.path());
        files::write_marker("test", &marker, &pending("bb", 0)).expect("marker");
        let stop = CancellationToken::new();
        let exit = ExitRequest::new(stop.clone());
        tokio::time::timeout(
            Duration::from_secs(5),
            run(
                dir.path().into(),
                image("bb"),
                Arc::new(Notify::new()),
                exit.clone(),
                stop.clone(),
            ),
        )
        .await
        .expect("gave up within 5 s");
        assert_eq!(exit.outcome(), Exit::Unconfirmed);
        assert!(stop.is_cancelled());
        assert!(marker.exists(), "the guard needs the marker to revert");
    }

    #[tokio::test]
    async fn the_previous_binary_leaves_another_binarys_upgrade_to_the_guard() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(upgrade_dir(dir.path())).expect("mkdir");
        let marker = pending_path(dir.path());
        files::write_marker("test", &marker, &pending("bb", 0)).expect("marker");
        let stop = CancellationToken::new();
        let exit = ExitRequest::new(stop.clone());
        run(
            dir.path().into(),
            image("aa"),
            Arc::new(Notify::new()),
            exit.clone(),
            stop.clone(),
        )
        .await;
        assert_eq!(exit.outcome(), Exit::Stopped);
        assert!(!stop.is_cancelled());
        assert!(marker.exists());
    }
}
