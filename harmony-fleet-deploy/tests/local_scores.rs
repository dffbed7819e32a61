//! Every fleet Score against `LocalTopology` — a real local control plane, nats-server,
//! operator and agent processes — and the errors a user meets first.

use std::net::TcpListener;
use std::time::Duration;

use harmony::capability::ProcessSupervisor;
use harmony::interpret::{InterpretError, Outcome, OutcomeStatus};
use harmony::inventory::Inventory;
use harmony::local::SupervisionMode;
use harmony::score::Score;
use harmony::topologies::LocalTopology;
use harmony::topology::Topology;
use harmony_fleet_deploy::FleetServerScore;
use harmony_fleet_deploy::local::{DownOnDrop, LocalFleet};
use harmony_fleet_deploy::nats::{FleetNatsScore, NatsEndpoint, smoke};
use harmony_fleet_deploy::trust::LocalTrust;

async fn run(
    score: &dyn Score<LocalTopology>,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    score
        .create_interpret()
        .execute(&Inventory::new("test"), topology)
        .await
}

fn fleet_of(devices: usize) -> LocalFleet {
    let mut fleet = LocalFleet::with_devices(devices).expect("fleet");
    fleet.heartbeat_interval_secs = 2;
    fleet.operator.smoke_timeout = Duration::from_secs(60);
    fleet
}

#[tokio::test]
async fn every_local_score_converges_and_a_second_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = DownOnDrop {
        state_dir: dir.path().to_owned(),
        keep_state: false,
    };
    let topology = LocalTopology::new(dir.path(), SupervisionMode::Owned).expect("topology");
    topology.ensure_ready().await.expect("control plane");
    let fleet = fleet_of(2);
    for score in fleet.scores() {
        let outcome = run(score.as_ref(), &topology)
            .await
            .unwrap_or_else(|e| panic!("{} failed: {}", score.name(), e.chain()));
        assert_eq!(
            outcome.status,
            OutcomeStatus::Success,
            "{}: {outcome:?}",
            score.name()
        );
    }
    for score in fleet.scores() {
        let outcome = run(score.as_ref(), &topology)
            .await
            .unwrap_or_else(|e| panic!("second run of {} failed: {}", score.name(), e.chain()));
        assert_eq!(
            outcome.status,
            OutcomeStatus::Noop,
            "second run of {} changed something: {outcome:?}",
            score.name()
        );
    }
    // The composite runs the same component Scores: nothing left to do.
    let server = FleetServerScore {
        nats: fleet.nats_score(),
        operator: fleet.operator.clone(),
    };
    let outcome = run(&server, &topology).await.expect("server score");
    assert_eq!(outcome.status, OutcomeStatus::Noop, "{outcome:?}");
    // One server does not become three in place (its JetStream data would be stranded): the
    // Score refuses before touching anything, and the server keeps running.
    let three = fleet
        .nats_score()
        .with_replicas(harmony_fleet_deploy::nats::NatsReplicas::Three);
    let err = run(&three, &topology)
        .await
        .expect_err("1 -> 3 servers in place")
        .chain();
    assert!(
        err.contains("replicas") && err.contains("local down"),
        "{err}"
    );
    let nats = harmony_fleet_deploy::nats::local::process_name(1);
    assert!(
        topology.process_status(&nats).is_some_and(|s| s.running),
        "{nats} runs"
    );
    for device in &fleet.devices {
        let name = harmony_fleet_deploy::agent::local::process_name(&device.id);
        assert!(
            topology.process_status(&name).is_some_and(|s| s.running),
            "{name} runs"
        );
    }

    // Enrolling a third device on the running fleet (`local up --devices 3`): it gets its own
    // key approved and heartbeats, and neither nats-server nor the operator restarts.
    let pid = |name: &str| topology.process_status(name).map(|s| s.pid);
    let nats_pid = pid("nats-1");
    let operator_pid = pid(harmony_fleet_deploy::operator::local::PROCESS);
    let bigger = fleet_of(3);
    for score in bigger.scores() {
        run(score.as_ref(), &topology)
            .await
            .unwrap_or_else(|e| panic!("{} with 3 devices failed: {}", score.name(), e.chain()));
    }
    assert!(nats_pid.is_some());
    assert_eq!(pid("nats-1"), nats_pid, "nats-server was not restarted");
    assert_eq!(
        pid(harmony_fleet_deploy::operator::local::PROCESS),
        operator_pid,
        "the operator was not restarted"
    );
    // TLS: the INFO line demands it, and a client without the fleet's CA cannot verify the
    // server (no plaintext path exists on the local fleet).
    let endpoint = NatsEndpoint::load_local(dir.path()).expect("endpoint");
    let ca = endpoint.ca_file.clone().expect("a CA");
    assert!(ca.is_file(), "{}", ca.display());
    let (trust, _) = LocalTrust::load_or_create(dir.path()).expect("trust");
    smoke::connect(
        &endpoint,
        &trust.admin().expect("admin"),
        Default::default(),
    )
    .await
    .expect("with the CA the admin connects");
    let unverified = NatsEndpoint {
        ca_file: None,
        ..endpoint.clone()
    };
    let err = smoke::connect(
        &unverified,
        &trust.admin().expect("admin"),
        Default::default(),
    )
    .await
    .expect_err("a client that does not trust the fleet CA is refused");
    eprintln!("without the CA: {err}");
    let addr = endpoint.urls[0].trim_start_matches("nats://").to_owned();
    let mut info = String::new();
    {
        use std::io::{BufRead as _, BufReader};
        let stream = std::net::TcpStream::connect(&addr).expect("tcp");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        BufReader::new(stream).read_line(&mut info).expect("INFO");
    }
    assert!(info.contains("\"tls_required\":true"), "{info}");

    let seed = dir
        .path()
        .join("devices/local-3/data")
        .join(harmony_fleet_agent::identity::SEED_FILE);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&seed)
        .expect("device seed")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", seed.display());
}

#[tokio::test]
async fn a_busy_port_is_an_error_naming_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = LocalTopology::new(dir.path(), SupervisionMode::Owned).expect("topology");
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    std::fs::write(
        topology.state_dir().join("ports.json"),
        format!("{{\"nats-1\": {port}}}"),
    )
    .expect("write ports");
    let err = run(&FleetNatsScore::new(), &topology)
        .await
        .expect_err("port is busy")
        .chain();
    assert!(err.contains(&port.to_string()), "{err}");
    assert!(err.contains("harmony-fleet-deploy local down"), "{err}");
}

#[tokio::test]
async fn components_deployed_before_nats_say_to_deploy_nats_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let topology = LocalTopology::new(dir.path(), SupervisionMode::Owned).expect("topology");
    let fleet = fleet_of(1);
    let agent = fleet.agent_score(&fleet.devices[0]);
    let err = run(&agent, &topology)
        .await
        .expect_err("no NATS yet")
        .chain();
    assert!(err.contains("run FleetNatsScore first"), "{err}");
}
