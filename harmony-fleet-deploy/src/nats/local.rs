//! [`FleetNatsScore`] on `LocalTopology`: one or three `nats-server` processes under
//! `<state>/nats/`, configuration generated from the contract, buckets created by the admin.

use std::net::SocketAddr;
use std::time::Duration;

use harmony::capability::ProcessSupervisor;
use harmony::interpret::{InterpretError, Outcome};
use harmony::local::bins;
use harmony::local::certs::ServerTls;
use harmony::local::nats::{ClusterSection, NatsTls, ServerConfig};
use harmony::local::probe;
use harmony::local::{ProcessChange, ProcessSpec};
use harmony::topologies::LocalTopology;
use harmony_fleet_operator::kv::{BucketChange, ensure_buckets};
use sha2::{Digest, Sha256};

use super::{FleetNatsScore, NatsEndpoint, smoke};
use crate::error::DeployError;
use crate::files::write_private;
use crate::trust::LocalTrust;
use crate::wait::{self, Poll};

/// The cluster name of a three-node local NATS.
const CLUSTER_NAME: &str = "harmony-fleet";

/// One server's ports.
struct Member {
    name: String,
    port: u16,
    monitor_port: u16,
    route_port: Option<u16>,
}

/// The process name of member `i` (1-based): what `restart_process`/`stop_process` take.
pub fn process_name(i: usize) -> String {
    format!("nats-{i}")
}

