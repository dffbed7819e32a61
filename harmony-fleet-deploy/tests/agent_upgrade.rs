//! Fleet-wide agent self-upgrade on real hosts (adr/0043): three Debian system containers
//! booting systemd, each with the agent installed over SSH by the Host target, a real local
//! fleet (control plane, nats-server, operator). A new build (the same static agent stamped
//! 0.1.1) is published to the `agent-binaries` object store and rolled out as an `AgentV0`
//! Deployment in two batches; every host ends up running it under systemd. Then a broken build
//! (a static program that passes the self-test and exits at start) is rolled out: the first
//! host's guard puts 0.1.1 back, the device reports why, the rollout pauses naming the device,
//! and the other hosts never receive the broken build.

#[path = "support/test_host.rs"]
#[allow(dead_code)]
mod test_host;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::local::SupervisionMode;
use harmony::score::Score;
use harmony::topologies::LocalTopology;
use harmony::topology::Topology;
use harmony_fleet_contracts::buckets::DEVICE_HEARTBEAT;
use harmony_fleet_contracts::payload::{AgentV0, ReconcileScore};
use harmony_fleet_contracts::{DeviceId, Heartbeat, keys};
use harmony_fleet_deploy::agent::publish::{self, Published};
use harmony_fleet_deploy::local::{DownOnDrop, LocalFleet};
use harmony_fleet_deploy::wait::{self, Poll};
use harmony_fleet_deploy::{FleetAgentScore, FleetDeploymentScore, FleetServerScore};
use harmony_fleet_types::crd::deployment::{
    BatchSpec, Deployment, RolloutSpec, RolloutStrategy, TargetSelector,
};
use test_host::TestHost;

const HOSTS: usize = 3;

async fn run(
    score: &dyn Score<LocalTopology>,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    score
        .create_interpret()
        .execute(&Inventory::new("test"), topology)
        .await
}

/// A build that passes the agent's self-test (it prints the version it is rolled out as) and
/// exits at start, as a build broken at run time does: compiled static here with rustc.
fn broken_build(dir: &Path, version: &str) -> std::path::PathBuf {
    let source = dir.join("broken.rs");
    std::fs::write(
        &source,
        format!(
            "fn main() {{\n\
             if std::env::args().nth(1).as_deref() == Some(\"self-test\") {{\n\
             println!(\"fleet-agent {version}\");\n\
             return;\n\
             }}\n\
             eprintln!(\"broken build: exiting at start\");\n\
             std::process::exit(1);\n\
             }}\n"
        ),
    )
    .expect("write broken.rs");
    let binary = dir.join("fleet-agent-broken");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = std::process::Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "target-feature=+crt-static",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-o",
        ])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("rustc runs");
    assert!(status.success(), "rustc failed to build the broken build");
    binary
}

/// The version each device's latest heartbeat reports.
async fn heartbeat_versions(beats: &jetstream::kv::Store, devices: &[DeviceId]) -> Vec<String> {
    let mut versions = Vec::new();
    for device in devices {
        let version = match beats.get(keys::heartbeat_key(device)).await {
            Ok(Some(bytes)) => serde_json::from_slice::<Heartbeat>(&bytes)
                .map(|h| h.agent_version.to_string())
                .unwrap_or_else(|e| format!("unreadable: {e}")),
            other => format!("no heartbeat ({other:?})"),
        };
        versions.push(version);
    }
    versions
}

