//! Installing a downloaded build: its self-test, then the swap (previous copy, pending marker,
//! atomic replacement of the binary), and [`HostUpgrader`], the real I/O shell the deployment
//! worker drives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use harmony_fleet_contracts::DeploymentName;
use harmony_fleet_contracts::payload::AgentV0;
use tokio::sync::watch;

use super::files::{self, EXECUTABLE};
use super::worker::{Observed, Upgrader};
use super::{
    Exit, ExitRequest, FailedMarker, Pending, SelfImage, SelfInfo, UpgradeError, failed_path,
    guard_binary, pending_path, upgrade_dir,
};

/// How long a staged build's self-test may take.
pub const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of a failed self-test's output is quoted.
const OUTPUT_TAIL: usize = 400;

fn tail(text: &str) -> &str {
    let text = text.trim();
    let mut start = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs `<staged> self-test --config <config>`: it must exit 0 within `timeout` and print
/// `fleet-agent <version>`.
pub async fn self_test(
    staged: &Path,
    sha256: &str,
    config: &Path,
    version: &str,
    timeout: Duration,
) -> Result<(), UpgradeError> {
    let failed = |message: String| UpgradeError::SelfTest {
        sha256: sha256.to_owned(),
        message,
    };
    let mut command = tokio::process::Command::new(staged);
    command
        .arg("self-test")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Err(_) => return Err(failed(format!("did not finish within {timeout:?}"))),
        Ok(Err(err)) => {
            return Err(failed(format!(
                "cannot run {}: {err} (is it a build for this architecture?)",
                staged.display()
            )));
        }
        Ok(Ok(output)) => output,
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("fleet-agent {version}");
    if output.status.success() && stdout.trim() == expected {
        return Ok(());
    }
    Err(failed(format!(
        "expected exit 0 printing {expected:?}, got {} printing {:?}; stderr: {:?}",
        output.status,
        tail(&stdout),
        tail(&stderr)
    )))
}

/// Swaps the staged build in for the running binary: copies the running binary to
/// `previous`, writes `pending.json`, replaces the binary atomically. On failure the pending
/// marker is removed again (the old binary stays in place).
pub fn swap(
    data_dir: &Path,
    info: &SelfInfo,
    deployment: &DeploymentName,
    desired: &AgentV0,
    sha256: &str,
    staged: &Path,
    now_unix: i64,
) -> Result<Pending, UpgradeError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| UpgradeError::Io {
            step: "swap",
            path,
            source,
        }
    };
    std::fs::create_dir_all(upgrade_dir(data_dir)).map_err(io(&upgrade_dir(data_dir)))?;
    let previous = guard_binary(data_dir);
    files::copy_atomic(&info.image, &previous, EXECUTABLE).map_err(io(&previous))?;
    let pending = Pending {
        deployment: deployment.clone(),
        binary_path: info.binary_path.clone(),
        from_sha: info.sha256.clone(),
        from_version: info.version.clone(),
        to_sha: sha256.to_owned(),
        to_version: desired.version.clone(),
        deadline_unix: now_unix + i64::from(desired.heartbeat_deadline_seconds),
        heartbeat_deadline_seconds: desired.heartbeat_deadline_seconds,
        starts: 0,
    };
    let marker = pending_path(data_dir);
    files::write_marker("swap", &marker, &pending)?;
    if let Err(source) = files::copy_atomic(staged, &info.binary_path, EXECUTABLE) {
        let _ = files::remove_if_exists(&marker);
        return Err(io(&info.binary_path)(source));
    }
    let _ = files::remove_if_exists(staged);
    Ok(pending)
}

/// The real upgrader: this binary, the device's NATS connection, the files under the data
/// dir, and the agent's exit.
#[derive(Debug)]
pub struct HostUpgrader {
    data_dir: PathBuf,
    config_path: Option<PathBuf>,
    image: Arc<SelfImage>,
    client: watch::Receiver<Option<async_nats::Client>>,
    exit: ExitRequest,
}

impl HostUpgrader {
    /// An upgrader; `client` gets the connection once the agent has one.
    pub fn new(
        data_dir: PathBuf,
        config_path: Option<PathBuf>,
        image: Arc<SelfImage>,
        client: watch::Receiver<Option<async_nats::Client>>,
        exit: ExitRequest,
    ) -> Self {
        Self {
            data_dir,
            config_path,
            image,
            client,
            exit,
        }
    }
}

#[async_trait]
impl Upgrader for HostUpgrader {
    async fn observe(&self) -> Result<Observed, UpgradeError> {
        let info = self.image.get().await?;
        let pending = files::read_marker::<Pending>(&pending_path(&self.data_dir))?;
        let failed = files::read_marker::<FailedMarker>(&failed_path(&self.data_dir))?;
        Ok(Observed {
            info,
            pending,
            failed,
        })
    }

