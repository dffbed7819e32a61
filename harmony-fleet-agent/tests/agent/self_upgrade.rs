//! Self-upgrade end to end with the real binary, playing systemd's part by hand: the agent
//! runs as a process (with `INVOCATION_ID` set, as under systemd), installs a build from the
//! object store and exits 75; the test runs `previous upgrade-guard` and starts the binary
//! again, as `Restart=always` with `ExecStartPre` would. A build that cannot heartbeat (NATS
//! is down) exits 76 at its deadline and the guard puts the previous one back.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use harmony_fleet_agent::upgrade;
use harmony_fleet_contracts::binaries::AGENT_BINARIES;
use harmony_fleet_contracts::payload::{AgentV0, ReconcileScore};
use harmony_fleet_contracts::{ContentHash, Heartbeat, Phase, keys};

use super::support::eventually;
use super::{DEVICE_PASSWORD, Fleet};

/// How long an install (download of a debug build, self-test, swap) may take.
const INSTALL: Duration = Duration::from_secs(90);

/// One run of the agent binary; killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(binary: &Path, config: &Path, log: &Path) -> Result<Self> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("INVOCATION_ID", "self-upgrade-test")
            .env("RUST_LOG", "harmony_fleet_agent=info")
            .env_remove("FLEET_AGENT_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    /// Waits for the process to exit by itself; its exit code.
    async fn exit_code(&mut self, what: &str, timeout: Duration) -> Result<i32> {
        let child = &mut self.child;
        let status = eventually(what, timeout, || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await
        .with_context(|| log_tail(&self.log))?;
        status
            .code()
            .with_context(|| format!("{what}: killed by a signal ({status})"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    format!(
        "agent log ({}):\n{}",
        log.display(),
        text.get(start..).unwrap_or_default()
    )
}

/// `ExecStartPre=-<data_dir>/upgrade/previous upgrade-guard --config <config>`.
fn guard(data_dir: &Path, config: &Path) -> Result<String> {
    let out = Command::new(upgrade::guard_binary(data_dir))
        .arg("upgrade-guard")
        .arg("--config")
        .arg(config)
        .output()
        .context("running the guard")?;
    if !out.status.success() {
        bail!("the guard failed the start: {out:?}");
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The agent binary stamped with `version`, written to `path`; its SHA-256.
fn build(version: &str, path: &Path) -> Result<String> {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_fleet-agent"))?;
    harmony_fleet_agent::stamp(&mut bytes, version)?;
    std::fs::write(path, &bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(ContentHash::of_bytes(&bytes).to_string())
}

fn sha_of(path: &Path) -> Result<String> {
    Ok(ContentHash::of_bytes(&std::fs::read(path)?).to_string())
}

fn agent_payload(version: &str, sha: &str, deadline: u32) -> Result<Bytes> {
    let score = ReconcileScore::AgentV0(AgentV0 {
        version: version.into(),
        binaries: BTreeMap::from([(std::env::consts::ARCH.to_owned(), sha.to_owned())]),
        heartbeat_deadline_seconds: deadline,
    });
    Ok(Bytes::from(score.to_canonical_json()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_upgrades_itself_and_a_build_that_cannot_heartbeat_is_reverted() -> Result<()> {
    let mut fleet = Fleet::start("dev-self-upgrade").await?;
    let dir = tempfile::tempdir()?;
    let data_dir = fleet.data_dir.path().to_owned();
    let binary = dir.path().join("fleet-agent");
    let old_sha = build("0.1.0", &binary)?;
    let log = dir.path().join("agent.log");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"{device}\"\ndata_dir = \"{data}\"\nruntime_enabled = false\n\
             heartbeat_interval_secs = 1\nreconcile_interval_secs = 3\n\n[nats]\nurls = \
             [\"{url}\"]\nreconnect_max_delay_ms = 500\n\n[credentials]\ntype = \
             \"toml-shared\"\nuser = \"{device}\"\npassword = \"{DEVICE_PASSWORD}\"\n",
            device = fleet.device,
            data = data_dir.display(),
            url = fleet.nats.url(),
        ),
    )?;
    let store = jetstream::new(fleet.admin.clone())
        .create_object_store(object_store::Config {
            bucket: AGENT_BINARIES.into(),
            ..Default::default()
        })
        .await?;
    let good = dir.path().join("build-0.1.1");
    let good_sha = build("0.1.1", &good)?;
    store
        .put(good_sha.as_str(), &mut std::fs::read(&good)?.as_slice())
        .await?;

    // 1. The old binary installs 0.1.1 and exits for systemd to restart it.
    let mut agent = Process::start(&binary, &config, &log)?;
    fleet
        .write_desired("agent", Some(agent_payload("0.1.1", &good_sha, 60)?))
        .await?;
    let code = agent
        .exit_code("the agent exits to restart", INSTALL)
        .await?;
    assert_eq!(code, i32::from(upgrade::EXIT_RESTART), "{}", log_tail(&log));
    assert_eq!(sha_of(&binary)?, good_sha, "the new build is in place");
    assert_eq!(sha_of(&upgrade::guard_binary(&data_dir))?, old_sha);
    let guarded = guard(&data_dir, &config)?;
    assert!(guarded.contains("start 1 of at most 3"), "{guarded}");

    // 2. The new binary heartbeats: confirmed, Running, reporting 0.1.1.
    let mut agent = Process::start(&binary, &config, &log)?;
    let pending = upgrade::pending_path(&data_dir);
    eventually("the upgrade is confirmed", INSTALL, || async {
        (!pending.exists()).then_some(())
    })
    .await
    .with_context(|| log_tail(&log))?;
    fleet
        .wait_state("agent", "agent Running", |s| s.phase == Phase::Running)
        .await
        .with_context(|| log_tail(&log))?;
    let beat = fleet
        .heartbeats
        .get(keys::heartbeat_key(&fleet.device))
        .await?
        .context("a heartbeat")?;
    let beat: Heartbeat = serde_json::from_slice(&beat)?;
    assert_eq!(beat.agent_version.to_string(), "0.1.1");

    // 3. A build that cannot heartbeat (NATS goes away) is reverted at its deadline.
    let silent = dir.path().join("build-0.1.2");
    let silent_sha = build("0.1.2", &silent)?;
    store
        .put(silent_sha.as_str(), &mut std::fs::read(&silent)?.as_slice())
        .await?;
    fleet
        .write_desired("agent", Some(agent_payload("0.1.2", &silent_sha, 5)?))
        .await?;
    let code = agent
        .exit_code("the agent exits to restart", INSTALL)
        .await?;
    assert_eq!(code, i32::from(upgrade::EXIT_RESTART), "{}", log_tail(&log));
    fleet.nats.stop();
    let mut guarded = guard(&data_dir, &config)?;
    // On a slow machine the deadline may be gone before the first start: then the guard
    // reverts right away, and there is no unconfirmed run to wait for.
    if !guarded.contains("reverted") {
        let mut agent = Process::start(&binary, &config, &log)?;
        let code = agent
            .exit_code("the unconfirmed build gives up", Duration::from_secs(30))
            .await?;
        assert_eq!(
            code,
            i32::from(upgrade::EXIT_UNCONFIRMED),
            "{}",
            log_tail(&log)
        );
        guarded = guard(&data_dir, &config)?;
    }
    assert!(guarded.contains("reverted to 0.1.1"), "{guarded}");
    assert_eq!(sha_of(&binary)?, good_sha, "0.1.1 is back");
    let failed: Option<upgrade::FailedMarker> =
        serde_json::from_slice(&std::fs::read(upgrade::failed_path(&data_dir))?)?;
    assert_eq!(failed.map(|f| f.to_sha), Some(silent_sha));
    assert!(!pending.exists());

    // 4. Back on 0.1.1, the deployment reports why 0.1.2 is not running, and stays put.
    fleet.nats.resume()?;
    let _agent = Process::start(&binary, &config, &log)?;
    let state = fleet
        .wait_state("agent", "agent Failed with the revert", |s| {
            s.phase == Phase::Failed
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("reverted to 0.1.1"))
        })
        .await
        .with_context(|| log_tail(&log))?;
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("0.1.2")),
        "{state:?}"
    );
    assert_eq!(sha_of(&binary)?, good_sha);
    Ok(())
}
