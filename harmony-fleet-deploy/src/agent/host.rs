//! [`FleetAgentScore`] with [`HostAgent`]: the agent installed on a real Linux host (a Pi on a
//! LAN, a gateway, a VM) over SSH and run by systemd, as a device runs it in production.
//!
//! What lands on the host (root-owned): the static agent binary for its architecture at
//! [`BINARY_PATH`], `agent.toml`, the bootstrap credentials (0600) and the fleet CA under
//! [`CONFIG_DIR`], and unit [`UNIT`]. Each file is compared by SHA-256 with what the host
//! holds and copied only when it differs, so a second run copies nothing, restarts nothing and
//! says so. The agent's key and its last desired state stay in [`DATA_DIR`], which uninstall
//! keeps (the device keeps its identity when reinstalled).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use harmony::capability::{K8sClient, ProcessSupervisor};
use harmony::interpret::{InterpretError, Outcome};
use harmony::topologies::LocalTopology;
use harmony_fleet_contracts::buckets::DEVICE_HEARTBEAT;
use harmony_fleet_contracts::{Heartbeat, keys};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::config::{AgentConfig, AgentCredentials};
use super::elf;
use super::ssh::{SshHost, shell_quote};
use super::{FleetAgentScore, HostAgent};
use crate::error::DeployError;
use crate::nats::{NatsEndpoint, smoke};
use crate::trust::LocalTrust;
use crate::wait::{self, Poll};

/// The systemd unit's name.
pub const UNIT: &str = "harmony-fleet-agent.service";
/// Where the agent binary is installed.
pub const BINARY_PATH: &str = "/usr/local/bin/fleet-agent";
/// The agent's configuration directory.
pub const CONFIG_DIR: &str = "/etc/fleet-agent";
/// The agent's data directory (its key, its last desired state).
pub const DATA_DIR: &str = "/var/lib/fleet-agent";
const UNIT_PATH: &str = "/etc/systemd/system/harmony-fleet-agent.service";

/// The binary systemd runs before every start to undo a self-upgrade whose new build does not
/// heartbeat in time (adr/0043): the build that ran before the upgrade, kept by the agent.
/// Absent when no upgrade happened (the `-` prefix makes that no failure).
pub const GUARD_PATH: &str = "/var/lib/fleet-agent/upgrade/previous";