    async fn fetch(&self, sha256: &str) -> Result<PathBuf, UpgradeError> {
        let mut client = self.client.clone();
        let client = client
            .wait_for(Option::is_some)
            .await
            .map_err(|_| UpgradeError::Unavailable("the agent is stopping".to_owned()))?
            .clone()
            .ok_or_else(|| UpgradeError::Unavailable("no NATS connection".to_owned()))?;
        super::fetch::fetch(&client, &self.data_dir, sha256).await
    }

    async fn self_test(
        &self,
        staged: &Path,
        sha256: &str,
        version: &str,
    ) -> Result<(), UpgradeError> {
        let Some(config) = &self.config_path else {
            return Err(UpgradeError::SelfTest {
                sha256: sha256.to_owned(),
                message: "the agent was started without a configuration file path \
                          (run it as `fleet-agent run --config PATH`)"
                    .to_owned(),
            });
        };
        self_test(staged, sha256, config, version, SELF_TEST_TIMEOUT).await
    }

    async fn swap(
        &self,
        deployment: &DeploymentName,
        desired: &AgentV0,
        sha256: &str,
        staged: &Path,
        info: &SelfInfo,
    ) -> Result<(), UpgradeError> {
        let (data_dir, info, deployment, desired, sha256, staged) = (
            self.data_dir.clone(),
            info.clone(),
            deployment.clone(),
            desired.clone(),
            sha256.to_owned(),
            staged.to_owned(),
        );
        let pending = tokio::task::spawn_blocking(move || {
            swap(
                &data_dir,
                &info,
                &deployment,
                &desired,
                &sha256,
                &staged,
                super::guard::now_unix(),
            )
        })
        .await
        .map_err(|err| UpgradeError::Unavailable(format!("swap: the swap panicked: {err}")))??;
        tracing::info!(
            from = %pending.from_version,
            to = %pending.to_version,
            to_sha = %pending.to_sha,
            deadline_unix = pending.deadline_unix,
            "agent binary replaced; restarting into it"
        );
        Ok(())
    }

    fn restart(&self) {
        self.exit.request(Exit::Restart);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    #[tokio::test]
    async fn the_self_test_wants_exit_zero_and_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("agent.toml");
        let good = script(
            dir.path(),
            "good",
            r#"[ "$1 $2 $3" = "self-test --config $3" ] && echo "fleet-agent 0.1.1""#,
        );
        self_test(&good, "sha", &config, "0.1.1", SELF_TEST_TIMEOUT)
            .await
            .expect("passes");
        let err = self_test(&good, "sha", &config, "0.2.0", SELF_TEST_TIMEOUT)
            .await
            .expect_err("wrong version");
        assert!(
            err.to_string().starts_with("self-test of agent build sha"),
            "{err}"
        );
        assert!(err.to_string().contains("fleet-agent 0.1.1"), "{err}");
        let bad = script(dir.path(), "bad", "echo 'config broken' >&2; exit 2");
        let err = self_test(&bad, "sha", &config, "0.1.1", SELF_TEST_TIMEOUT)
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("config broken"), "{err}");
        let slow = script(dir.path(), "slow", "exec sleep 30");
        let err = self_test(&slow, "sha", &config, "0.1.1", Duration::from_millis(300))
            .await
            .expect_err("times out");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn the_swap_keeps_the_previous_binary_and_marks_the_upgrade_pending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let binary = dir.path().join("fleet-agent");
        fs::write(&binary, b"old").expect("write");
        fs::create_dir_all(upgrade_dir(&data)).expect("mkdir");
        let staged = super::super::staged_path(&data, "bb");
        fs::write(&staged, b"new").expect("write");
        let info = SelfInfo {
            arch: "x86_64".into(),
            sha256: "aa".into(),
            binary_path: binary.clone(),
            image: binary.clone(),
            under_systemd: true,
            version: "0.1.0".into(),
        };
        let desired = AgentV0 {
            version: "0.1.1".into(),
            binaries: Default::default(),
            heartbeat_deadline_seconds: 60,
        };
        let deployment: DeploymentName = "agent".parse().expect("name");
        let pending =
            swap(&data, &info, &deployment, &desired, "bb", &staged, 1_000).expect("swap");
        assert_eq!(fs::read(&binary).expect("read"), b"new");
        assert_eq!(fs::read(guard_binary(&data)).expect("read"), b"old");
        let mode = fs::metadata(&binary).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(pending.deadline_unix, 1_060);
        assert_eq!(
            (
                pending.from_version.as_str(),
                pending.to_sha.as_str(),
                pending.starts
            ),
            ("0.1.0", "bb", 0)
        );
        let on_disk: Pending = files::read_marker(&pending_path(&data))
            .expect("read")
            .expect("pending.json");
        assert_eq!(on_disk, pending);
        assert!(!staged.exists());
    }
}
