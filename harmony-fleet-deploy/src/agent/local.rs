//! [`FleetAgentScore`] with [`LocalAgent`]: the agent as a supervised process on this host,
//! one simulated device per Score, isolated like a real one — its own data directory, its own
//! podman storage (`--root`/`--runroot`/`--tmpdir`, so devices never see or adopt each other's
//! containers) and, with `isolate_network`, its own network namespace (containers publish ports
//! at the device's address; two devices can publish the same port).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use harmony::capability::ProcessSupervisor;
use harmony::interpret::{InterpretError, Outcome};
use harmony::local::netns::DeviceNetwork;
use harmony::local::{Podman, ProcessChange, ProcessSpec};
use harmony::topologies::LocalTopology;
use harmony_fleet_contracts::buckets::DEVICE_HEARTBEAT;
use harmony_fleet_contracts::{DeviceId, Heartbeat, keys};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::config::{AgentConfig, AgentCredentials};
use super::{FleetAgentScore, LocalAgent};
use crate::binaries;
use crate::error::DeployError;
use crate::files::write_private;
use crate::nats::smoke::NatsIdentity;
use crate::nats::{NatsEndpoint, smoke};
use crate::trust::LocalTrust;
use crate::wait::{self, Poll};
use harmony::capability::K8sClient;

/// The supervisor's name for the agent of `device`.
pub fn process_name(device: &DeviceId) -> String {
    format!("agent-{device}")
}

/// The directory of a local device under the state directory.
pub fn device_dir(state_dir: &Path, device: &DeviceId) -> PathBuf {
    state_dir.join("devices").join(device.as_str())
}

/// The network namespace name of a local device: unique per state directory, so two state
/// directories (a `local up` and a test run) never share one.
pub fn netns_name(state_dir: &Path, device: &DeviceId) -> String {
    let digest = hex::encode(Sha256::digest(state_dir.as_os_str().as_encoded_bytes()));
    let mut name = format!("hf{}-{}", &digest[..6], device.as_str());
    name.truncate(64);
    name
}

/// Where a local device's podman keeps runtime state (`runroot`, `tmpdir`): under `/run`
/// (tmpfs, cleared at boot, as podman expects) and short, because podman refuses a runroot
/// longer than 50 characters. Named by a digest of the state directory and device id.
pub fn device_run_dir(state_dir: &Path, device: &DeviceId) -> PathBuf {
    let mut hasher = Sha256::new();
    hasher.update(state_dir.as_os_str().as_encoded_bytes());
    hasher.update(b"/");
    hasher.update(device.as_str().as_bytes());
    let digest = hex::encode(hasher.finalize());
    PathBuf::from("/run/harmony-fleet").join(&digest[..12])
}

