//! `fleet-agent upgrade-guard`: run by systemd before every start (`ExecStartPre`), as the
//! known-good `previous` binary. With an upgrade on probation it counts the start and, once
//! the new binary is past its deadline or keeps exiting at start, puts the previous binary
//! back. It never fails the start: every problem is logged and the agent starts anyway.

use std::path::Path;

use super::files::{self, EXECUTABLE};
use super::{FailedMarker, Pending, UpgradeError, failed_path, guard_binary, pending_path};

/// Starts of a new binary allowed before it is reverted (it keeps exiting at start).
pub const MAX_STARTS: u32 = 3;

/// What the guard does about a pending upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardDecision {
    /// Let the new binary start (again): the marker with this start counted.
    Start(Pending),
    /// Put the previous binary back and record why.
    Revert(FailedMarker),
}

/// Decide about `pending` at `now_unix` (pure).
pub fn decide(pending: &Pending, now_unix: i64) -> GuardDecision {
    let mut counted = pending.clone();
    counted.starts = counted.starts.saturating_add(1);
    let late = now_unix >= pending.deadline_unix;
    if !late && counted.starts <= MAX_STARTS {
        return GuardDecision::Start(counted);
    }
    let short: String = pending.to_sha.chars().take(12).collect();
    let what = if late {
        match pending.heartbeat_deadline_seconds {
            0 => "did not heartbeat by its deadline".to_owned(),
            seconds => format!("did not heartbeat within {seconds} s"),
        }
    } else {
        "kept exiting at start".to_owned()
    };
    GuardDecision::Revert(FailedMarker {
        deployment: pending.deployment.clone(),
        to_sha: pending.to_sha.clone(),
        to_version: pending.to_version.clone(),
        from_version: pending.from_version.clone(),
        reason: format!(
            "agent {} (sha256 {short}…) {what} ({} starts); reverted to {}",
            pending.to_version, counted.starts, pending.from_version
        ),
    })
}

/// What the guard did, for its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// No upgrade on probation.
    Nothing,
    /// The new binary starts; this is its `starts`-th start.
    Counted(u32),
    /// The previous binary was put back.
    Reverted(String),
}

/// The guard: reads `pending.json` under `data_dir`, decides, acts.
pub fn run(data_dir: &Path, now_unix: i64) -> Result<GuardAction, UpgradeError> {
    let pending_file = pending_path(data_dir);
    let Some(pending) = files::read_marker::<Pending>(&pending_file)? else {
        return Ok(GuardAction::Nothing);
    };
    match decide(&pending, now_unix) {
        GuardDecision::Start(counted) => {
            files::write_marker("guard", &pending_file, &counted)?;
            Ok(GuardAction::Counted(counted.starts))
        }
        GuardDecision::Revert(failed) => {
            let previous = guard_binary(data_dir);
            files::copy_atomic(&previous, &pending.binary_path, EXECUTABLE).map_err(|source| {
                UpgradeError::Io {
                    step: "guard: put the previous binary back",
                    path: pending.binary_path.clone(),
                    source,
                }
            })?;
            files::write_marker("guard", &failed_path(data_dir), &failed)?;
            files::remove_if_exists(&pending_file).map_err(|source| UpgradeError::Io {
                step: "guard",
                path: pending_file.clone(),
                source,
            })?;
            let _ = files::remove_if_exists(&super::staged_path(data_dir, &pending.to_sha));
            Ok(GuardAction::Reverted(failed.reason))
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::upgrade::upgrade_dir;

    fn pending(binary: &Path, starts: u32) -> Pending {
        Pending {
            deployment: "agent".parse().expect("name"),
            binary_path: binary.to_owned(),
            from_sha: "aa".into(),
            from_version: "0.1.0".into(),
            to_sha: "ab12".repeat(16),
            to_version: "0.1.1".into(),
            deadline_unix: 1_000,
            heartbeat_deadline_seconds: 60,
            starts,
        }
    }

    #[test]
    fn a_start_before_the_deadline_is_counted() {
        let p = pending(Path::new("/bin/agent"), 0);
        assert_eq!(
            decide(&p, 999),
            GuardDecision::Start(Pending { starts: 1, ..p })
        );
    }

    #[test]
    fn past_the_deadline_the_previous_binary_comes_back() {
        let GuardDecision::Revert(failed) = decide(&pending(Path::new("/bin/agent"), 1), 1_000)
        else {
            panic!("expected Revert");
        };
        assert_eq!(
            failed.reason,
            "agent 0.1.1 (sha256 ab12ab12ab12…) did not heartbeat within 60 s (2 starts); \
             reverted to 0.1.0"
        );
        assert_eq!(failed.to_sha, "ab12".repeat(16));
    }

    #[test]
    fn a_binary_that_keeps_exiting_is_reverted_after_three_starts() {
        let p = pending(Path::new("/bin/agent"), MAX_STARTS - 1);
        assert!(matches!(decide(&p, 0), GuardDecision::Start(_)));
        let GuardDecision::Revert(failed) =
            decide(&pending(Path::new("/bin/agent"), MAX_STARTS), 0)
        else {
            panic!("expected Revert");
        };
        assert!(
            failed.reason.contains("kept exiting at start (4 starts)"),
            "{}",
            failed.reason
        );
    }

    #[test]
    fn the_guard_counts_then_reverts_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        fs::create_dir_all(upgrade_dir(&data)).expect("mkdir");
        let binary = dir.path().join("fleet-agent");
        fs::write(&binary, b"new binary").expect("write");
        fs::write(guard_binary(&data), b"old binary").expect("write");
        assert_eq!(run(&data, 0).expect("no marker"), GuardAction::Nothing);
        files::write_marker("test", &pending_path(&data), &pending(&binary, 0)).expect("marker");
        assert_eq!(run(&data, 10).expect("count"), GuardAction::Counted(1));
        assert_eq!(fs::read(&binary).expect("read"), b"new binary");
        let GuardAction::Reverted(reason) = run(&data, 2_000).expect("revert") else {
            panic!("expected a revert");
        };
        assert!(reason.contains("reverted to 0.1.0"), "{reason}");
        assert_eq!(fs::read(&binary).expect("read"), b"old binary");
        assert!(!pending_path(&data).exists());
        let failed: FailedMarker = files::read_marker(&failed_path(&data))
            .expect("read")
            .expect("failed.json");
        assert_eq!(failed.reason, reason);
        assert_eq!(run(&data, 3_000).expect("done"), GuardAction::Nothing);
    }
}
