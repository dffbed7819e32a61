//! Self-upgrade downloads against a real nats-server: the device reads an agent build from the
//! `agent-binaries` object store with its own permissions (direct gets only).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use harmony_fleet_agent::upgrade::fetch;
use harmony_fleet_contracts::binaries::{AGENT_BINARIES, chunk_subject};
use harmony_fleet_contracts::{ContentHash, DeviceId, device_inbox_prefix, device_permissions};
use tokio::sync::mpsc;

use super::support::NatsServer;
use super::{ADMIN, DEVICE_PASSWORD, init_tracing};

/// How long the server gets to answer a forbidden publish with a violation.
const VIOLATION_DEADLINE: Duration = Duration::from_secs(5);

/// A build-like blob: not compressible into one chunk, different per `seed`.
fn build(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(31) as u8) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_downloads_an_agent_build_with_direct_gets_only() -> Result<()> {
    init_tracing();
    let device: DeviceId = "dev-upgrade".parse()?;
    let permissions = serde_json::to_string(&device_permissions(&device))?;
    let auth = format!(
        "authorization {{\n  users = [\n    {{ user: \"{}\", password: \"{}\" }}\n    \
         {{ user: \"{device}\", password: \"{DEVICE_PASSWORD}\", permissions: {permissions} }}\n  \
         ]\n}}\n",
        ADMIN.0, ADMIN.1
    );
    let nats = NatsServer::start(Some(&auth))?;
    let admin = async_nats::ConnectOptions::with_user_and_password(ADMIN.0.into(), ADMIN.1.into())
        .connect(nats.url())
        .await
        .context("admin connects")?;
    let store = jetstream::new(admin)
        .create_object_store(object_store::Config {
            bucket: AGENT_BINARIES.into(),
            ..Default::default()
        })
        .await
        .context("creating the agent-binaries object store")?;
    // Another build first, so the wanted one's chunks do not start at sequence 1.
    let other = build(200 * 1024, 7);
    let other_sha = ContentHash::of_bytes(&other).to_string();
    store.put(other_sha.as_str(), &mut other.as_slice()).await?;
    let wanted = build(300 * 1024 + 17, 1);
    let sha = ContentHash::of_bytes(&wanted).to_string();
    let info = store.put(sha.as_str(), &mut wanted.as_slice()).await?;
    assert!(info.chunks >= 3, "{} chunks: expected several", info.chunks);

    let (tx, mut errors) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(
        device.to_string(),
        DEVICE_PASSWORD.into(),
    )
    .custom_inbox_prefix(device_inbox_prefix(&device))
    .event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
        }
    })
    .connect(nats.url())
    .await
    .context("device connects")?;

    let data = tempfile::tempdir()?;
    let staged = fetch::fetch(&client, data.path(), &sha)
        .await
        .context("the device fetches the build")?;
    assert_eq!(
        staged,
        harmony_fleet_agent::upgrade::staged_path(data.path(), &sha)
    );
    assert!(std::fs::read(&staged)? == wanted, "staged bytes differ");
    let mode = std::fs::metadata(&staged)?.permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    let missing = "cd".repeat(32);
    let err = fetch::fetch(&client, data.path(), &missing)
        .await
        .err()
        .context("fetching a missing build fails")?;
    let message = err.to_string();
    assert!(
        message.contains(&missing) && message.contains("is not in the agent-binaries object store"),
        "{message}"
    );

    // Reading is all a device may do: writing a chunk is refused.
    let forbidden = chunk_subject("x");
    client
        .publish(forbidden.clone(), Bytes::from_static(b"evil"))
        .await?;
    client.flush().await?;
    let deadline = tokio::time::Instant::now() + VIOLATION_DEADLINE;
    loop {
        let Ok(error) = tokio::time::timeout_at(deadline, errors.recv()).await else {
            bail!("publish to {forbidden}: no permissions violation within {VIOLATION_DEADLINE:?}");
        };
        let error = error.context("device connection closed")?;
        if error.contains("Permissions Violation") && error.contains(&forbidden) {
            break;
        }
    }
    Ok(())
}