/// The unit: restarted whenever it exits, without systemd's start limit (a new build that
/// exits at start is restarted until the guard puts the previous one back); `KillMode=process`
/// so that stopping or upgrading the agent stops the agent only, never the workloads it
/// started (their conmon processes live in its cgroup); the agent itself exits within 2 s of
/// SIGTERM (adr/0022).
pub fn unit_text() -> String {
    format!(
        "# Installed by harmony-fleet-deploy (FleetAgentScore, Host target).\n\
         [Unit]\n\
         Description=harmony fleet device agent\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         StartLimitIntervalSec=0\n\
         \n\
         [Service]\n\
         ExecStartPre=-{GUARD_PATH} upgrade-guard --config {CONFIG_DIR}/agent.toml\n\
         ExecStart={BINARY_PATH} run --config {CONFIG_DIR}/agent.toml\n\
         Environment=RUST_LOG=info\n\
         Restart=always\n\
         RestartSec=2\n\
         KillMode=process\n\
         TimeoutStopSec=10\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The connection a [`HostAgent`] describes; its pinned key kept under the state directory.
pub fn ssh_host(state_dir: &Path, host: &HostAgent) -> Result<SshHost, DeployError> {
    let known_hosts = state_dir
        .join("hosts")
        .join(sanitize(&host.address))
        .join("known_hosts");
    SshHost::pin(&host.address, host.port, &host.known_host_key, &known_hosts)?;
    Ok(SshHost {
        address: host.address.clone(),
        port: host.port,
        user: host.user.clone(),
        identity_file: host.identity_file.clone(),
        known_hosts,
        timeout: Duration::from_secs(120),
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// One file the host must hold.
struct Desired {
    path: String,
    mode: u32,
    contents: Vec<u8>,
}

/// The NATS URLs as the host reaches them: the local endpoint's ports at `address`.
fn host_urls(endpoint: &NatsEndpoint, address: std::net::IpAddr) -> Vec<String> {
    endpoint
        .urls
        .iter()
        .map(|url| {
            let port = url.rsplit(':').next().unwrap_or("4222");
            format!("nats://{address}:{port}")
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, DeployError> {
    std::fs::read(path).map_err(|e| DeployError::io(format!("reading {}", path.display()), e))
}

pub(super) async fn deploy(
    score: &FleetAgentScore,
    host: &HostAgent,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    let state = topology.state_dir().to_owned();
    let device = &score.device_id;
    let endpoint = NatsEndpoint::load_local(&state)?;
    let (trust, _) = LocalTrust::load_or_create(&state)?;
    let ssh = ssh_host(&state, host)?;

    let arch = ssh.run("uname -m").await.map_err(DeployError::from)?;
    let arch = arch.trim().to_owned();
    let Some(binary) = host.agent_binaries.get(&arch) else {
        let known: Vec<&str> = host.agent_binaries.keys().map(String::as_str).collect();
        return Err(InterpretError::invalid_input(
            "agent_binaries",
            format!(
                "has no fleet-agent for {} (`uname -m` says {arch}; binaries given for: [{}]); \
                 build a static agent for it (e.g. `cargo build --release --target \
                 {arch}-unknown-linux-musl -p harmony-fleet-agent`) and add it under \"{arch}\"",
                ssh.destination(),
                known.join(", ")
            ),
        ));
    };

    let agent = read(binary)?;
    elf::check_static_for(&agent, &arch).map_err(|why| {
        InterpretError::invalid_input(
            "agent_binaries",
            format!(
                "[\"{arch}\"] = {} {why}; give a static agent for {arch}: `cargo build --release \
                 --target {arch}-unknown-linux-musl -p harmony-fleet-agent` (scripts/build-images.sh \
                 does), or on a glibc toolchain `RUSTFLAGS=\"-C target-feature=+crt-static\" cargo \
                 build --release --target {arch}-unknown-linux-gnu -p harmony-fleet-agent`",
                binary.display()
            ),
        )
    })?;
    let ca = endpoint.ca_file.as_deref().ok_or_else(|| {
        InterpretError::failed(format!(
            "the local NATS endpoint names no CA file; run FleetNatsScore with `lan_addresses` \
             containing {} first",
            host.nats_address
        ))
    })?;
    // The servers must answer at the address the host dials, under a certificate naming it.
    let names_file = LocalTrust::dir(&state).join("tls").join("server.names");
    let served = std::fs::read_to_string(&names_file).unwrap_or_default();
    if !served.lines().any(|n| n == host.nats_address.to_string()) {
        return Err(InterpretError::invalid_input(
            "nats_address",
            format!(
                "is {}, where the local NATS does not serve (its certificate names: {}); run \
                 FleetNatsScore with `lan_addresses` containing {} first",
                host.nats_address,
                served.lines().collect::<Vec<_>>().join(", "),
                host.nats_address
            ),
        ));
    }
    let config = AgentConfig {
        device_id: device.to_string(),
        data_dir: DATA_DIR.into(),
        heartbeat_interval_secs: score.heartbeat_interval_secs,
        nats_urls: host_urls(&endpoint, host.nats_address),
        nats_ca: Some(format!("{CONFIG_DIR}/nats-ca.crt").into()),
        labels: score.labels.clone(),
        credentials: AgentCredentials::Nkey {
            bootstrap_creds: format!("{CONFIG_DIR}/bootstrap.creds").into(),
        },
        podman: BTreeMap::new(),
    };
    let files = vec![
        Desired {
            path: BINARY_PATH.to_owned(),
            mode: 0o755,
            contents: agent,
        },
        Desired {
            path: format!("{CONFIG_DIR}/agent.toml"),
            mode: 0o600,
            contents: config.render().into_bytes(),
        },
        Desired {
            path: format!("{CONFIG_DIR}/bootstrap.creds"),
            mode: 0o600,
            contents: read(&trust.bootstrap_creds_path())?,
        },
        Desired {
            path: format!("{CONFIG_DIR}/nats-ca.crt"),
            mode: 0o644,
            contents: read(ca)?,
        },
        Desired {
            path: UNIT_PATH.to_owned(),
            mode: 0o644,
            contents: unit_text().into_bytes(),
        },
    ];

    let mut details = Vec::new();
    let copied = sync_files(&ssh, &files).await?;
    for path in &copied {
        details.push(format!("copied {path}"));
    }
    let run = |command: &'static str| {
        let ssh = ssh.clone();
        async move { ssh.run(command).await.map_err(DeployError::from) }
    };
    if copied.iter().any(|p| p == UNIT_PATH) {
        run("systemctl daemon-reload").await?;
    }
    let enabled = ssh
        .run(&format!("systemctl is-enabled {UNIT}"))
        .await
        .is_ok();
    if !enabled {
        run("systemctl enable harmony-fleet-agent.service").await?;
        details.push(format!("enabled {UNIT}"));
    }
    // The key is made on the host and never leaves it; this machine plays the admin and
    // approves the public key before the agent asks.
    if host.pre_approve {
        let printed = ssh
            .run(&format!(
                "{BINARY_PATH} identity --config {}",
                shell_quote(&format!("{CONFIG_DIR}/agent.toml"))
            ))
            .await
            .map_err(DeployError::from)?;
        let public_key = printed
            .lines()
            .find_map(|l| l.strip_prefix("public key:"))
            .map(|k| k.trim().to_owned())
            .ok_or_else(|| {
                InterpretError::failed(format!(
                    "fleet-agent identity on {} printed no public key: {printed}",
                    ssh.destination()
                ))
            })?;
        let client = topology.k8s_client().await?;
        crate::devices::approve(&client, device.as_str(), Some(&public_key)).await?;
    }
    let active = ssh
        .run(&format!("systemctl is-active {UNIT}"))
        .await
        .is_ok();
    let started = Timestamp::now();
    let changed = !copied.is_empty() || !active;
    if changed {
        run("systemctl restart harmony-fleet-agent.service").await?;
        details.push(format!("(re)started {UNIT}"));
    }
    let since = if changed {
        started - Duration::from_secs(1)
    } else {
        started - Duration::from_secs(3 * score.heartbeat_interval_secs.max(1) + 5)
    };
    wait_heartbeat(score, &ssh, &endpoint, &trust, since).await?;
    tracing::info!(device = %device, host = %ssh.destination(), %arch, changed, "host agent heartbeating");

    let message = format!(
        "device {device} heartbeating from {} ({arch}, systemd unit {UNIT})",
        host.address
    );
    Ok(if changed {
        Outcome::success(message).with_details(details)
    } else {
        Outcome::noop(format!("{message}; nothing to change"))
    })
}

/// Copies the files whose SHA-256 differs from the host's copy; returns their paths.
async fn sync_files(ssh: &SshHost, files: &[Desired]) -> Result<Vec<String>, DeployError> {
    let paths: Vec<String> = files.iter().map(|f| shell_quote(&f.path)).collect();
    // Missing files print nothing (and `sha256sum` exits 1): only the listed ones count.
    let listing = ssh
        .run(&format!("sha256sum {} 2>/dev/null; true", paths.join(" ")))
        .await?;
    let remote: BTreeMap<&str, &str> = listing
        .lines()
        .filter_map(|line| {
            let (digest, path) = line.split_once("  ")?;
            Some((path, digest))
        })
        .collect();
    let mut copied = Vec::new();
    for file in files {
        let digest = hex::encode(Sha256::digest(&file.contents));
        if remote.get(file.path.as_str()) == Some(&digest.as_str()) {
            continue;
        }
        ssh.write_file(&file.path, file.mode, &file.contents)
            .await?;
        tracing::info!(host = %ssh.destination(), path = %file.path, bytes = file.contents.len(), "copied");
        copied.push(file.path.clone());
    }
    Ok(copied)
}

/// Stops and disables the agent, removes its unit, binary and configuration. The data
/// directory ([`DATA_DIR`]: the device's key and its last desired state) is kept. A host
/// without the agent is fine (nothing to change).
pub async fn uninstall(state_dir: &Path, host: &HostAgent) -> Result<Outcome, InterpretError> {
    let ssh = ssh_host(state_dir, host)?;
    let present = ssh
        .run(&format!(
            "test -e {UNIT_PATH} -o -e {BINARY_PATH} -o -e {CONFIG_DIR} && echo present; true"
        ))
        .await
        .map_err(DeployError::from)?;
    if present.trim() != "present" {
        return Ok(Outcome::noop(format!(
            "no fleet agent installed on {}",
            host.address
        )));
    }
    ssh.run(&format!(
        "systemctl disable --now {UNIT} 2>/dev/null; rm -f {UNIT_PATH} {BINARY_PATH} && \
         rm -rf {CONFIG_DIR} && systemctl daemon-reload && systemctl reset-failed {UNIT} \
         2>/dev/null; true"
    ))
    .await
    .map_err(DeployError::from)?;
    tracing::info!(host = %ssh.destination(), "host agent uninstalled");
    Ok(Outcome::success(format!(
        "fleet agent removed from {} (unit, binary, {CONFIG_DIR}; {DATA_DIR} kept)",
        host.address
    )))
}

/// Waits for a heartbeat of the device written at or after `since`; on the deadline, says what
/// systemd last reported for the unit.
async fn wait_heartbeat(
    score: &FleetAgentScore,
    ssh: &SshHost,
    endpoint: &NatsEndpoint,
    trust: &LocalTrust,
    since: Timestamp,
) -> Result<(), InterpretError> {
    let device = &score.device_id;
    let admin = smoke::connect(endpoint, &trust.admin()?, Default::default()).await?;
    let kv = jetstream::new(admin)
        .get_key_value(DEVICE_HEARTBEAT)
        .await
        .map_err(|e| DeployError::nats(format!("opening bucket {DEVICE_HEARTBEAT}"), e))?;
    let key = keys::heartbeat_key(device);
    let result = wait::until(
        &format!("a heartbeat from device {device} (on {})", ssh.address),
        score.smoke_timeout,
        || {
            let kv = kv.clone();
            let key = key.clone();
            async move {
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
    .await;
    if let Err(e) = result {
        let journal = ssh
            .run(&format!(
                "systemctl status --no-pager {UNIT} 2>&1 | tail -n 20; true"
            ))
            .await
            .unwrap_or_else(|e| e.to_string());
        return Err(InterpretError::failed(format!(
            "{}; systemd on {} says:\n{journal}",
            e.chain(),
            ssh.address
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_reaches_the_local_ports_at_its_lan_address() {
        let endpoint = NatsEndpoint {
            urls: vec![
                "nats://127.0.0.1:4222".into(),
                "nats://127.0.0.1:4223".into(),
            ],
            ca_file: None,
        };
        let urls = host_urls(&endpoint, "10.213.4.1".parse().expect("ip"));
        assert_eq!(urls, ["nats://10.213.4.1:4222", "nats://10.213.4.1:4223"]);
    }

    #[test]
    fn the_unit_stops_only_the_agent_and_restarts_it() {
        let unit = unit_text();
        assert!(unit.contains("KillMode=process"), "{unit}");
        assert!(unit.contains("Restart=always"), "{unit}");
        assert!(unit.contains("StartLimitIntervalSec=0"), "{unit}");
        assert_eq!(
            Path::new(GUARD_PATH),
            harmony_fleet_agent::guard_binary(Path::new(DATA_DIR)),
            "the unit runs the guard where the agent keeps the previous build"
        );
        assert!(
            unit.contains("ExecStartPre=-/var/lib/fleet-agent/upgrade/previous upgrade-guard"),
            "{unit}"
        );
        assert!(unit.contains("WantedBy=multi-user.target"), "{unit}");
    }
}