/// `root`, `runroot` and `tmpdir` of a local device's own podman storage.
pub fn device_podman_dirs(state_dir: &Path, device: &DeviceId) -> [(&'static str, PathBuf); 3] {
    let run = device_run_dir(state_dir, device);
    [
        (
            "root",
            device_dir(state_dir, device).join("podman").join("root"),
        ),
        ("runroot", run.join("runroot")),
        ("tmpdir", run.join("tmp")),
    ]
}

/// The podman handle of a local device's own storage (what its agent uses).
pub fn device_podman(state_dir: &Path, device: &DeviceId) -> Result<Podman, InterpretError> {
    let [(_, root), (_, runroot), (_, tmpdir)] = device_podman_dirs(state_dir, device);
    let podman = Podman::new()
        .map_err(|e| InterpretError::failed(format!("podman is not usable: {e}")))?
        .with_storage(root, runroot)
        .with_tmpdir(tmpdir);
    Ok(podman)
}

pub(super) async fn deploy(
    score: &FleetAgentScore,
    local: &LocalAgent,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    let state = topology.state_dir().to_owned();
    let device = &score.device_id;
    let endpoint = NatsEndpoint::load_local(&state)?;
    let (trust, _) = LocalTrust::load_or_create(&state)?;
    let dir = device_dir(&state, device);
    let mut details = Vec::new();

    let mut podman_settings = BTreeMap::from(device_podman_dirs(&state, device));
    let podman = device_podman(&state, device)?;
    podman_settings.insert("containers_conf", podman.containers_conf().to_owned());
    let network = if local.isolate_network {
        let network = DeviceNetwork::ensure(&netns_name(&state, device))
            .await
            .map_err(|e| InterpretError::failed(format!("device network for {device}: {e}")))?;
        podman_settings.insert("network_namespace", network.path.clone());
        Some(network)
    } else {
        None
    };
    for tag in &local.demo_image_tags {
        let image = podman.build_demo_image(tag).await.map_err(|e| {
            InterpretError::failed(format!("building the demo image {tag} for {device}: {e}"))
        })?;
        details.push(format!("image {image} in the device's storage"));
    }

    let config = AgentConfig {
        device_id: device.to_string(),
        data_dir: dir.join("data"),
        heartbeat_interval_secs: score.heartbeat_interval_secs,
        nats_urls: endpoint.urls.clone(),
        nats_ca: endpoint.ca_file.clone(),
        labels: score.labels.clone(),
        credentials: AgentCredentials::Nkey {
            bootstrap_creds: trust.bootstrap_creds_path(),
        },
        podman: podman_settings,
    };
    let config_path = dir.join("agent.toml");
    let text = config.render();
    write_private(&config_path, text.as_bytes())?;
    // The device makes its own key; this host plays the admin and approves it before the
    // agent asks, so the agent's enrollment is answered at once.
    if local.pre_approve {
        let public_key = device_public_key(&config_path).await?;
        let client = topology.k8s_client().await?;
        crate::devices::approve(&client, device.as_str(), Some(&public_key)).await?;
        details.push(format!("key {public_key} approved"));
    }
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    let spec = ProcessSpec::new(
        process_name(device),
        binaries::AGENT.locate()?,
        dir.join("agent.log"),
    )
    .arg("run")
    .arg("--config")
    .arg(&config_path)
    .env("FLEET_AGENT_CONFIG_SHA256", digest)
    .env("RUST_LOG", "info")
    .stop_timeout(Duration::from_secs(10));
    let started = Timestamp::now();
    let change = topology.ensure_process(spec).await?;
    let since = if change == ProcessChange::Unchanged {
        started - Duration::from_secs(3 * score.heartbeat_interval_secs.max(1) + 5)
    } else {
        details.push(format!("agent process: {change:?}"));
        started - Duration::from_secs(1)
    };
    wait_heartbeat(topology, score, &endpoint, &trust.admin()?, since).await?;

    let mut message = format!("device {device} heartbeating");
    if let Some(network) = &network {
        message.push_str(&format!(" (address {})", network.device_address));
    }
    Ok(if change == ProcessChange::Unchanged {
        Outcome::noop(message)
    } else {
        Outcome::success(message).with_details(details)
    })
}

/// The public key of the device whose agent reads `config`, as `fleet-agent identity` prints
/// it (the agent creates its key on first use; the seed stays in its data dir).
async fn device_public_key(config: &Path) -> Result<String, InterpretError> {
    let output = tokio::process::Command::new(binaries::AGENT.locate()?)
        .arg("identity")
        .arg("--config")
        .arg(config)
        .output()
        .await
        .map_err(|e| InterpretError::failed(format!("running fleet-agent identity: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .map(|k| k.trim().to_owned())
        .filter(|_| output.status.success())
        .ok_or_else(|| {
            InterpretError::failed(format!(
                "fleet-agent identity --config {} printed no public key: {}",
                config.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        })
}

/// Waits for a heartbeat of the device written at or after `since`.
async fn wait_heartbeat(
    topology: &LocalTopology,
    score: &FleetAgentScore,
    endpoint: &NatsEndpoint,
    admin: &NatsIdentity,
    since: Timestamp,
) -> Result<(), InterpretError> {
    let device = &score.device_id;
    let admin = smoke::connect(endpoint, admin, Default::default()).await?;
    let kv = jetstream::new(admin)
        .get_key_value(DEVICE_HEARTBEAT)
        .await
        .map_err(|e| DeployError::nats(format!("opening bucket {DEVICE_HEARTBEAT}"), e))?;
    let key = keys::heartbeat_key(device);
    let process = process_name(device);
    wait::until(
        &format!("a heartbeat from device {device}"),
        score.smoke_timeout,
        || {
            let kv = kv.clone();
            let key = key.clone();
            let process = process.clone();
            async move {
                if let Some(status) = topology.process_status(&process)
                    && !status.running
                {
                    return Poll::Failed(format!(
                        "the agent exited; last lines of {}:\n{}",
                        status.log_file.display(),
                        harmony::local::process::log_tail(&status.log_file, 20)
                    ));
                }
                match kv.get(&key).await {
                    Ok(Some(bytes)) => match serde_json::from_slice::<Heartbeat>(&bytes)
                        .ok()
                        .and_then(|h| h.timestamp())
                    {
                        Some(at) if at >= since => Poll::Ready(()),
                        Some(at) => Poll::Pending(format!("last heartbeat at {at} (stale)")),
                        None => Poll::Pending("an unreadable heartbeat".into()),
                    },
                    Ok(None) => Poll::Pending("no heartbeat yet".into()),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        },
    )
    .await
}