/// A config the binary accepts (nothing connects to it).
fn write_config(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\ndevice_id = \"dev-1\"\ndata_dir = \"{}\"\n\n[nats]\nurls = \
             [\"nats://127.0.0.1:4222\"]\n\n[credentials]\ntype = \"toml-shared\"\nuser = \
             \"dev-1\"\npassword = \"x\"\n",
            dir.join("data").display()
        ),
    )?;
    Ok(path)
}

fn run(binary: &std::path::Path, args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    std::process::Command::new(binary)
        .args(args)
        .env_remove("FLEET_AGENT_CONFIG")
        .output()
        .with_context(|| format!("running {}", binary.display()))
}

/// What the deploy side relies on: a stamped build self-tests with its stamped version.
#[test]
fn a_stamped_build_self_tests_with_its_version() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path())?;
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_fleet-agent"));
    let out = run(
        agent,
        &[
            "self-test".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
    )?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("fleet-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
    let missing = dir.path().join("missing.toml");
    let out = run(
        agent,
        &[
            "self-test".as_ref(),
            "--config".as_ref(),
            missing.as_os_str(),
        ],
    )?;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.toml"),
        "{out:?}"
    );

    let mut bytes = std::fs::read(agent)?;
    harmony_fleet_agent::stamp(&mut bytes, "0.1.1-ci.7")?;
    let stamped = dir.path().join("stamped");
    std::fs::write(&stamped, &bytes)?;
    std::fs::set_permissions(&stamped, std::fs::Permissions::from_mode(0o755))?;
    let out = run(
        &stamped,
        &[
            "self-test".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
    )?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fleet-agent 0.1.1-ci.7\n"
    );
    let out = run(&stamped, &["--version".as_ref()])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fleet-agent 0.1.1-ci.7\n"
    );
    Ok(())
}

/// `upgrade-guard` as systemd runs it: the previous binary, before a start, past the new
/// binary's deadline — it reverts, and exits 0 whatever it finds.
#[test]
fn the_guard_binary_reverts_a_late_upgrade_and_never_fails_the_start() -> Result<()> {
    use harmony_fleet_agent::upgrade::{self, Pending};
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path())?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(upgrade::upgrade_dir(&data))?;
    let previous = harmony_fleet_agent::guard_binary(&data);
    std::fs::copy(env!("CARGO_BIN_EXE_fleet-agent"), &previous)?;
    let installed = dir.path().join("fleet-agent");
    std::fs::write(&installed, b"a new build that never heartbeats")?;
    let pending = Pending {
        deployment: "agent".parse()?,
        binary_path: installed.clone(),
        from_sha: "aa".repeat(32),
        from_version: "0.1.0".into(),
        to_sha: "bb".repeat(32),
        to_version: "0.1.1".into(),
        deadline_unix: 0,
        heartbeat_deadline_seconds: 60,
        starts: 1,
    };
    std::fs::write(upgrade::pending_path(&data), serde_json::to_vec(&pending)?)?;
    let guard = [
        "upgrade-guard".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ];
    let out = run(&previous, &guard)?;
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("did not heartbeat within 60 s (2 starts); reverted to 0.1.0"),
        "{stderr}"
    );
    assert!(
        std::fs::read(&installed)? == std::fs::read(&previous)?,
        "previous put back"
    );
    assert!(!upgrade::pending_path(&data).exists());
    assert!(upgrade::failed_path(&data).exists());

    // A marker it cannot read, or no config at all: logged, the start goes on.
    std::fs::write(upgrade::pending_path(&data), b"{")?;
    let out = run(&previous, &guard)?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pending.json"),
        "{out:?}"
    );
    let out = run(&previous, &["upgrade-guard".as_ref()])?;
    assert!(out.status.success(), "{out:?}");
    Ok(())
}
