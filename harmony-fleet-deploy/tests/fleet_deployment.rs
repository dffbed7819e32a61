//! `FleetDeploymentScore` on a real local fleet (`LocalTopology`: local control plane,
//! nats-server, the operator and one device agent with its own podman storage and network
//! namespace): a typed Deployment reaches the device and answers HTTP there, a second run
//! changes nothing, and a Deployment of an image the device does not have fails with an error
//! naming the Deployment, the condition and the failing device.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use harmony::interpret::{InterpretError, Outcome, OutcomeStatus};
use harmony::inventory::Inventory;
use harmony::local::netns::DeviceNetwork;
use harmony::local::{SupervisionMode, probe};
use harmony::score::Score;
use harmony::topologies::LocalTopology;
use harmony::topology::Topology;
use harmony_fleet_contracts::payload::{
    PodmanV0, PortMapping, PullPolicy, ReconcileScore, Service,
};
use harmony_fleet_deploy::agent::local as agent_local;
use harmony_fleet_deploy::local::{DownOnDrop, LocalFleet};
use harmony_fleet_deploy::wait::{self, Poll};
use harmony_fleet_deploy::{FleetDeploymentScore, FleetServerScore};
use harmony_fleet_types::crd::deployment::TargetSelector;

async fn run(
    score: &dyn Score<LocalTopology>,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    score
        .create_interpret()
        .execute(&Inventory::new("test"), topology)
        .await
}

/// The demo image built on each local device, tag `tag`, answering its tag on `port`.
fn demo(tag: &str, port: u32) -> ReconcileScore {
    let mut web = Service::new("web", format!("localhost/fleet-demo:{tag}"));
    web.pull_policy = PullPolicy::Never;
    web.ports = vec![PortMapping {
        host_port: port,
        container_port: 8080,
        protocol: Default::default(),
        host_ip: None,
    }];
    ReconcileScore::PodmanV0(PodmanV0 {
        services: vec![web],
        init_containers: Vec::new(),
        stop_policy: Default::default(),
    })
}

#[tokio::test]
async fn a_typed_deployment_answers_on_its_device_is_idempotent_and_names_failing_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = DownOnDrop {
        state_dir: dir.path().to_owned(),
        keep_state: false,
    };
    let topology = LocalTopology::new(dir.path(), SupervisionMode::Owned).expect("topology");
    topology.ensure_ready().await.expect("control plane");
    let mut fleet = LocalFleet::with_devices(1).expect("fleet");
    fleet.heartbeat_interval_secs = 2;
    fleet.operator.smoke_timeout = Duration::from_secs(60);
    let server = FleetServerScore {
        nats: fleet.nats_score(),
        operator: fleet.operator.clone(),
    };
    run(&server, &topology)
        .await
        .unwrap_or_else(|e| panic!("FleetServerScore failed: {}", e.chain()));
    let device = fleet.devices[0].clone();
    run(&fleet.agent_score(&device), &topology)
        .await
        .unwrap_or_else(|e| panic!("FleetAgentScore failed: {}", e.chain()));

    let selector = TargetSelector {
        match_labels: BTreeMap::from([(
            "fleet.nationtech.io/device".to_owned(),
            device.id.to_string(),
        )]),
        ..TargetSelector::default()
    };
    let hello =
        FleetDeploymentScore::new("default", "hello-typed", selector.clone(), demo("v1", 8080))
            .with_timeout(Duration::from_secs(120));
    let outcome = run(&hello, &topology)
        .await
        .unwrap_or_else(|e| panic!("FleetDeploymentScore failed: {}", e.chain()));
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    assert!(
        outcome.message.contains("Ready on 1 device(s)"),
        "{}",
        outcome.message
    );

    // Ready is the operator's word; the device itself answers on its own address.
    let netns = agent_local::netns_name(dir.path(), &device.id);
    let address = DeviceNetwork::find(&netns)
        .await
        .expect("netns lookup")
        .unwrap_or_else(|| panic!("device {} has no network namespace {netns}", device.id))
        .device_address;
    let body = wait::until(
        &format!("{}:8080 ({address}) to answer v1", device.id),
        Duration::from_secs(30),
        || async move {
            match probe::http_get(
                SocketAddr::from((address, 8080)),
                "/",
                Duration::from_secs(2),
            )
            .await
            {
                Ok(r) if r.status == 200 && r.body.trim() == "v1" => Poll::Ready(r.body),
                Ok(r) => Poll::Pending(format!("HTTP {}: {}", r.status, r.body.trim())),
                Err(e) => Poll::Pending(e),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(body.trim(), "v1");

    let again = run(&hello, &topology)
        .await
        .unwrap_or_else(|e| panic!("second run failed: {}", e.chain()));
    assert_eq!(again.status, OutcomeStatus::Noop, "{again:?}");

    let broken =
        FleetDeploymentScore::new("default", "broken", selector, demo("no-such-tag", 8081))
            .with_timeout(Duration::from_secs(120));
    let err = run(&broken, &topology)
        .await
        .expect_err("an image the device does not have fails");
    let text = err.chain();
    eprintln!("broken: {text}");
    for needle in [
        "fleet Deployment default/broken",
        "condition Ready=False (NotReady)",
        "condition Degraded=True (DevicesFailing)",
        &format!("failing devices: {}: ", device.id),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in: {text}");
    }
}