async fn wait_versions(
    beats: &jetstream::kv::Store,
    devices: &[DeviceId],
    wanted: &[&str],
    deadline: Duration,
) {
    wait::until("the agents' heartbeats", deadline, || async {
        let seen = heartbeat_versions(beats, devices).await;
        if seen.iter().map(String::as_str).eq(wanted.iter().copied()) {
            Poll::Ready(())
        } else {
            Poll::Pending(format!("versions {seen:?}, want {wanted:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{}", e.chain()));
}

async fn installed_sha(host: &TestHost) -> String {
    host.ssh()
        .run("sha256sum /usr/local/bin/fleet-agent")
        .await
        .expect("sha256sum")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn agent_deployment(payload: AgentV0, selector: &TargetSelector) -> FleetDeploymentScore {
    FleetDeploymentScore::new(
        "default",
        "fleet-agent",
        selector.clone(),
        ReconcileScore::AgentV0(payload),
    )
    .with_rollout(RolloutSpec {
        strategy: RolloutStrategy::Batches,
        batches: vec![BatchSpec {
            count: Some(1),
            percent: None,
            pick: BTreeMap::new(),
        }],
        ..RolloutSpec::default()
    })
    .with_timeout(Duration::from_secs(180))
}

#[tokio::test]
async fn agents_upgrade_in_two_batches_and_a_broken_build_is_reverted_and_pauses_the_rollout() {
    let Some(binary) = test_host::agent_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = DownOnDrop {
        state_dir: dir.path().to_owned(),
        keep_state: false,
    };
    let suffix = test_host::name_suffix(dir.path());
    let started = Instant::now();
    let mut hosts = Vec::new();
    for i in 1..=HOSTS {
        hosts.push(
            TestHost::boot(&format!("hfup{i}-{suffix}"), dir.path())
                .await
                .unwrap_or_else(|e| panic!("booting test host {i}: {e:#}")),
        );
    }
    eprintln!("{HOSTS} hosts booted in {:?}", started.elapsed());

    let topology = LocalTopology::new(dir.path(), SupervisionMode::Owned).expect("topology");
    topology.ensure_ready().await.expect("control plane");
    let mut fleet = LocalFleet::with_devices(0).expect("fleet");
    fleet.operator.smoke_timeout = Duration::from_secs(60);
    let mut nats = fleet.nats_score();
    nats.lan_addresses = hosts.iter().map(|h| h.gateway.into()).collect();
    run(
        &FleetServerScore {
            nats,
            operator: fleet.operator.clone(),
        },
        &topology,
    )
    .await
    .unwrap_or_else(|e| panic!("FleetServerScore failed: {}", e.chain()));

    // Every host runs the agent as built (0.1.0) under systemd.
    let selector = TargetSelector {
        match_labels: BTreeMap::from([("fleet".to_owned(), "upgrade".to_owned())]),
        ..TargetSelector::default()
    };
    let mut devices = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let device: DeviceId = format!("pi-up-{}", i + 1).parse().expect("device id");
        let labels = BTreeMap::from([("fleet".to_owned(), "upgrade".to_owned())]);
        let mut score = FleetAgentScore::host(device.clone(), labels, host.agent(&binary));
        score.heartbeat_interval_secs = 2;
        score.smoke_timeout = Duration::from_secs(90);
        run(&score, &topology)
            .await
            .unwrap_or_else(|e| panic!("installing the agent on {device}: {}", e.chain()));
        devices.push(device);
    }
    let js = test_host::admin_jetstream(dir.path()).await;
    let beats = js
        .get_key_value(DEVICE_HEARTBEAT)
        .await
        .expect("heartbeats");
    let built = env!("CARGO_PKG_VERSION");
    wait_versions(&beats, &devices, &[built; HOSTS], Duration::from_secs(30)).await;

    // 0.1.1: the same agent, stamped with another version (another SHA-256).
    let mut next = std::fs::read(&binary).expect("read the agent");
    harmony_fleet_agent::version::stamp(&mut next, "0.1.1").expect("stamp 0.1.1");
    let next_path = dir.path().join("fleet-agent-0.1.1");
    std::fs::write(&next_path, &next).expect("write 0.1.1");
    let published: Published = publish::publish(&js, &next_path, &next)
        .await
        .expect("publish 0.1.1");
    assert!(published.uploaded);
    let again = publish::publish(&js, &next_path, &next)
        .await
        .expect("publish again");
    assert!(!again.uploaded, "the same bytes are not uploaded twice");

    let upgrade = Instant::now();
    let mut payload = published.payload("0.1.1");
    payload.heartbeat_deadline_seconds = 30;
    run(&agent_deployment(payload, &selector), &topology)
        .await
        .unwrap_or_else(|e| panic!("rolling out 0.1.1: {}", e.chain()));
    eprintln!(
        "0.1.1 rolled out to {HOSTS} hosts in {:?}",
        upgrade.elapsed()
    );
    wait_versions(&beats, &devices, &["0.1.1"; HOSTS], Duration::from_secs(30)).await;
    for host in &hosts {
        assert_eq!(installed_sha(host).await, published.sha256, "{}", host.name);
    }
    let client = topology.k8s_client().await.expect("kube client");
    let deployments: kube::Api<Deployment> = kube::Api::namespaced(client, "default");
    let status = deployments
        .get("fleet-agent")
        .await
        .expect("the Deployment")
        .status
        .expect("a status");
    let rollout = status.rollout.clone().expect("a rollout");
    assert_eq!(rollout.total_batches, 2, "{rollout:?}");
    assert_eq!(status.aggregate.succeeded, HOSTS as u64, "{status:?}");

    // A broken build: the first batch's host takes it, its guard puts 0.1.1 back, the rollout
    // pauses naming that host and why, and the other hosts never get it.
    let broken_path = broken_build(dir.path(), "0.1.2");
    let broken_bytes = std::fs::read(&broken_path).expect("read the broken build");
    let broken = publish::publish(&js, &broken_path, &broken_bytes)
        .await
        .expect("publish the broken build");
    let mut payload = broken.payload("0.1.2");
    payload.heartbeat_deadline_seconds = 20;
    let broken_rollout = Instant::now();
    let err = run(&agent_deployment(payload, &selector), &topology)
        .await
        .expect_err("the broken build pauses the rollout")
        .chain();
    eprintln!(
        "broken build paused after {:?}: {err}",
        broken_rollout.elapsed()
    );
    assert!(err.contains("Paused") || err.contains("paused"), "{err}");
    assert!(err.contains("reverted"), "{err}");
    let status = deployments
        .get("fleet-agent")
        .await
        .expect("the Deployment")
        .status
        .expect("a status");
    assert_eq!(status.failing_devices.len(), 1, "{status:?}");
    let failed = &status.failing_devices[0];
    let paused = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Paused")
        .expect("a Paused condition");
    assert_eq!(paused.status, "True", "{paused:?}");
    assert!(
        paused.message.contains(&failed.device) && paused.message.contains("reverted"),
        "{paused:?}"
    );
    // Every host runs 0.1.1 again (the reverted one included), from the 0.1.1 binary.
    wait_versions(&beats, &devices, &["0.1.1"; HOSTS], Duration::from_secs(60)).await;
    for host in &hosts {
        assert_eq!(installed_sha(host).await, published.sha256, "{}", host.name);
        let active = host
            .ssh()
            .run("systemctl is-active harmony-fleet-agent")
            .await
            .expect("is-active");
        assert_eq!(active.trim(), "active", "{}", host.name);
    }
    eprintln!("whole test: {:?}", started.elapsed());
}