pub(super) async fn deploy(
    score: &FleetNatsScore,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    let state = topology.state_dir().to_owned();
    let dir = state.join("nats");
    // Operator mode (adr/0016): the configuration names no device, so it is the same text on
    // every run and enrolling a device never restarts the server.
    let (trust, trust_created) = LocalTrust::load_or_create(&state)?;
    let auth = trust.auth_config();
    // TLS always: clients verify the server against this CA (kept across runs).
    let lan_names: Vec<String> = score.lan_addresses.iter().map(|a| a.to_string()).collect();
    let certs = ServerTls::load_or_generate_for(
        &LocalTrust::dir(&state).join("tls"),
        "harmony-fleet-nats",
        &lan_names,
    )
    .map_err(DeployError::from)?;
    // Loopback unless devices on a LAN must reach the servers (the certificate names those
    // addresses; the routes stay on loopback).
    let listen_host = if lan_names.is_empty() {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let tls = NatsTls {
        cert_file: certs.server_cert.clone(),
        key_file: certs.server_key.clone(),
        ca_file: certs.ca_cert.clone(),
    };
    let program = topology
        .bins()
        .locate(bins::NATS_SERVER)
        .map_err(|e| InterpretError::failed(format!("nats-server is not installed: {e}")))?;

    let count = score.replicas.count();
    // Servers whose JetStream store exists: their number cannot change in place.
    let installed = (1..=3)
        .filter(|i| dir.join(process_name(*i)).join("jetstream").is_dir())
        .count();
    super::check_server_count(
        (installed > 0).then_some(installed),
        count,
        "`harmony-fleet-deploy local down` removes the fleet's state (desired state and reports \
         with it), then `local up` starts the servers you want",
    )?;
    let mut members = Vec::with_capacity(count);
    for i in 1..=count {
        let name = process_name(i);
        members.push(Member {
            port: topology.reserve_port(&name)?,
            monitor_port: topology.reserve_port(&format!("{name}:monitor"))?,
            route_port: if count > 1 {
                Some(topology.reserve_port(&format!("{name}:route"))?)
            } else {
                None
            },
            name,
        });
    }

    let mut details = Vec::new();
    let mut changed = trust_created;
    for member in &members {
        let member_dir = dir.join(&member.name);
        let cluster = member.route_port.map(|port| ClusterSection {
            name: CLUSTER_NAME.to_owned(),
            port,
            routes: members
                .iter()
                .filter(|m| m.name != member.name)
                .filter_map(|m| m.route_port)
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect(),
        });
        let store = member_dir.join("jetstream");
        let text = ServerConfig {
            server_name: &member.name,
            host: listen_host,
            port: member.port,
            monitor_port: member.monitor_port,
            store_dir: &store,
            max_file_store: Some(score.storage_bytes()),
            cluster: cluster.as_ref(),
            auth: Some(&auth),
            tls: Some(&tls),
        }
        .render()
        .map_err(|e| InterpretError::failed(format!("rendering the NATS configuration: {e}")))?;
        let config = member_dir.join("nats.conf");
        write_private(&config, text.as_bytes())?;
        // The digest makes a changed configuration a changed spec, so the supervisor restarts
        // the server with it. Devices are not in it: enrolling one changes nothing here.
        // The certificate's names too: a reissued certificate needs a restart to be served.
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());
        if !lan_names.is_empty() {
            hasher.update(lan_names.join(",").as_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        let spec = ProcessSpec::new(&member.name, &program, member_dir.join("nats-server.log"))
            .arg("--config")
            .arg(&config)
            .env("FLEET_NATS_CONFIG_SHA256", digest)
            .stop_timeout(Duration::from_secs(10));
        let change = topology.ensure_process(spec).await?;
        if change != ProcessChange::Unchanged {
            changed = true;
            details.push(format!(
                "{}: {change:?} on port {}",
                member.name, member.port
            ));
        }
    }

    for member in &members {
        wait_healthy(topology, member, count, score.smoke_timeout).await?;
    }

    let endpoint = NatsEndpoint {
        urls: members
            .iter()
            .map(|m| format!("nats://127.0.0.1:{}", m.port))
            .collect(),
        ca_file: Some(certs.ca_cert.clone()),
    };
    let admin = smoke::connect(&endpoint, &trust.admin()?, Default::default()).await?;
    let js = async_nats::jetstream::new(admin);
    let buckets = wait::until(
        "the fleet buckets to be created",
        score.smoke_timeout,
        || {
            let js = js.clone();
            async move {
                match ensure_buckets(&js, count, score.fleet_capacity).await {
                    Ok(changes) => Poll::Ready(Ok(changes)),
                    // One server's storage does not grow by waiting.
                    Err(e @ harmony_fleet_operator::Error::Storage { .. }) if count == 1 => {
                        Poll::Ready(Err(e))
                    }
                    // A fresh cluster answers "insufficient resources" until its meta leader is
                    // elected: retry within the deadline.
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        },
    )
    .await?
    .map_err(|e| InterpretError::failed(e.to_string()))?;
    for (bucket, change) in buckets {
        if change != BucketChange::Unchanged {
            changed = true;
            details.push(format!("bucket {bucket}: {change:?} ({count} replica(s))"));
        }
    }
    let endpoint_json = serde_json::to_vec_pretty(&endpoint).unwrap_or_default();
    write_private(&NatsEndpoint::local_path(&state), &endpoint_json)?;

    smoke::kv_round_trip(&endpoint, &trust.operator()?).await?;
    let smoke_device: harmony_fleet_contracts::DeviceId = "harmony-smoke"
        .parse()
        .map_err(|e| InterpretError::failed(format!("smoke device id: {e}")))?;
    smoke::device_is_isolated(
        &endpoint,
        &smoke_device,
        &trust.throwaway_device(&smoke_device)?,
    )
    .await?;

    let message = format!(
        "NATS at {} (TLS, operator mode: devices enroll with their own keys); KV round trip ok, cross-device read refused",
        endpoint.urls.join(","),
    );
    Ok(if changed {
        Outcome::success(message).with_details(details)
    } else {
        Outcome::noop(message)
    })
}

async fn wait_healthy(
    topology: &LocalTopology,
    member: &Member,
    count: usize,
    deadline: Duration,
) -> Result<(), InterpretError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], member.monitor_port));
    // A lone server only has to enable JetStream; cluster members must also be current.
    let path = if count == 1 {
        "/healthz?js-enabled-only=true"
    } else {
        "/healthz"
    };
    let name = member.name.clone();
    wait::until(
        &format!("{name} to report healthy ({path})"),
        deadline,
        || {
            let name = name.clone();
            async move {
                match topology.process_status(&name) {
                    Some(status) if !status.running => {
                        return Poll::Failed(format!(
                            "{name} exited; see {}:\n{}",
                            status.log_file.display(),
                            harmony::local::process::log_tail(&status.log_file, 20)
                        ));
                    }
                    _ => {}
                }
                match probe::http_get(addr, path, Duration::from_secs(2)).await {
                    Ok(response) if response.status == 200 => Poll::Ready(()),
                    Ok(response) => {
                        Poll::Pending(format!("{}: {}", response.status, response.body))
                    }
                    Err(e) => Poll::Pending(e),
                }
            }
        },
    )
    .await
}
