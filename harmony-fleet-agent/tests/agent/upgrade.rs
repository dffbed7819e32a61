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
    let other_sha = ContentHash::of_bytes(&other).as_str().to_owned();
    store.put(other_sha.as_str(), &mut other.as_slice()).await?;
    let wanted = build(300 * 1024 + 17, 1);
    let sha = ContentHash::of_bytes(&wanted).as_str().to_owned();
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
